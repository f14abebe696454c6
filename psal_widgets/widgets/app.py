"""The Explorer: every panel linked to one Session, computations on one background worker.

Construction shows the profile chart, the image and the prediction at once (all cheap once
the Session has analyzed the image) and only then queues the input map and the CAM, so the
page becomes interactive before any map is computed.

Threads: widget callbacks run on the kernel's main thread and only *queue* work; every Session
call that computes runs on the worker thread, in order. After a job changed the Session, the
app emits its :attr:`Explorer.changed` signal (on the worker) and each panel redraws what the
event says changed; the app never calls a panel by name to redraw it.

Layout (one screen at 1366 x 768): a header with the status line, a toolbar (image, upload,
label), then two columns: the chart with its controls, the report of the last mask change and
the tools in tabs; beside it the image and its input map, the prediction and the CAM.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import ipywidgets as W

from .brush import BrushPanel
from .common import close_widgets
from .dataset_view import DatasetViewPanel
from .export import ExportPanel
from .host import ALL_STATE, Change, QuietWatcher, Signal, StateEvent
from .html import esc
from .images import ImagePanel
from .maps import MapsPanel
from .neighbours import NeighboursPanel
from .page_watch import on_page_contact
from .prediction import PredictionPanel
from .profile import ProfilePanel
from .prune import PrunePanel
from .status import StatusPanel
from .upload import DEFAULT_UPLOAD_LIMIT
from .worker import Worker

__all__ = ["Explorer"]

_ENV = ("PSAL_MODEL", "PSAL_IMAGE", "PSAL_DATA", "PSAL_DEVICE", "PSAL_WEIGHTS", "PSAL_STATS", "PSAL_INDEX",
        "PSAL_EXPORT_DIR", "PSAL_UPLOAD_LIMIT")

_CSS = """
<style>
.psal-explorer { box-sizing: border-box; }
.psal-explorer .psal-explain details[open] { display: block !important; }
.psal-explorer .widget-html-content { line-height: 1.3; }
</style>
"""


def _cell_id() -> str | None:
    """The id of the notebook cell being run (JupyterLab and Notebook 7 send it), else None."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        if kernel is None:
            return None
        try:
            parent = kernel.get_parent("shell")
        except TypeError:  # older ipykernel: no channel argument
            parent = kernel.get_parent()
        cell = (parent or {}).get("metadata", {}).get("cellId")
        return str(cell) if cell else None
    except Exception:
        return None


#: ``Explorer.from_env`` (the dashboard): seconds the first maps wait for a browser to draw the chart.
DASHBOARD_MAPS_AFTER_CHART_S = 10.0
#: Longest pause of the instant-map basis while a page loads the chart (ended by its first draw).
PAGE_LOAD_HOLD_S = 15.0


class Explorer(W.VBox):
    """Interactive parameter-space saliency explorer (an ``ipywidgets.VBox``; display it).

    Parameters
    ----------
    model : str, optional
        Model name (default: the embedded EfficientNet-Lite0), or a LoadedModel / Explainer.
    image : path or bytes, optional
        Default: the first file of ``raw_images/``.
    label : int or str, optional
        Class index, WordNet id or name; default the known label, else the prediction.
    data : path, optional
        A labelled dataset: enables the dataset browser, the dataset view and neighbours, read
        from its profile index (found in the user cache or built when the session is created:
        minutes for hundreds of images on a CPU; see ``index``).
    index : path, optional
        A prebuilt profile index of ``data`` (``psal index --data DATA --out DIR``).
    device : str, optional
    session : Session, optional
        Use this session instead of creating one (then leave the other arguments unset). The
        Explorer does not close a session it was given.
    debounce : float, default 0.15
        Seconds a map request waits for further clicks before computing.
    raw_images : path, optional
        Folder of the gallery (default: ``raw_images/`` found near the working directory or
        the package).
    export_dir : path, optional
        The only folder "save on the server" writes under (default ``psal_export`` in the
        working directory); its subfolder box refuses ``..``, absolute paths and symlinks out.
    upload_limit : int, default 20_000_000
        Largest upload in bytes.
    maps_after_chart : float, optional
        Hold the first input map, CAM and instant-map basis back until a browser has drawn the
        profile chart, or for this many seconds at most (the dashboard: the page draws the chart
        sooner when the kernel leaves the CPU to it). Default: start them at once.

    Attributes
    ----------
    session : Session
    changed : Signal
        "State changed" events (:class:`~psal_widgets.widgets.host.StateEvent`), emitted on the
        worker thread; panels subscribe to it.
    profile_panel, brush_panel, maps_panel, prediction_panel, image_panel, prune_panel,
    export_panel, neighbours_panel, dataset_panel (both None without a dataset), status : the panels
    worker : Worker

    Notes
    -----
    Re-running a notebook cell that builds an Explorer closes the Explorer that the same cell
    built before (JupyterLab and Notebook 7 tell the kernel which cell runs), so its model,
    thread and widgets are freed. Otherwise call :meth:`close`.
    """

    _by_cell: ClassVar[dict[str, weakref.ref[Explorer]]] = {}

    def __init__(
        self,
        model: Any = None,
        image: Any = None,
        label: int | str | None = None,
        data: str | os.PathLike[str] | None = None,
        device: str | None = None,
        session: Any = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        stats: str | os.PathLike[str] | None = None,
        index: str | os.PathLike[str] | None = None,
        debounce: float = 0.15,
        raw_images: str | os.PathLike[str] | None = None,
        export_dir: str | os.PathLike[str] | None = None,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        maps_after_chart: float | None = None,
    ) -> None:
        if session is not None and any(
            v is not None for v in (model, image, label, data, device, weights, stats, index)
        ):
            raise ValueError(
                "pass either session=... or model/image/label/data/device, not both "
                "(set the image or label on the session first)"
            )
        self._closed = False
        cell = _cell_id()
        if cell is not None:
            previous = self._by_cell.get(cell)
            old = previous() if previous is not None else None
            if old is not None:
                old.close()  # the cell was run again: free the old explorer first
        super().__init__(layout=W.Layout(width="100%", padding="0 4px"))
        self.add_class("psal-explorer")
        self.status = StatusPanel()
        self.changed = Signal(on_error=self.status.error)
        self._watcher = QuietWatcher(self.status.guard)
        self.worker = Worker(on_error=self.status.error, on_busy=self.status.set_busy)
        self._owns_session = session is None
        if session is None:
            from ..session import Session  # the middle tier owns torch; widgets never import it

            def build() -> Session:
                return Session(model=model, data=data, image=image, label=label, device=device,
                               weights=weights, stats=stats if stats is not None else "auto", index=index)

            # Built on the worker: all torch work then runs on that one thread (see worker.py).
            try:
                session = self.worker.call(build)
            except BaseException:
                self.worker.close(wait=False)
                self._close_widgets()
                raise
        self.session = session

        # The chart first: it only needs the analysis the Session already ran.
        self.profile_panel = ProfilePanel(self)
        self.prediction_panel = PredictionPanel(self)
        self.image_panel = ImagePanel(
            self,
            raw_images=Path(raw_images) if raw_images is not None else None,
            upload_limit=upload_limit,
        )
        self.brush_panel = BrushPanel(self)
        self.maps_panel = MapsPanel(self, debounce=debounce)
        self.prune_panel = PrunePanel(self)
        self.export_panel = ExportPanel(
            self, chart_html=self._chart_html, plotly_js=self._plotly_js, root=export_dir
        )
        self.neighbours_panel = (
            NeighboursPanel(self, open_row=self.image_panel.open_row)
            if getattr(session, "dataset", None) is not None
            else None
        )
        # The dataset view computes on its first showing (see _tab_shown), never before the first map.
        self.dataset_panel = (
            DatasetViewPanel(self, open_row=self.image_panel.open_row)
            if getattr(session, "dataset", None) is not None
            else None
        )
        self.children = self._layout()

        # Cheap views now; the map and the CAM after, on the worker.
        self.prediction_panel.show()
        self.image_panel.show()
        self.brush_panel.show_image()
        self.status.info(f"analyzing {session.image_name}: computing the input map…")
        # A page loading the chart (plotly.js, first draw) gets the CPU before idle-time work:
        # from its first message to the kernel (page_watch) or its figure's loading, to its first draw.
        worker = weakref.ref(self.worker)

        def hold() -> None:
            w = worker()
            if w is not None:
                w.hold_background(PAGE_LOAD_HOLD_S)

        self._unwatch_pages = on_page_contact(hold)
        self.profile_panel.figure.on_loading(hold)
        self.profile_panel.figure.on_drawn(self.worker.release_background)
        if maps_after_chart is None:
            self._start_maps()
        else:
            self._start_maps_after_chart(float(maps_after_chart))
        if self.image_panel.browser is not None:
            self.image_panel.refresh_rows()
        if cell is not None:
            self._by_cell[cell] = weakref.ref(self)

    def _start_maps(self) -> None:
        """The first input map and CAM, then the instant-map basis in idle time."""
        if self._closed:
            return
        self.maps_panel.request_map(delay=0.0)
        self.maps_panel.request_cam(delay=0.0)
        # Instant maps: after the first map, idle time builds the basis of the likely filters.
        self.changed.connect(self._restart_basis, "instant-map basis")
        self._restart_basis(StateEvent(ALL_STATE))

    def _start_maps_after_chart(self, timeout: float) -> None:
        """Hold the maps back until a browser has drawn the profile chart, or ``timeout`` seconds.

        The dashboard's page loads plotly.js and draws the chart on the same 2 CPU cores the
        kernel would spend on the maps and the basis; the chart comes first (the maps follow in
        about a second). A kernel no browser has opened yet (Voila's preheated one) starts them
        after ``timeout``, so a later visitor finds them ready.
        """
        lock = threading.Lock()
        started = False

        def start() -> None:
            nonlocal started
            with lock:
                if started:
                    return
                started = True
            timer.cancel()
            self.status.guard(self._start_maps, "input map")()

        timer = threading.Timer(timeout, start)
        timer.daemon = True
        self.profile_panel.figure.on_drawn(start)
        timer.start()

    def _layout(self) -> list[W.Widget]:
        model_name = getattr(getattr(self.session, "model", None), "name", "")
        title = W.HTML(
            _CSS + '<div style="font-size:16px;font-weight:600;white-space:nowrap">'
            "Parameter-space saliency explorer</div>"
            f'<div style="font-size:12px;color:#555;white-space:nowrap">model {esc(model_name)}: '
            "which filters malfunction on this image, and which pixels make them malfunction</div>",
            layout=W.Layout(flex="0 0 auto", margin="0 24px 0 0"),
        )
        header = W.HBox(
            [title, self.status.widget],
            layout=W.Layout(flex_flow="row wrap", align_items="center", width="100%"),
        )
        toolbar = W.HBox(
            [self.image_panel.widget, self.prediction_panel.label_row],
            layout=W.Layout(
                flex_flow="row wrap",
                align_items="center",
                width="100%",
                grid_gap="4px 16px",
                border_bottom="1px solid #ddd",
                padding="0 0 2px 0",
            ),
        )
        tabs = [self.prune_panel.widget, self.export_panel.widget]
        titles = ["Turn filters off", "Export"]
        if self.neighbours_panel is not None:
            tabs.insert(1, self.neighbours_panel.widget)
            titles.insert(1, "Neighbours")
        if self.dataset_panel is not None:
            tabs.insert(0, self.dataset_panel.widget)
            titles.insert(0, "Dataset view")
        if self.image_panel.browser is not None:
            tabs.insert(0, self.image_panel.browser)
            titles.insert(0, "Dataset")
        self.tabs = W.Tab(children=tabs, titles=titles, layout=W.Layout(width="100%"))
        if self.dataset_panel is not None:
            self.tabs.observe(self._tab_shown, names="selected_index")
        # The tools under the chart: the right column (image, map, prediction, CAM) is taller
        # than the chart, so this fills the left column instead of leaving a blank band.
        left = W.VBox(
            [self.profile_panel.widget, self.brush_panel.report, self.tabs],
            layout=W.Layout(flex="1 1 480px", min_width="0", grid_gap="6px"),
        )
        views = W.HBox(
            [self.brush_panel.widget, self.maps_panel.map_box],
            layout=W.Layout(grid_gap="12px"),
        )
        self.prediction_panel.widget.layout.width = self.brush_panel.widget.layout.width
        more = W.HBox(
            [self.prediction_panel.widget, self.maps_panel.cam_box],
            layout=W.Layout(grid_gap="12px"),
        )
        right = W.VBox([views, more], layout=W.Layout(flex="0 0 auto"))
        main = W.HBox(
            [left, right],
            layout=W.Layout(flex_flow="row wrap", width="100%", grid_gap="16px", margin="4px 0 0 0"),
        )
        return [header, toolbar, main]

    def _tab_shown(self, change: dict[str, Any]) -> None:
        """Load the dataset view the first time its tab is shown."""
        panel = self.dataset_panel
        i = change.get("new")
        if panel is not None and i is not None and self.tabs.children[i] is panel.widget:
            self.status.guard(lambda: panel.load(), "dataset view")()

    # -- construction from the environment (the Voila dashboard) ---------------------------------
    @classmethod
    def from_env(cls, **overrides: Any) -> Explorer:
        """An Explorer configured by PSAL_MODEL, PSAL_IMAGE, PSAL_DATA, PSAL_DEVICE, PSAL_WEIGHTS,
        PSAL_STATS, PSAL_INDEX, PSAL_EXPORT_DIR and PSAL_UPLOAD_LIMIT (bytes) (unset or empty: the
        defaults); keyword arguments override them."""
        names = {
            "PSAL_MODEL": "model",
            "PSAL_IMAGE": "image",
            "PSAL_DATA": "data",
            "PSAL_DEVICE": "device",
            "PSAL_WEIGHTS": "weights",
            "PSAL_STATS": "stats",
            "PSAL_INDEX": "index",
            "PSAL_EXPORT_DIR": "export_dir",
        }
        kwargs: dict[str, Any] = {arg: (os.environ.get(var) or None) for var, arg in names.items()}
        limit = os.environ.get("PSAL_UPLOAD_LIMIT")
        if limit:
            if not limit.isdigit() or int(limit) <= 0:
                raise ValueError(f"PSAL_UPLOAD_LIMIT={limit!r}: give the largest upload as a positive number of bytes")
            kwargs["upload_limit"] = int(limit)
        # Served pages draw the chart before the kernel spends the CPU on maps (see __init__).
        kwargs["maps_after_chart"] = DASHBOARD_MAPS_AFTER_CHART_S
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- hooks for tests and benchmarks ----------------------------------------------------------
    @property
    def map_version(self) -> int:
        """Increases each time a new input map is shown (stale results are never shown)."""
        return self.maps_panel.map_version

    def wait_idle(self, timeout: float = 60) -> None:
        """Block until every queued computation has finished (raises TimeoutError)."""
        self.worker.wait_idle(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the worker, release the Session if this Explorer created it, drop every callback
        and close every widget of the app (ipywidgets keeps them registered until closed)."""
        if getattr(self, "_closed", True):  # also runs from __del__, maybe half-built
            return
        self._closed = True
        unwatch = getattr(self, "_unwatch_pages", None)
        if unwatch is not None:
            unwatch()
        changed = getattr(self, "changed", None)
        if changed is not None:
            changed.clear()
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.unwatch_all()
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close(wait=True)
        session = getattr(self, "session", None)
        if session is not None and self._owns_session:
            with contextlib.suppress(Exception):
                session.close()
        self._close_widgets()
        for cell, ref in list(self._by_cell.items()):
            if ref() is self:
                del self._by_cell[cell]

    def _close_widgets(self) -> None:
        panels = [
            getattr(self, name, None)
            for name in (
                "status",
                "profile_panel",
                "prediction_panel",
                "image_panel",
                "brush_panel",
                "maps_panel",
                "prune_panel",
                "export_panel",
                "neighbours_panel",
                "dataset_panel",
            )
        ]
        # Not self: close_widgets would call this method again; the VBox itself closes last.
        roots: list[Any] = [*panels, *self.children, self.layout, getattr(self, "tabs", None)]
        close_widgets([r for r in roots if r is not None])
        self.children = ()
        super().close()

    # -- the Host protocol: plumbing shared by the panels ----------------------------------------
    def quiet(self, widget: W.Widget) -> contextlib.AbstractContextManager[None]:
        """Set a widget's value from code (this thread) without running its ``watch`` action."""
        return self._watcher.quiet(widget)

    def watch(self, widget: W.Widget, fn: Callable[[dict[str, Any]], None], what: str) -> None:
        """``widget.observe(fn, names="value")``, guarded, skipped while this thread is quiet."""
        self._watcher.watch(widget, fn, what)

    def change_filters(self, fn: Callable[[], Any], *, what: str) -> None:
        """Queue a change of F (or k / boost); then tell the panels."""

        def job() -> None:
            fn()
            # An instant map first: the browser then shows it before it redraws the chart.
            self.maps_panel.show_if_instant()
            self.changed.emit(StateEvent(frozenset(("filters", "settings"))))
            self.status.success(f"F: {len(self.session.filters)} filters; computing the map…")

        self.worker.run(job, what=what)

    def change_state(
        self,
        fn: Callable[[], Any],
        *,
        what: str,
        changes: frozenset[Change] = ALL_STATE,
        report: bool = False,
    ) -> None:
        """Queue a change of the analysis (image, label, mask, settings); then tell the panels.

        With ``report=True`` the result of ``fn`` (a before / after comparison or None) travels
        with the event, for the brush panel's Fig. 7c report.
        """

        def job() -> None:
            result = fn()
            self.changed.emit(StateEvent(frozenset(changes), result if report else None))
            s = self.session
            self.status.success(f"{s.image_name}: studying {s.label_name}")

        self.worker.run(job, what=what)

    def _restart_basis(self, event: StateEvent) -> None:
        """A new analysis (image, label, mask) gets a new basis; the old work stops between steps."""
        step = getattr(self.session, "basis_step", None)
        if step is None or not event.touches("profile", "image", "label"):
            return
        status = getattr(self.session, "basis_status", None)
        self.maps_panel.show_basis({})  # the old analysis's count no longer holds

        def build() -> bool:
            # One filter a step: batching more per step saved nothing measurable (0.6-0.9 s per
            # filter for steps of 1, 2 and 4 here), and a click that arrives during a step waits
            # for at most that step.
            more = step(1)
            if status is not None:
                self.maps_panel.show_basis(status())
            return more

        self.worker.background(build, what="instant-map basis")

    def wait_background(self, timeout: float = 300) -> None:
        """Block until the queue is empty and the instant-map basis is built (tests, benchmarks)."""
        self.worker.wait_background(timeout)

    def refresh(self) -> None:
        """Redraw every view from the Session (call on the worker thread)."""
        self.changed.emit(StateEvent(ALL_STATE))

    def _chart_html(self) -> str:
        """The chart as an HTML page that loads plotly.js from a file beside it (small page)."""
        from .export import PLOTLY_JS

        return self.profile_panel.figure.to_html(include_plotlyjs=PLOTLY_JS, full_html=True)

    @staticmethod
    def _plotly_js() -> str:
        from plotly.offline import get_plotlyjs

        return get_plotlyjs()
