"""The profile chart (paper Fig. 1/2 layout) and the controls of the boosted set F.

Trace 0 holds every filter (scattergl), trace 1 the points of F on top, trace 2 the dead
filters (σ = 0 over the validation set) as grey hollow circles (their points on trace 0 are
NaN, so hover and clicks reach trace 2). A click on a point toggles that filter (a dead one
too: its map is zero and the status line says why); a box or lasso selection (the chart's
default drag mode is box select) adds every selected live filter (dead ones change nothing).
Both reach Python through plotly's own FigureWidget callbacks
(``trace.on_click``, ``trace.on_selection``), and tests call :meth:`ProfilePanel.on_point_click`
and :meth:`ProfilePanel.on_points_selected` directly.

Clicks and redraws race: a click is sent by the browser for the chart it shows, while the worker
may already have drawn a new profile (another image or label) whose point ``p`` is another
filter. So every drawing is kept as a :class:`DrawnChart` (a generation number with the filter
ids and values of both traces), and a click's point indices are resolved against the drawing
the browser showed: the newest one whose values match the ``y`` the click reports, else the
newest one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import numpy as np

from .._types import SortedProfile
from ..viz.figures import (
    DEAD_TRACE,
    HIGHLIGHT_TRACE,
    PROFILE_TRACE,
    clipped_note,
    dead_update,
    highlight_update,
    point_channels,
    positions_of,
    profile_figure,
    profile_update,
    value_range,
)
from .common import explain
from .figure import FigureWidget
from .host import Host, StateEvent
from .html import esc, span, table
from .sizing import WidthProbe

__all__ = ["CHART_HEIGHT", "DrawnChart", "ProfilePanel", "top_in_layers"]

#: Chart height in pixels (with the toolbar above, it ends inside a 768-px-high window); taller
#: windows get a taller chart, up to _MAX_HEIGHT.
CHART_HEIGHT = 390
_MAX_HEIGHT = 560
#: Window height taken by the header, toolbar and chart heading above the chart and by the
#: controls below it.
_AROUND_CHART = 380
#: Width of the first render, before the browser reports the column's width.
_FIRST_WIDTH = 720
#: Drawings kept to resolve late clicks (a click older than this many redraws uses the newest).
_HISTORY = 8

_HELP = (
    "Each dot is one <b>filter</b> (one output channel of a convolution layer), layers from the "
    "input (left) to the output (right), the filters of each layer sorted by height. "
    "The height is the filter's <b>standardized saliency</b> for this image and the label "
    "under study: we take the gradient of the loss with respect to the filter's weights, average "
    "its size, and compare it with the same number over many validation images as a "
    "<i>z-score</i>: (value &minus; validation mean) / validation standard deviation. "
    "So 0 is a typical filter, 3 means &ldquo;three standard deviations more to blame than "
    "usual&rdquo;: a filter that malfunctions on this image. The red points are the set "
    "<b>F</b> whose input pixels the map on the right shows; by default the <b>k</b> most salient "
    "filters. <b>boost</b> is how strongly F is emphasised when computing that map. "
    "Grey hollow circles are <b>dead filters</b>: their value did not vary at all over the "
    "validation images (&sigma; = 0), so they sit at 0 on every image and their map is empty."
)


@dataclass(frozen=True)
class DrawnChart:
    """What one drawing of the chart showed (point ``p`` of trace 0 is filter ``ids[p]``).

    Attributes
    ----------
    generation : int
        Increases with every drawing (profile or F).
    ids, y : np.ndarray, shape [N]
        Filter id and value of each point of trace 0.
    filters : tuple of int, length K
        Point ``j`` of trace 1 is filter ``filters[j]``.
    filter_y : np.ndarray, shape [K]
    """

    generation: int
    ids: np.ndarray
    y: np.ndarray
    filters: tuple[int, ...]
    filter_y: np.ndarray

    def ids_at(self, trace: int, point_inds: Sequence[int]) -> list[int]:
        """Filter ids of the given points of ``trace`` (out-of-range indices are skipped)."""
        pool = self.ids if trace == PROFILE_TRACE else np.asarray(self.filters, dtype=np.int64)
        return [int(pool[i]) for i in point_inds if 0 <= int(i) < pool.size]

    def shows(self, trace: int, point_inds: Sequence[int], ys: Sequence[float]) -> bool:
        """Whether this drawing had the values ``ys`` at ``point_inds`` of ``trace``."""
        values = self.y if trace == PROFILE_TRACE else self.filter_y
        for i, v in zip(point_inds, ys, strict=False):
            i = int(i)
            if not 0 <= i < values.size or v is None:
                return False
            if not np.isclose(float(values[i]), float(v), rtol=1e-6, atol=1e-9):
                return False
        return True


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
        The panel; the chart's box has the class ``psal-profile``.
    """

    def __init__(self, host: Host) -> None:
        self.host = host
        s = host.session
        self._profile: SortedProfile = s.layout()
        self._filters: list[int] = s.filters
        self._generation = 0
        # Replaced, never mutated: a click on the main thread reads it while the worker draws.
        self._history: tuple[DrawnChart, ...] = ()
        # The worker redraws while the main thread resizes: one figure update at a time.
        self._figure_lock = threading.Lock()
        # The probe before the figure: anywidget gives a model 2 s to initialize, and the
        # figure's 5-MB plotly.js bundle, loaded first, can take that long on a slow machine.
        self.probe = WidthProbe()
        # Fixed for the session (they depend on the statistics only); their places move with
        # every profile, as every point's.
        self._dead: tuple[int, ...] = tuple(s.dead_filters())
        spec = profile_figure(
            self._profile, self._filters, dead=self._dead, height=CHART_HEIGHT, width=_FIRST_WIDTH
        )
        # layout= in the constructor: a layout set later, before display, never reaches Voila.
        self.figure = FigureWidget(data=spec["data"], layout=spec["layout"])
        self._remember()
        g = host.status.guard
        self.figure.data[PROFILE_TRACE].on_click(g(self._clicked_profile, "chart click"))
        self.figure.data[HIGHLIGHT_TRACE].on_click(g(self._clicked_highlight, "chart click"))
        self.figure.data[DEAD_TRACE].on_click(g(self._clicked_dead, "chart click"))
        # Trace 0 holds every point (F included), so its selection is the whole selection.
        self.figure.data[PROFILE_TRACE].on_selection(g(self._selected_profile, "chart selection"))
        self.probe.observe(g(self._resized, "chart size"), names=["width", "window_height"])

        n_layers = len(self._profile.layer_names)
        narrow = {"description_width": "initial"}
        self.k = W.BoundedIntText(
            value=s.k, min=1, max=s.n_filters, description="k", style=narrow,
            layout=W.Layout(width="110px"),
        )
        self.reset = W.Button(
            description="reset to top-k", icon="undo", layout=W.Layout(width="130px")
        )
        self.clear = W.Button(description="clear F", layout=W.Layout(width="80px"))
        self.boost = W.BoundedFloatText(
            value=s.boost, min=1.0, max=1e6, step=10.0, description="boost", style=narrow,
            layout=W.Layout(width="140px"),
        )
        self.add_n = W.BoundedIntText(
            value=5, min=1, max=1000, description="add the top", style=narrow,
            layout=W.Layout(width="140px"),
        )
        self.add_layers = W.IntRangeSlider(
            value=(max(0, n_layers - 10), max(0, n_layers - 1)),
            min=0,
            max=max(0, n_layers - 1),
            description="of layers",
            continuous_update=False,
            style=narrow,
            layout=W.Layout(width="300px"),
        )
        self.add_button = W.Button(description="add", layout=W.Layout(width="60px"))
        self.add_layers.observe(g(self._show_layer_range, "layer range"), names="value")
        self.layer_range_text = W.HTML("")
        self._show_layer_range()

        host.watch(self.k, self._k_changed, "k")
        host.watch(self.boost, self._boost_changed, "boost")
        self.reset.on_click(g(lambda _b: self.reset_to_top_k(), "reset to top-k"))
        self.clear.on_click(g(lambda _b: self.set_filters([]), "clear F"))
        self.add_button.on_click(g(lambda _b: self.add_top_of_layers(), "add top of layers"))

        # A box selection can add thousands of ids: scroll rather than push the page down.
        self.selected = W.HTML("", layout=W.Layout(max_height="3.2em", overflow="auto"))
        self.selected.add_class("psal-selected")
        self.details = W.HTML("")
        self._render_selected()

        # min_width 0 and overflow hidden: the chart must never widen its column (the probe
        # measures the column, and the chart follows it).
        chart = W.Box([self.figure], layout=W.Layout(width="100%", overflow="hidden"))
        chart.add_class("psal-profile")
        heading = explain(
            "Filter saliency profile",
            "which filters malfunction on this image. Click a dot to add or remove that filter "
            "from F; drag a box (or the lasso in the toolbar) to add many.",
            _HELP,
        )
        controls = W.HBox(
            [self.k, self.reset, self.clear, self.boost, self.add_n, self.add_layers,
             self.add_button, self.layer_range_text],
            layout=W.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = W.VBox(
            [heading, self.probe, chart, controls, self.selected, self.details],
            layout=W.Layout(width="100%", min_width="0"),
        )
        host.changed.connect(self._on_change, "profile chart")

    # -- hooks (plotly callbacks and tests) ----------------------------------------------------
    def on_point_click(self, filter_ids: Sequence[int]) -> None:
        """Toggle each filter (what a click on a chart point does)."""
        ids = [int(i) for i in filter_ids]
        if not ids:
            return
        s = self.host.session

        def toggle() -> None:
            for i in ids:
                s.toggle_filter(i)

        self.host.change_filters(toggle, what="toggle filter")

    def on_points_selected(self, filter_ids: Sequence[int]) -> None:
        """Add every filter of a box / lasso selection to F."""
        ids = [int(i) for i in filter_ids]
        if not ids:
            return
        s = self.host.session
        self.host.change_filters(lambda: s.add_filters(ids), what="add selected filters")

    def set_filters(self, filter_ids: Sequence[int]) -> None:
        ids = [int(i) for i in filter_ids]
        s = self.host.session
        self.host.change_filters(lambda: s.set_filters(ids), what="set filters")

    def reset_to_top_k(self) -> None:
        self.host.change_filters(self.host.session.reset_filters, what="reset to top-k")

    def add_top_of_layers(
        self, n: int | None = None, layers: tuple[int, int] | None = None
    ) -> None:
        """Add the ``n`` most salient filters of layer positions ``layers`` (inclusive)."""
        count = int(self.add_n.value if n is None else n)
        first, last = self.add_layers.value if layers is None else layers
        s = self.host.session
        self.host.change_filters(
            lambda: s.add_filters(top_in_layers(s.layout(), count, int(first), int(last))),
            what="add top filters of layers",
        )

    @property
    def drawn(self) -> DrawnChart:
        """The newest drawing of the chart."""
        return self._history[-1]

    def resolve(
        self, trace: int, point_inds: Sequence[int], ys: Sequence[float] | None = None
    ) -> list[int]:
        """Filter ids of the clicked points, for the drawing the browser showed (see module doc)."""
        history = self._history  # one read: the worker replaces the tuple, never mutates it
        inds = [int(i) for i in point_inds]
        if ys is not None and len(ys) == len(inds):
            for drawing in reversed(history):
                if drawing.shows(trace, inds, ys):
                    return drawing.ids_at(trace, inds)
        return history[-1].ids_at(trace, inds)

    # -- plotly callbacks ----------------------------------------------------------------------
    def _clicked_profile(self, _trace: Any, points: Any, _state: Any) -> None:
        self.on_point_click(self.resolve(PROFILE_TRACE, points.point_inds, points.ys))

    def _clicked_highlight(self, _trace: Any, points: Any, _state: Any) -> None:
        self.on_point_click(self.resolve(HIGHLIGHT_TRACE, points.point_inds, points.ys))

    def _clicked_dead(self, _trace: Any, points: Any, _state: Any) -> None:
        # Point j of the dead trace is always dead[j]: only its place moves between drawings.
        dead = self._dead
        self.on_point_click([dead[int(i)] for i in points.point_inds if 0 <= int(i) < len(dead)])

    def _selected_profile(self, _trace: Any, points: Any, _selector: Any) -> None:
        ids = self.resolve(PROFILE_TRACE, points.point_inds, points.ys)
        if ids:
            self.on_points_selected(ids)
            self._clear_browser_selection()

    def _clear_browser_selection(self) -> None:
        """Remove the dotted selection box and the selected state in the browser.

        The selection is consumed (its filters joined F). Python's copy of the figure never
        holds it (the browser's ``selections`` arrive without their geometry), so setting
        ``layout.selections = ()`` would be a no-op and send nothing, and plotly's public
        ``plotly_update`` also sends only what changed in Python: send the update message
        directly. ``FigureWidget._send_update_msg`` is private; tests/test_widgets.py fails when
        a plotly release removes or changes it.
        """
        with self._figure_lock:
            self.figure._send_update_msg(
                {"selectedpoints": [None]}, {"selections": []}, trace_indexes=[PROFILE_TRACE]
            )

    def _resized(self, _change: dict[str, Any]) -> None:
        width = int(self.probe.width)
        if width <= 200:
            return
        height = CHART_HEIGHT
        if self.probe.window_height:
            height = max(CHART_HEIGHT, min(_MAX_HEIGHT, self.probe.window_height - _AROUND_CHART))
        with self._figure_lock, self.figure.batch_update():
            self.figure.layout.width = width
            self.figure.layout.height = height

    # -- controls ------------------------------------------------------------------------------
    def _k_changed(self, change: dict[str, Any]) -> None:
        k = int(change["new"])
        s = self.host.session
        self.host.change_filters(lambda: s.set_k(k), what="k")

    def _boost_changed(self, change: dict[str, Any]) -> None:
        b = float(change["new"])
        s = self.host.session
        self.host.change_filters(lambda: s.set_boost(b), what="boost")

    def _show_layer_range(self, _change: Any = None) -> None:
        names = self._profile.layer_names
        a, b = self.add_layers.value
        if names:
            self.layer_range_text.value = span(
                f"{esc(names[a])} &hellip; {esc(names[b])}", "font-size:11px;color:#555"
            )

    # -- views (called on the worker thread) ---------------------------------------------------
    def _on_change(self, event: StateEvent) -> None:
        s = self.host.session
        if event.touches("profile"):
            self.show_profile(s.layout(), s.filters)
        elif event.touches("filters"):
            self.show_filters(s.filters)
        if event.touches("settings", "filters"):
            self.sync_controls(k=s.k, boost=s.boost)

    def _remember(self) -> None:
        p, f = self._profile, tuple(self._filters)
        y = np.asarray(p.y, dtype=np.float64)
        f_y = y[positions_of(p, list(f))] if f else np.zeros(0)
        self._generation += 1
        drawing = DrawnChart(self._generation, np.asarray(p.filter_id, dtype=np.int64), y, f, f_y)
        self._history = (*self._history[-(_HISTORY - 1) :], drawing)

    def show_profile(self, profile: SortedProfile, filters: Sequence[int]) -> None:
        """Redraw every point (new image, label or mask) and the highlight."""
        filters = [int(i) for i in filters]
        y = np.asarray(profile.y, dtype=np.float64)
        f_y = y[positions_of(profile, filters)] if filters else ()
        lo, hi, n_above = value_range(y, f_y)
        with self._figure_lock, self.figure.batch_update():
            self.figure.data[PROFILE_TRACE].update(profile_update(profile, self._dead))
            self.figure.data[HIGHLIGHT_TRACE].update(highlight_update(profile, filters))
            if self._dead:
                self.figure.data[DEAD_TRACE].update(dead_update(profile, self._dead))
            self.figure.layout.yaxis.range = [lo, hi]
            self.figure.layout.annotations = clipped_note(n_above)
        # Only now: a click that arrives before the browser has the new points still resolves
        # against the old drawing (and the y it reports picks the right one afterwards).
        self._profile, self._filters = profile, filters
        self._remember()
        self._render_selected()

    def show_filters(self, filters: Sequence[int]) -> None:
        """Move the highlight trace to the new F (the profile is unchanged)."""
        filters = [int(i) for i in filters]
        with self._figure_lock, self.figure.batch_update():
            self.figure.data[HIGHLIGHT_TRACE].update(highlight_update(self._profile, filters))
        self._filters = filters
        self._remember()
        self._render_selected()

    def sync_controls(self, *, k: int, boost: float) -> None:
        """Show the session's k and boost without triggering the observers' actions."""
        for widget, value in ((self.k, k), (self.boost, boost)):
            if widget.value != value:
                with self.host.quiet(widget):
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
                    str(int(p.rank[j]) + 1),  # people count ranks from 1
                ]
            )
        more = (
            f'<div style="font-size:11px;color:#888">and {len(ids) - 40} more</div>'
            if len(ids) > 40
            else ""
        )
        self.details.value = (
            f'<details><summary style="font-size:12px">|F| = {len(ids)} filters: layer, '
            "channel, saliency and rank of each</summary>"
            + table(
                ["id", "layer", "channel", "standardized saliency", "rank"],
                rows,
                align=["left", "left", "right", "right", "right"],
            )
            + more
            + "</details>"
        )
