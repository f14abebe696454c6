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
    assert fig._psal_fresh is False
    events = _spy(monkeypatch, fig)
    fig._psal_message(fig, {"psal": "attached"}, [])
    assert list(fig._widget_data[0]["y"]) == [3, 4]
    assert fig._widget_layout["width"] == 420
    # "fresh" again only after the current data and layout went out.
    assert events[-3:] == [("state", ["_widget_data", "_widget_layout"]), ("msg", {"psal": "synced"}),
                           ("state", "_psal_fresh")]
    assert fig._psal_fresh is True


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


def test_an_update_marks_the_state_stale_before_it_is_sent_and_resync_freshens_it(monkeypatch) -> None:
    fig = _figure()
    assert fig._psal_fresh is True  # a front end starting from this state draws at once
    sent: list[tuple[str, object]] = []
    real_send_state = fig.send_state

    def spy(key=None):
        keys = [key] if isinstance(key, str) else list(key or [])
        sent.extend((k, getattr(fig, k)) for k in keys)
        real_send_state(key)

    monkeypatch.setattr(fig, "send_state", spy)
    monkeypatch.setattr(fig, "_repr_keys", lambda: iter(()), raising=False)
    fig.data[0].y = [5, 6]
    names = [k for k, _ in sent]
    # plotly's restyle travels as a _py2js_restyle value; _psal_fresh = False must precede it.
    assert ("_psal_fresh", False) in sent and "_py2js_restyle" in names
    assert names.index("_psal_fresh") < names.index("_py2js_restyle")
    monkeypatch.setattr(fig, "send", lambda content, buffers=None: None)
    fig._psal_message(fig, {"psal": "attached"}, [])
    assert fig._psal_fresh is True and list(fig._widget_data[0]["y"]) == [5, 6]


def test_page_preload_carries_the_bundle_and_later_figures_leave_it_out(monkeypatch) -> None:
    import json as _json

    import psal_widgets.widgets.figure as figure_module

    monkeypatch.setattr(figure_module, "_PAGE_CARRIES_BUNDLE", False)
    monkeypatch.delenv(figure_module.PAGE_PLOTLY_ENV, raising=False)  # not under psal dashboard's template
    html = figure_module.page_preload_html()
    assert figure_module._PAGE_CARRIES_BUNDLE is True
    # One script element: the bundle cannot close the tag early.
    assert html.count("<script") == 1 and html.count("</script") == 1 and html.rstrip().endswith("</script>")
    start = html.index("importOnce(() => importText(") + len("importOnce(() => importText(")
    literal, _ = _json.JSONDecoder().raw_decode(html[start:])
    assert literal == plotly_bundle()
    fig = _figure()
    assert fig.get_state()["_psal_bundle"] == ""
    # A page where the script did not run asks the kernel.
    events = _spy(monkeypatch, fig)
    fig._psal_message(fig, {"psal": "need_bundle"}, [])
    assert events == [("msg", {"psal": "bundle", "code": plotly_bundle()})]


def test_figures_keep_the_default_templates_layout_without_its_per_trace_defaults() -> None:
    import plotly.io as pio

    import psal_widgets.widgets.figure as figure_module

    fig = figure_module.FigureWidget(data=[{"type": "scattergl", "y": [1, 2]}], layout={"height": 200})
    default = pio.templates[pio.templates.default]
    assert fig.layout.template.data.to_plotly_json() == {}
    assert fig.layout.template.layout.to_plotly_json() == default.layout.to_plotly_json()
    assert fig.layout.height == 200 and fig._psal_fresh is True
    # A template the caller chose is left alone.
    mine = figure_module.FigureWidget(data=[{"type": "bar", "y": [1]}], layout={"template": "simple_white"})
    assert mine.layout.template.data.to_plotly_json() == pio.templates["simple_white"].data.to_plotly_json()
