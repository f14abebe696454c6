"""The Explorer: every panel linked to one Session, computations on one background worker.

Construction shows the profile chart, the image and the prediction at once (all cheap once
the Session has analyzed the image) and only then queues the input map and the CAM, so the
page becomes interactive before any map is computed.

Threads: widget callbacks run on the kernel's main thread and only *queue* work; every Session
call that computes runs on the worker thread, in order, and updates the widgets from there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipywidgets as W

from .brush import BrushPanel
from .export import ExportPanel
from .html import esc
from .images import ImagePanel
from .maps import MapsPanel
from .neighbours import NeighboursPanel
from .prediction import PredictionPanel
from .profile import ProfilePanel
from .prune import PrunePanel
from .status import StatusPanel
from .worker import Worker

__all__ = ["Explorer"]

_ENV = ("PSAL_MODEL", "PSAL_IMAGE", "PSAL_DATA", "PSAL_DEVICE")


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
        A labelled dataset with helper objects: enables the dataset browser and neighbours.
    device : str, optional
    session : Session, optional
        Use this session instead of creating one (then leave the other arguments unset).
    debounce : float, default 0.15
        Seconds a map request waits for further clicks before computing.
    raw_images : path, optional
        Folder of the gallery (default: ``raw_images/`` found near the working directory or
        the package).

    Attributes
    ----------
    session : Session
    profile_panel, brush_panel, maps_panel, prediction_panel, image_panel, prune_panel,
    export_panel, neighbours_panel (None without a dataset), status : the panels
    worker : Worker
    """

    def __init__(
        self,
        model: Any = None,
        image: Any = None,
        label: int | str | None = None,
        data: str | os.PathLike[str] | None = None,
        device: str | None = None,
        session: Any = None,
        *,
        debounce: float = 0.15,
        raw_images: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(layout=W.Layout(width="100%"))
        self.add_class("psal-explorer")
        self.status = StatusPanel()
        if session is not None and any(v is not None for v in (model, image, label, data, device)):
            raise ValueError(
                "pass either session=... or model/image/label/data/device, not both "
                "(set the image or label on the session first)"
            )
        self._quiet: set[int] = set()
        self.worker = Worker(on_error=self.status.error, on_busy=self.status.set_busy)
        if session is None:
            from ..session import Session  # the middle tier owns torch; widgets never import it

            def build() -> Session:
                return Session(model=model, data=data, image=image, label=label, device=device)

            # Built on the worker: all torch work then runs on that one thread (see worker.py).
            try:
                session = self.worker.call(build)
            except BaseException:
                self.worker.close(wait=False)
                raise
        self.session = session

        # The chart first: it only needs the analysis the Session already ran.
        self.profile_panel = ProfilePanel(self)
        self.prediction_panel = PredictionPanel(self)
        self.image_panel = ImagePanel(
            self, raw_images=Path(raw_images) if raw_images is not None else None
        )
        self.brush_panel = BrushPanel(self)
        self.maps_panel = MapsPanel(self, debounce=debounce)
        self.prune_panel = PrunePanel(self)
        self.export_panel = ExportPanel(self)
        self.neighbours_panel = (
            NeighboursPanel(self) if getattr(session, "dataset", None) is not None else None
        )

        model_name = getattr(getattr(session, "model", None), "name", "")
        header = W.HTML(
            '<div style="font-size:16px;font-weight:600">Parameter-space saliency explorer</div>'
            f'<div style="font-size:12px;color:#555">model {esc(model_name)}: which filters '
            "malfunction on this "
            "image, and which pixels make them malfunction</div>"
        )
        sources = W.HBox(
            [self.image_panel.widget, self.prediction_panel.widget],
            layout=W.Layout(flex_flow="row wrap", justify_content="space-between", width="100%"),
        )
        views = W.HBox(
            [self.brush_panel.widget, self.maps_panel.map_box, self.maps_panel.cam_box],
            layout=W.Layout(flex_flow="row wrap", grid_gap="12px"),
        )
        tabs = [self.prune_panel.widget, self.export_panel.widget]
        titles = ["Turn filters off", "Export"]
        if self.neighbours_panel is not None:
            tabs.insert(1, self.neighbours_panel.widget)
            titles.insert(1, "Neighbours")
        self.tabs = W.Tab(children=tabs, titles=titles)
        self.children = [
            header,
            self.status.widget,
            sources,
            self.profile_panel.widget,
            views,
            self.brush_panel.report,
            self.tabs,
        ]

        # Cheap views now; the map and the CAM after, on the worker.
        self.prediction_panel.show()
        self.image_panel.show()
        self.brush_panel.show_image()
        self.status.info(f"analyzing {session.image_name}: computing the input map…")
        self.maps_panel.request_map(delay=0.0)
        self.maps_panel.request_cam(delay=0.0)
        if self.image_panel.browser is not None:
            self.image_panel.refresh_rows()

    # -- construction from the environment (the Voila dashboard) ---------------------------------
    @classmethod
    def from_env(cls, **overrides: Any) -> Explorer:
        """An Explorer configured by PSAL_MODEL, PSAL_IMAGE, PSAL_DATA, PSAL_DEVICE (unset or
        empty: the defaults); keyword arguments override them."""
        names = {
            "PSAL_MODEL": "model",
            "PSAL_IMAGE": "image",
            "PSAL_DATA": "data",
            "PSAL_DEVICE": "device",
        }
        kwargs: dict[str, Any] = {arg: (os.environ.get(var) or None) for var, arg in names.items()}
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

    def close(self) -> None:
        """Stop the worker and close the widgets (the Session stays usable)."""
        worker = getattr(self, "worker", None)  # close() also runs from __del__
        if worker is not None:
            worker.close(wait=True)
        super().close()

    # -- plumbing shared by the panels -----------------------------------------------------------
    @contextlib.contextmanager
    def quiet(self, widget: W.Widget) -> Iterator[None]:
        """Set a widget's value from code without running its ``observe`` action."""
        self._quiet.add(id(widget))
        try:
            yield
        finally:
            self._quiet.discard(id(widget))

    def watch(self, widget: W.Widget, fn: Callable[[dict[str, Any]], None], what: str) -> None:
        """``widget.observe(fn, names="value")``, guarded, skipped while ``quiet(widget)``."""
        guarded = self.status.guard(fn, what)

        def handler(change: dict[str, Any]) -> None:
            if id(widget) not in self._quiet:
                guarded(change)

        widget.observe(handler, names="value")

    def change_filters(self, fn: Callable[[], Any], *, what: str) -> None:
        """Queue a change of F (or k / boost); then move the highlight and request the map."""
        s = self.session

        def job() -> None:
            fn()
            self.profile_panel.show_filters(s.filters)
            self.profile_panel.sync_controls(k=s.k, boost=s.boost)
            self.maps_panel.request_map()

        self.worker.run(job, what=what)

    def change_state(self, fn: Callable[[], Any], *, what: str, report: bool = False) -> None:
        """Queue a change of the analysis (image, label, mask); then refresh every view.

        With ``report=True`` the result of ``fn`` (a before / after comparison or None) goes
        to the brush panel's Fig. 7c report.
        """

        def job() -> None:
            result = fn()
            self.refresh(result if report else None)

        self.worker.run(job, what=what)

    def refresh(self, report: dict[str, Any] | None = None) -> None:
        """Redraw everything from the Session (call on the worker), then request map and CAM."""
        s = self.session
        self.profile_panel.show_profile(s.layout(), s.filters)
        self.profile_panel.sync_controls(k=s.k, boost=s.boost)
        self.prediction_panel.show()
        self.image_panel.show()
        self.brush_panel.show_image()
        self.brush_panel.show_report(report)
        self.prune_panel.clear()
        self.maps_panel.request_map(delay=0.0)
        self.maps_panel.request_cam(delay=0.0)
        self.status.info(f"{s.image_name}: studying {s.label_name}")
