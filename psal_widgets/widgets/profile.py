"""The profile chart (paper Fig. 1/2 layout) and the controls of the boosted set F.

Trace 0 holds every filter (scattergl), trace 1 the points of F on top. A click on a point
toggles that filter; a box or lasso selection (the chart's default drag mode is box select)
adds every selected filter. Both reach Python through plotly's own FigureWidget callbacks
(``trace.on_click``, ``trace.on_selection``), and tests call :meth:`ProfilePanel.on_point_click`
and :meth:`ProfilePanel.on_points_selected` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from .._types import SortedProfile
from ..viz.figures import (
    HIGHLIGHT_TRACE,
    PROFILE_TRACE,
    clipped_note,
    highlight_update,
    point_channels,
    positions_of,
    profile_figure,
    profile_update,
    value_range,
)
from .html import esc, span, table

if TYPE_CHECKING:
    from .app import Explorer

__all__ = ["CHART_WIDTH", "ProfilePanel", "top_in_layers"]

#: Chart width in pixels.
CHART_WIDTH = 1060


def top_in_layers(profile: SortedProfile, n: int, first: int, last: int) -> list[int]:
    """The ``n`` highest-saliency filters among layers ``first..last`` (positions, inclusive).

    A drag-free way to add many filters at once (e.g. "the top 5 of the deep layers").
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    layer = np.asarray(profile.layer)
    inside = np.flatnonzero((layer >= first) & (layer <= last))
    if inside.size == 0:
        raise ValueError(f"no filters in layers {first}..{last}")
    y = np.asarray(profile.y, dtype=np.float64)[inside]
    best = inside[np.argsort(-y, kind="stable")[:n]]
    return [int(i) for i in np.asarray(profile.filter_id)[best]]


class ProfilePanel:
    """Chart + k, boost, reset, clear and "add top n of layers a..b".

    Attributes
    ----------
    figure : plotly.graph_objects.FigureWidget
    selected : ipywidgets.HTML
        ``psal-selected``: ``F = id, id, ...``.
    widget : ipywidgets.VBox
        ``psal-profile`` (the chart's box).
    """

    def __init__(self, app: Explorer) -> None:
        self.app = app
        s = app.session
        self._profile: SortedProfile = s.layout()
        self._filters: list[int] = s.filters
        # A fixed width: in Voila the widget's first render takes plotly's 700-px default
        # instead of filling its box; 1060 px lines up with the three images below.
        spec = profile_figure(self._profile, self._filters, height=400, width=CHART_WIDTH)
        # layout= in the constructor: a layout set later, before display, never reaches Voila.
        self.figure = go.FigureWidget(data=spec["data"], layout=spec["layout"])
        g = app.status.guard
        self.figure.data[PROFILE_TRACE].on_click(g(self._clicked_profile, "chart click"))
        self.figure.data[HIGHLIGHT_TRACE].on_click(g(self._clicked_highlight, "chart click"))
        # Trace 0 holds every point (F included), so its selection is the whole selection.
        self.figure.data[PROFILE_TRACE].on_selection(g(self._selected_profile, "chart selection"))

        n_layers = len(self._profile.layer_names)
        self.k = W.BoundedIntText(
            value=s.k, min=1, max=s.n_filters, description="k", layout=W.Layout(width="130px")
        )
        self.reset = W.Button(
            description="reset to top-k", icon="undo", layout=W.Layout(width="140px")
        )
        self.clear = W.Button(description="clear F", layout=W.Layout(width="90px"))
        self.boost = W.BoundedFloatText(
            value=s.boost,
            min=1.0,
            max=1e6,
            step=10.0,
            description="boost",
            layout=W.Layout(width="160px"),
        )
        self.add_n = W.BoundedIntText(
            value=5, min=1, max=1000, description="add top", layout=W.Layout(width="150px")
        )
        self.add_layers = W.IntRangeSlider(
            value=(max(0, n_layers - 10), max(0, n_layers - 1)),
            min=0,
            max=max(0, n_layers - 1),
            description="of layers",
            continuous_update=False,
            layout=W.Layout(width="330px"),
        )
        self.add_button = W.Button(description="add", layout=W.Layout(width="60px"))
        self.add_layers.observe(g(self._show_layer_range, "layer range"), names="value")
        self.layer_range_text = W.HTML("")
        self._show_layer_range()

        app.watch(self.k, self._k_changed, "k")
        app.watch(self.boost, self._boost_changed, "boost")
        self.reset.on_click(g(lambda _b: self.reset_to_top_k(), "reset to top-k"))
        self.clear.on_click(g(lambda _b: self.set_filters([]), "clear F"))
        self.add_button.on_click(g(lambda _b: self.add_top_of_layers(), "add top of layers"))

        # A box selection can add thousands of ids: scroll rather than push the page down.
        self.selected = W.HTML("", layout=W.Layout(max_height="4.6em", overflow="auto"))
        self.selected.add_class("psal-selected")
        self.details = W.HTML("")
        self._render_selected()

        chart = W.Box([self.figure], layout=W.Layout(width="100%"))
        chart.add_class("psal-profile")
        help_text = W.HTML(
            '<span style="font-size:12px;color:#555">Click a point to add or remove that filter; '
            "drag a box (or pick the lasso in the toolbar) to add many.</span>"
        )
        controls = W.HBox(
            [self.k, self.reset, self.clear, self.boost], layout=W.Layout(flex_flow="row wrap")
        )
        add_row = W.HBox(
            [self.add_n, self.add_layers, self.add_button, self.layer_range_text],
            layout=W.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = W.VBox([chart, help_text, controls, add_row, self.selected, self.details])

    # -- hooks (plotly callbacks and tests) ----------------------------------------------------
    def on_point_click(self, filter_ids: Sequence[int]) -> None:
        """Toggle each filter (what a click on a chart point does)."""
        ids = [int(i) for i in filter_ids]
        if not ids:
            return
        s = self.app.session

        def toggle() -> None:
            for i in ids:
                s.toggle_filter(i)

        self.app.change_filters(toggle, what="toggle filter")

    def on_points_selected(self, filter_ids: Sequence[int]) -> None:
        """Add every filter of a box / lasso selection to F."""
        ids = [int(i) for i in filter_ids]
        if not ids:
            return
        self.app.change_filters(
            lambda: self.app.session.add_filters(ids), what="add selected filters"
        )

    def set_filters(self, filter_ids: Sequence[int]) -> None:
        ids = [int(i) for i in filter_ids]
        self.app.change_filters(lambda: self.app.session.set_filters(ids), what="set filters")

    def reset_to_top_k(self) -> None:
        self.app.change_filters(self.app.session.reset_filters, what="reset to top-k")

    def add_top_of_layers(
        self, n: int | None = None, layers: tuple[int, int] | None = None
    ) -> None:
        """Add the ``n`` most salient filters of layer positions ``layers`` (inclusive)."""
        count = int(self.add_n.value if n is None else n)
        first, last = self.add_layers.value if layers is None else layers
        s = self.app.session
        self.app.change_filters(
            lambda: s.add_filters(top_in_layers(s.layout(), count, int(first), int(last))),
            what="add top filters of layers",
        )

    # -- plotly callbacks ----------------------------------------------------------------------
    def _ids_at(self, trace: int, point_inds: Sequence[int]) -> list[int]:
        inds = [int(i) for i in point_inds]
        if trace == PROFILE_TRACE:
            ids = np.asarray(self._profile.filter_id)
            return [int(ids[i]) for i in inds if 0 <= i < ids.size]
        shown = self._filters
        return [shown[i] for i in inds if 0 <= i < len(shown)]

    def _clicked_profile(self, _trace: Any, points: Any, _state: Any) -> None:
        self.on_point_click(self._ids_at(PROFILE_TRACE, points.point_inds))

    def _clicked_highlight(self, _trace: Any, points: Any, _state: Any) -> None:
        self.on_point_click(self._ids_at(HIGHLIGHT_TRACE, points.point_inds))

    def _selected_profile(self, _trace: Any, points: Any, _selector: Any) -> None:
        ids = self._ids_at(PROFILE_TRACE, points.point_inds)
        if ids:
            self.on_points_selected(ids)
            self._clear_browser_selection()

    def _clear_browser_selection(self) -> None:
        """Remove the dotted selection box and the selected state in the browser.

        The selection is consumed (its filters joined F). Python's copy of the figure never
        holds it (the browser's ``selections`` arrive without their geometry), so setting
        ``layout.selections = ()`` would be a no-op and send nothing: send the update directly.
        """
        send = getattr(self.figure, "_send_update_msg", None)
        if send is not None:
            send({"selectedpoints": [None]}, {"selections": []}, trace_indexes=[PROFILE_TRACE])

    # -- controls ------------------------------------------------------------------------------
    def _k_changed(self, change: dict[str, Any]) -> None:
        k = int(change["new"])
        s = self.app.session
        self.app.change_filters(lambda: s.set_k(k), what="k")

    def _boost_changed(self, change: dict[str, Any]) -> None:
        b = float(change["new"])
        s = self.app.session
        self.app.change_filters(lambda: s.set_boost(b), what="boost")

    def _show_layer_range(self, _change: Any = None) -> None:
        names = self._profile.layer_names
        a, b = self.add_layers.value
        if names:
            self.layer_range_text.value = span(
                f"{esc(names[a])} &hellip; {esc(names[b])}", "font-size:11px;color:#555"
            )

    # -- views (called on the worker thread) ---------------------------------------------------
    def show_profile(self, profile: SortedProfile, filters: Sequence[int]) -> None:
        """Redraw every point (new image, label or mask) and the highlight."""
        self._profile = profile
        self._filters = [int(i) for i in filters]
        y = np.asarray(profile.y, dtype=np.float64)
        f_y = y[positions_of(profile, self._filters)] if self._filters else ()
        lo, hi, n_above = value_range(y, f_y)
        with self.figure.batch_update():
            self.figure.data[PROFILE_TRACE].update(profile_update(profile))
            self.figure.data[HIGHLIGHT_TRACE].update(highlight_update(profile, self._filters))
            self.figure.layout.yaxis.range = [lo, hi]
            self.figure.layout.annotations = clipped_note(n_above)
        self._render_selected()

    def show_filters(self, filters: Sequence[int]) -> None:
        """Move the highlight trace to the new F (the profile is unchanged)."""
        self._filters = [int(i) for i in filters]
        with self.figure.batch_update():
            self.figure.data[HIGHLIGHT_TRACE].update(highlight_update(self._profile, self._filters))
        self._render_selected()

    def sync_controls(self, *, k: int, boost: float) -> None:
        """Show the session's k and boost without triggering the observers' actions."""
        for widget, value in ((self.k, k), (self.boost, boost)):
            if widget.value != value:
                with self.app.quiet(widget):
                    widget.value = value

    def _render_selected(self) -> None:
        ids = self._filters
        self.selected.value = "F = " + ", ".join(str(i) for i in ids)
        if not ids:
            self.details.value = (
                '<span style="font-size:12px;color:#888">F is empty: the map is blank.</span>'
            )
            return
        p = self._profile
        shown = ids[:40]
        pos = positions_of(p, shown)
        channels = point_channels(p)[pos]
        names = p.layer_names
        rows = []
        for fid, j, ch in zip(shown, pos.tolist(), channels.tolist(), strict=True):
            layer = int(p.layer[j])
            rows.append(
                [
                    str(fid),
                    esc(names[layer] if layer < len(names) else layer),
                    str(ch),
                    f"{float(p.y[j]):.2f}",
                    str(int(p.rank[j])),
                ]
            )
        more = (
            f'<div style="font-size:11px;color:#888">and {len(ids) - 40} more</div>'
            if len(ids) > 40
            else ""
        )
        self.details.value = (
            f'<details><summary style="font-size:12px">|F| = {len(ids)} filters</summary>'
            + table(
                ["id", "layer", "channel", "saliency", "rank"],
                rows,
                align=["right", "left", "right", "right", "right"],
            )
            + more
            + "</details>"
        )
