"""Input-space saliency of F and a CAM beside it, each recomputed in the background.

Both refreshes go through the worker's latest-wins queue (keys ``map`` and ``cam``): a burst
of clicks costs one computation, and a result that a newer request overtook is never shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W
import numpy as np

from ..viz.encode import png_bytes
from ..viz.heatmap import overlay
from .html import esc
from .prediction import class_picker, label_option, parse_label

if TYPE_CHECKING:
    from .app import Explorer

__all__ = ["MapsPanel"]

#: Displayed size of the 224-px images (enlarged so that brushing is comfortable).
DISPLAY_WIDTH = 336


def _blank(size: int = 224) -> bytes:
    return png_bytes(np.full((size, size, 3), 240, dtype=np.uint8))


class MapsPanel:
    """``psal-map`` with its threshold percentile, ``psal-cam`` with method / class / layer."""

    def __init__(self, app: Explorer, *, debounce: float = 0.15) -> None:
        self.app = app
        self.debounce = debounce
        s = app.session
        self.map_version = 0
        self.map = W.Image(value=_blank(), format="png", width=DISPLAY_WIDTH)
        self.map.add_class("psal-map")
        self.map_caption = W.HTML("")
        self.percentile = W.FloatSlider(
            value=s.percentile,
            min=0.0,
            max=98.0,
            step=1.0,
            description="threshold pct",
            continuous_update=False,
            style={"description_width": "90px"},
            layout=W.Layout(width=f"{DISPLAY_WIDTH}px"),
        )
        app.watch(self.percentile, self._percentile_changed, "percentile")

        self.cam = W.Image(value=_blank(), format="png", width=DISPLAY_WIDTH)
        self.cam.add_class("psal-cam")
        self.cam_caption = W.HTML("")
        self.method = W.Dropdown(
            options=list(s.cam_methods),
            value=s.cam_methods[0],
            description="method",
            layout=W.Layout(width="230px"),
        )
        self.target = class_picker(
            s.labels.names, placeholder="predicted class", description="class", width=f"{DISPLAY_WIDTH}px"
        )
        layers = list(s.cam_layers())
        self.layer = W.Dropdown(
            # "" rather than None: a Dropdown shows None as an empty box.
            options=[("last conv layer (default)", "")] + [(name, name) for name in layers],
            value="",
            description="layer",
            layout=W.Layout(width=f"{DISPLAY_WIDTH}px"),
        )
        for w, what in (
            (self.method, "CAM method"),
            (self.target, "CAM class"),
            (self.layer, "CAM layer"),
        ):
            app.watch(w, lambda _c: self.request_cam(), what)

        map_box = W.VBox(
            [W.HTML("<b>Input saliency of F</b>"), self.map, self.map_caption, self.percentile]
        )
        cam_box = W.VBox(
            [W.HTML("<b>CAM</b>"), self.cam, self.cam_caption, self.method, self.target, self.layer]
        )
        self.map_box, self.cam_box = map_box, cam_box

    # -- requests (any thread) -------------------------------------------------------------------
    def request_map(self, *, delay: float | None = None) -> None:
        """Recompute the input map for the session's current F (debounced, latest wins)."""
        s = self.app.session

        def compute() -> tuple[bytes, list[int]]:
            filters = s.filters
            return png_bytes(s.input_overlay(filters)), filters

        self.app.worker.latest(
            "map",
            compute,
            then=self._show_map,
            delay=self.debounce if delay is None else delay,
            what="input map",
        )

    def request_cam(self, *, delay: float | None = None) -> None:
        s = self.app.session
        method = str(self.method.value)
        target = parse_label(str(self.target.value or ""))
        layer = self.layer.value or None

        def compute() -> tuple[bytes, str]:
            heat = s.cam(method=method, target=target, layer=layer)
            if target is None:
                top = s.prediction(1)[0]
                cls = label_option(top["index"], top["name"])
            else:
                cls = label_option(
                    s.labels.resolve(target), s.labels.name(s.labels.resolve(target))
                )
            return png_bytes(overlay(s.image, heat)), f"{method} for {cls}"

        self.app.worker.latest(
            "cam",
            compute,
            then=self._show_cam,
            delay=self.debounce if delay is None else delay,
            what="CAM",
        )

    def _percentile_changed(self, change: dict[str, Any]) -> None:
        p = float(change["new"])
        s = self.app.session
        self.app.worker.run(lambda: s.set_percentile(p), what="threshold percentile")
        self.request_map()

    # -- views (worker thread, only for the newest request) --------------------------------------
    def _show_map(self, result: tuple[bytes, list[int]]) -> None:
        png, filters = result
        self.map.value = png
        self.map_caption.value = (
            f'<span style="font-size:12px;color:#555">|F| = {len(filters)}, boost '
            f"{self.app.session.boost:g}, clipped at the "
            f"{self.app.session.percentile:g}th percentile</span>"
        )
        self.map_version += 1
        self.app.status.set_ready()
        s = self.app.session
        self.app.status.settle(f"{s.image_name}: studying '{s.label_name}', {len(filters)} filters boosted")

    def _show_cam(self, result: tuple[bytes, str]) -> None:
        png, caption = result
        self.cam.value = png
        self.cam_caption.value = f'<span style="font-size:12px;color:#555">{esc(caption)}</span>'
