"""The kernel side of :class:`psal_widgets.widgets.figure.FigureWidget` (no browser).

The browser side (six figures on one page, each restyled before plotly.js has run) is
tests/test_browser_figures.py.
"""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from psal_widgets.widgets.figure import LOADER_JS, FigureWidget, plotly_bundle


def _figure() -> FigureWidget:
    return FigureWidget(data=[{"type": "scatter", "x": [0, 1], "y": [0, 0]}], layout={"width": 300})


def test_the_loader_is_small_and_the_bundle_is_plotlys_own() -> None:
    state = _figure().get_state()
    assert state["_esm"] == LOADER_JS and len(LOADER_JS) < 5_000
    esm = go.FigureWidget._esm
    want = esm.read_text(encoding="utf-8") if isinstance(esm, Path) else str(esm)
    assert state["_psal_bundle"] == want == plotly_bundle()
    assert len(want) > 1_000_000  # plotly.js itself travels in the bundle trait, not in _esm


def _spy(monkeypatch, fig: FigureWidget) -> list[object]:
    """Everything the figure sends, in order: ``("state", keys)`` or ``("msg", content)``."""
    events: list[object] = []
    monkeypatch.setattr(fig, "send", lambda content, buffers=None: events.append(("msg", content)))
    monkeypatch.setattr(fig, "send_state", lambda key=None: events.append(("state", key)))
    return events


def test_attached_front_end_gets_the_current_data_and_layout_then_synced(monkeypatch) -> None:
    fig = _figure()
    fig.data[0].y = [3, 4]
    fig.layout.width = 420
    events = _spy(monkeypatch, fig)
    fig._psal_message(fig, {"psal": "attached"}, [])
    assert list(fig._widget_data[0]["y"]) == [3, 4]
    assert fig._widget_layout["width"] == 420
    assert events[-2:] == [("state", ["_widget_data", "_widget_layout"]), ("msg", {"psal": "synced"})]


def test_unchanged_figure_is_still_sent_to_a_late_front_end(monkeypatch) -> None:
    fig = _figure()
    events = _spy(monkeypatch, fig)
    fig._psal_message(fig, {"psal": "attached"}, [])
    assert list(fig._widget_data[0]["y"]) == [0, 0]
    assert events[-2:] == [("state", ["_widget_data", "_widget_layout"]), ("msg", {"psal": "synced"})]


def test_other_messages_are_ignored(monkeypatch) -> None:
    fig = _figure()
    events = _spy(monkeypatch, fig)
    fig._psal_message(fig, {"psal": "something else"}, [])
    fig._psal_message(fig, "attached", [])
    assert events == []
