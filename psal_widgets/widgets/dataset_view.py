"""The dataset view: the paper's dataset-level findings for the session's dataset, linked to the
single-image tools.

Three parts, all read from the dataset's profile index through the Session (no torch here):

- the Fig. 2 chart: the mean standardized profile of the correctly and of the incorrectly
  classified images (mistakes are more salient, most of all in deep layers);
- an error table: the images sorted by loss or by mean standardized saliency, filtered by class
  and by correct / incorrect; picking a row opens that image in the explorer;
- a 2-D map of saliency space (PCA; UMAP when ``umap-learn`` is installed): one point per image,
  coloured by correct / incorrect; clicking a point opens that image, and the open image is
  marked with a star.

Everything is computed on the worker when :meth:`DatasetViewPanel.load` is first called (the app
calls it when the tab is first shown), so the explorer's first chart never waits for it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

import ipywidgets as W
import numpy as np

from ..viz.dataset import CORRECT_TRACE, CURRENT_TRACE, INCORRECT_TRACE, map_figure, summary_figure
from .common import explain
from .figure import FigureWidget
from .host import Host, StateEvent
from .html import esc, span
from .sizing import WidthProbe

__all__ = ["ALL", "EVERY_CLASS", "DatasetViewPanel", "map_point", "short_name", "umap_available"]

#: Rows listed in the error table (the worst first); the filters narrow the list further.
TABLE_ROWS = 200

#: The filters' "no filter" choices. Not ``None``: an ipywidgets 8 dropdown whose value is
#: ``None`` selects no option and shows an empty box instead of "all images".
ALL = "all"
EVERY_CLASS = -1

#: Width the charts leave for the panel's own padding.
_CHART_MARGIN = 24

_HELP = (
    "The whole dataset through the eyes of parameter saliency. <b>Fig. 2</b>: each image's "
    "profile is standardized against the validation statistics (0 = a filter as salient as usual), "
    "then averaged over the correctly and over the incorrectly classified images; the paper finds "
    "that mistakes make the filters far more salient, above all in the deep layers. "
    "<b>Table</b>: the images sorted by their loss (how wrong the model is about the true class) "
    "or by their mean standardized saliency; pick one to study it. <b>Map</b>: every image's "
    "standardized profile projected onto the plane (PCA: the two directions along which the "
    "profiles vary most); images that malfunction alike lie close together, and mistakes tend to "
    "gather (paper section 3.2). Click a point to open that image; the star is the image open now."
)


def umap_available() -> bool:
    """Whether ``umap-learn`` is installed (checked without importing it)."""
    return importlib.util.find_spec("umap") is not None


def short_name(file: str) -> str:
    """The image's file name without its folders: the table and the hover name images as the
    status line does, without the dataset's location on this machine."""
    return PurePath(str(file).replace("\\", "/")).name or str(file)


def _hover(r: dict[str, Any]) -> str:
    mark = "correct" if r["correct"] else "wrong"
    return (
        f"{esc(short_name(r['file']))}<br>true: {esc(r['label_name'])}<br>pred: {esc(r['pred_name'])} ({mark})"
        f"<br>loss {r['loss']:.2f}, mean saliency {r['mean_saliency']:+.2f}"
    )


def _row_text(r: dict[str, Any]) -> str:
    mark = "✓" if r["correct"] else "✗"
    return (
        f"{mark} loss {r['loss']:6.2f}  sal {r['mean_saliency']:+6.2f}  "
        f"{r['label_name']} → {r['pred_name']}  ({short_name(r['file'])})"
    )


class DatasetViewPanel:
    """Fig. 2 chart, error table and saliency-space map of the session's dataset.

    Parameters
    ----------
    host : Host
    open_row : callable(i)
        Opens dataset row ``i`` in the explorer (the image panel's action).

    Attributes
    ----------
    summary_figure, map_figure : plotly.graph_objects.FigureWidget
        Traces 0 / 1: correct / incorrect images; the map's trace 2 marks the open image. A map
        point's ``customdata`` is its dataset row.
    sort, only, cls, descending, method : ipywidgets controls of the table and the map
    table : ipywidgets.Select
        Options ``(text, dataset row)``; picking one opens that image.
    rows : list of DatasetRow
        What the table lists now.
    loaded : bool
    """

    def __init__(self, host: Host, *, open_row: Callable[[int], None]) -> None:
        self.host = host
        self.open_row = open_row
        self.loaded = False
        self.rows: list[dict[str, Any]] = []
        self._coords: np.ndarray | None = None
        s = host.session
        dataset = s.dataset
        present = sorted({int(v) for v in np.asarray(dataset.labels).tolist()}) if dataset is not None else []
        self.sort = W.Dropdown(
            options=[("loss", "loss"), ("mean saliency", "mean_saliency")],
            value="loss", description="sort by", layout=W.Layout(width="200px"),
        )
        self.descending = W.Checkbox(value=True, description="largest first", indent=False,
                                     layout=W.Layout(width="110px"))
        self.only = W.Dropdown(
            options=[("all images", ALL), ("mistakes", "incorrect"), ("correct", "correct")],
            value=ALL, description="show", layout=W.Layout(width="170px"),
        )
        self.cls = W.Dropdown(
            options=[("every class", EVERY_CLASS)] + [(f"{s.labels.name(c)} ({c})", c) for c in present],
            value=EVERY_CLASS, description="class", layout=W.Layout(width="260px"),
        )
        methods = [("PCA", "pca")] + ([("UMAP", "umap")] if umap_available() else [])
        self.method = W.Dropdown(options=methods, value="pca", description="map",
                                 layout=W.Layout(width="150px"))
        self.table = W.Select(options=[], value=None, rows=10, layout=W.Layout(width="100%"))
        self.table.add_class("psal-dataset-table")
        self.count = W.HTML("")
        self.summary_text = W.HTML("")
        empty = summary_figure(np.zeros(0), np.zeros(0), np.zeros(0), layer_names=[], n_correct=0, n_incorrect=0)
        # Layout at construction: layout updates made before display never reach a Voila page.
        self.summary_figure = FigureWidget(data=empty["data"], layout=empty["layout"])
        spec = map_figure(np.zeros((0, 2)), np.zeros(0, dtype=bool), [])
        self.map_figure = FigureWidget(data=spec["data"], layout=spec["layout"])
        g = host.status.guard
        # The charts are drawn while their tab is hidden, where plotly.js falls back to 700 px;
        # the probe reports the panel's width once the tab is shown and the charts follow it.
        self.probe = WidthProbe()
        self.probe.observe(g(self._resized, "dataset view size"), names="width")
        for t in (CORRECT_TRACE, INCORRECT_TRACE):
            self.map_figure.data[t].on_click(g(self._clicked, "map click"))
        for w in (self.sort, self.descending, self.only, self.cls):
            host.watch(w, lambda _c: self.refresh_table(), "dataset table")
        host.watch(self.method, lambda _c: self.refresh_map(), "dataset map")
        host.watch(self.table, self._picked, "dataset table row")
        host.changed.connect(self._on_change, "dataset view")
        chart_box = W.Box([self.summary_figure], layout=W.Layout(width="100%"))
        chart_box.add_class("psal-dataset-summary")
        map_box = W.Box([self.map_figure], layout=W.Layout(width="100%"))
        map_box.add_class("psal-dataset-map")
        self.widget = W.VBox(
            [
                explain("Dataset view", "where the mistakes lie in saliency space (paper Fig. 2, §3.2).", _HELP),
                self.probe,
                self.summary_text,
                chart_box,
                W.HBox([self.sort, self.descending, self.only, self.cls, self.count],
                       layout=W.Layout(flex_flow="row wrap", align_items="center")),
                self.table,
                self.method,
                map_box,
            ],
            layout=W.Layout(width="100%"),
        )

    # -- loading (worker) -------------------------------------------------------------------------
    def load(self) -> None:
        """Compute the chart, the table and the map on the worker (once; later calls do nothing)."""
        if self.loaded:
            return
        self.loaded = True
        self.host.status.info("dataset view: standardizing the index, computing the map…")
        s = self.host.session

        def summary() -> None:
            d = s.dataset_summary()
            spec = summary_figure(d["x"], d["y_correct"], d["y_incorrect"], layer_names=d["layer_names"],
                                  n_correct=d["n_correct"], n_incorrect=d["n_incorrect"])
            with self.summary_figure.batch_update():
                for t, trace in enumerate(spec["data"]):
                    self.summary_figure.data[t].update(x=trace["x"], y=trace["y"], name=trace["name"])
                self.summary_figure.layout.update(xaxis=spec["layout"]["xaxis"], shapes=spec["layout"]["shapes"])
            self.summary_text.value = span(
                f"{d['n_incorrect']} mistakes, {d['n_correct']} correct; mean standardized saliency "
                f"{d['mean_saliency_incorrect']:+.2f} for the mistakes vs {d['mean_saliency_correct']:+.2f} "
                "for the correct images"
            )

        self.host.worker.run(summary, what="dataset summary")
        self.refresh_table()
        self.refresh_map()

    def refresh_table(self) -> None:
        """Re-list the table for the current sort and filters (on the worker)."""
        s = self.host.session
        sort, desc = self.sort.value, bool(self.descending.value)
        only = None if self.only.value == ALL else self.only.value
        cls = None if self.cls.value in (None, EVERY_CLASS) else int(self.cls.value)

        def listing() -> None:
            rows = s.dataset_table(sort=sort, only=only, cls=cls, descending=desc)
            self.show_table(rows)

        self.host.worker.run(listing, what="dataset table")

    def show_table(self, rows: Sequence[dict[str, Any]]) -> None:
        self.rows = list(rows)[:TABLE_ROWS]
        with self.host.quiet(self.table):
            self.table.options = [(_row_text(r), int(r["i"])) for r in self.rows]
            self.table.value = None
        more = f" (the first {TABLE_ROWS} shown)" if len(rows) > TABLE_ROWS else ""
        self.count.value = span(f"{len(rows)} images{more}")

    def refresh_map(self) -> None:
        """Compute (or take from the Session's cache) the map for the chosen method and draw it."""
        s = self.host.session
        method = self.method.value

        def draw() -> None:
            coords = s.dataset_map(method)
            rows = s.dataset_rows()
            correct = np.array([r["correct"] for r in rows], dtype=bool)
            spec = map_figure(coords, correct, [_hover(r) for r in rows], method=method)
            self._coords = coords
            with self.map_figure.batch_update():
                for t in (CORRECT_TRACE, INCORRECT_TRACE):
                    tr = spec["data"][t]
                    self.map_figure.data[t].update(x=tr["x"], y=tr["y"], customdata=tr["customdata"],
                                                   text=tr["text"], name=tr["name"])
                self.map_figure.layout.update(xaxis=spec["layout"]["xaxis"], yaxis=spec["layout"]["yaxis"],
                                              title=spec["layout"]["title"])
            self._mark_current()

        self.host.worker.run(draw, what="dataset map")

    def _resized(self, _change: dict[str, Any]) -> None:
        width = int(self.probe.width) - _CHART_MARGIN
        if width < 200:
            return
        for fig in (self.summary_figure, self.map_figure):
            if fig.layout.width != width:
                fig.layout.width = width

    def _mark_current(self) -> None:
        i = self.host.session.dataset_index
        trace = self.map_figure.data[CURRENT_TRACE]
        if self._coords is None or i is None:
            trace.update(x=[], y=[])
        else:
            trace.update(x=[float(self._coords[i, 0])], y=[float(self._coords[i, 1])])

    def _on_change(self, event: StateEvent) -> None:
        if self.loaded and event.touches("image"):
            self._mark_current()

    # -- callbacks (main thread) ------------------------------------------------------------------
    def _clicked(self, trace: Any, points: Any, _state: Any) -> None:
        inds = list(getattr(points, "point_inds", []) or [])
        if not inds:
            return
        custom = trace.customdata
        if custom is None or inds[0] >= len(custom):
            return
        self.open_row(int(custom[inds[0]]))

    def on_point_click(self, i: int) -> None:
        """As a click on the map point of dataset row ``i`` would (tests)."""
        self.open_row(int(i))

    def _picked(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.open_row(int(change["new"]))


def map_point(panel: DatasetViewPanel, i: int) -> tuple[int, int]:
    """``(trace, point index)`` of dataset row ``i`` in the panel's map (tests, benchmarks)."""
    for t in (CORRECT_TRACE, INCORRECT_TRACE):
        data = panel.map_figure.data[t].customdata
        custom = np.asarray([] if data is None else data, dtype=np.int64).reshape(-1)
        hit = np.flatnonzero(custom == int(i))
        if hit.size:
            return t, int(hit[0])
    raise KeyError(f"dataset row {i} is not on the map")

