"""Input-space saliency of F and a CAM beside it, each recomputed in the background.

Both refreshes go through the worker's latest-wins queue (keys ``map`` and ``cam``): a burst
of clicks costs one computation, and a result that a newer request overtook is never shown.
The panel listens to the host's "state changed" signal: a new profile or F or threshold redraws
the map, a new image or label redraws the CAM.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import numpy as np

from ..viz.encode import png_bytes
from ..viz.heatmap import overlay
from .common import DISPLAY_WIDTH, class_picker, colorbar_html, explain, label_option, parse_label
from .host import Host, StateEvent
from .html import esc

__all__ = ["MapsPanel"]

#: Upper percentile of the map's clipping (fixed by the method, paper B.2).
UPPER_PERCENTILE = 99

_MAP_HELP = (
    "Which pixels make the filters of F look malfunctioning. We build a target profile in which "
    "the saliencies of the filters in F are multiplied by the <b>boost</b> (100 by default) and "
    "measure how far the image's own profile is from that target with the <b>cosine distance</b> "
    "(1 &minus; the cosine of the angle between the two profiles). The gradient of that distance "
    "with respect to each input pixel says how much the pixel drives the filters of F: bright "
    "pixels are the ones that make F salient. The <b>threshold percentile</b> hides the weak "
    "part: pixels below it show the plain photo, and values above the "
    f"{UPPER_PERCENTILE}th percentile are clipped to the top colour."
)
_CAM_HELP = (
    "A class activation map (GradCAM and relatives, from the <i>grad-cam</i> package): the image "
    "regions that the chosen class's score depends on, read from a convolution layer's "
    "activations and gradients. It answers a different question than the input saliency of F "
    "(&ldquo;where does the model look for this class?&rdquo; rather than &ldquo;which pixels "
    "make these filters malfunction?&rdquo;); the paper compares the two (appendix A.10). The "
    "class box says which class is explained."
)


def _blank(size: int = 224) -> bytes:
    return png_bytes(np.full((size, size, 3), 240, dtype=np.uint8))


class MapsPanel:
    """``psal-map`` with its threshold percentile, ``psal-cam`` with method / class / layer.

    Attributes
    ----------
    map_box, cam_box : ipywidgets.VBox
        The two views (the app places them).
    map_version : int
        Increases each time a new input map is shown.
    """

    def __init__(self, host: Host, *, debounce: float = 0.15) -> None:
        self.host = host
        self.debounce = debounce
        s = host.session
        self.map_version = 0
        # The map show_if_instant has just shown (its _map_key), until the change that follows.
        self._shown_instant: tuple[Any, ...] | None = None
        self.map = W.Image(value=_blank(), format="png", width=DISPLAY_WIDTH)
        self.map.add_class("psal-map")
        self.map_caption = W.HTML("")
        # Progress of the instant-map basis: which clicks update the map at once.
        self.instant = W.HTML("")
        self.instant.add_class("psal-instant")
        self.percentile = W.FloatSlider(
            value=s.percentile,
            min=0.0,
            max=98.0,
            step=1.0,
            description="threshold percentile",
            continuous_update=False,
            readout_format=".0f",
            style={"description_width": "initial"},
            layout=W.Layout(width=f"{DISPLAY_WIDTH}px"),
        )
        host.watch(self.percentile, self._percentile_changed, "threshold percentile")
        self.map_colorbar = W.HTML("")
        self._show_map_colorbar(s.percentile)

        self.cam = W.Image(value=_blank(), format="png", width=DISPLAY_WIDTH)
        self.cam.add_class("psal-cam")
        self.cam_caption = W.HTML("")
        self.method = W.Dropdown(
            options=list(s.cam_methods),
            value=s.cam_methods[0],
            description="method",
            layout=W.Layout(width=f"{DISPLAY_WIDTH}px"),
        )
        self.target = class_picker(
            s.labels.names,
            placeholder="the label under study",
            description="class",
            width=f"{DISPLAY_WIDTH}px",
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
            host.watch(w, lambda _c: self.request_cam(), what)

        box = W.Layout(width=f"{DISPLAY_WIDTH + 4}px")
        self.map_box = W.VBox(
            [
                explain("Input saliency of F", "the pixels that drive F.", _MAP_HELP),
                self.map,
                self.map_colorbar,
                self.map_caption,
                self.instant,
                self.percentile,
            ],
            layout=box,
        )
        self.cam_box = W.VBox(
            [
                explain("CAM", "where the model looks for a class.", _CAM_HELP),
                self.cam,
                W.HTML(colorbar_html(low="low", high="high")),
                self.cam_caption,
                self.method,
                self.target,
                self.layer,
            ],
            layout=box,
        )
        host.changed.connect(self._on_change, "maps")

    def show_basis(self, status: dict[str, Any]) -> None:
        """Say how many of the likely filters already have an instant map (any thread).

        ``status`` is ``Session.basis_status()``. The numbers are also in ``data-built`` /
        ``data-planned`` attributes for benchmarks and tests.
        """
        built, planned = int(status.get("built", 0)), int(status.get("planned", 0))
        if planned <= 0:
            text = ""
        elif built < planned:
            text = (f"instant maps: {built} of {planned} likely filters ready; "
                    "a click on one of them updates the map at once")
        else:
            text = (f"instant maps ready for the {planned} likely filters (the top ranks and each "
                    "layer's best); any other filter takes one backward pass")
        self.instant.value = (
            f'<span data-built="{built}" data-planned="{planned}" style="font-size:11px;color:#555">'
            f"{esc(text)}</span>"
        )

    # -- requests (any thread) -------------------------------------------------------------------
    def show_if_instant(self) -> bool:
        """Compute and show the map of F now if it costs no backward pass (worker thread).

        Called before the chart is told about a new F: the browser handles messages in order and
        redrawing the chart's 21,008 points takes it 100-200 ms, so the map message goes first.
        The change that follows then requests no second copy of the same map (``_on_change``).
        """
        s = self.host.session
        instant = getattr(s, "map_is_instant", None)
        if instant is None or not instant():
            return False
        result = self._compute_map()
        self._show_map(result)
        self._shown_instant = self._map_key(result)
        return True

    @staticmethod
    def _map_key(result: tuple[bytes, list[int], float, float, str | None, str]) -> tuple[Any, ...]:
        """What a map shown for the same analysis depends on: F, boost and percentile."""
        _, filters, boost, percentile, _, _ = result
        return tuple(sorted(filters)), boost, percentile

    def _compute_map(self) -> tuple[bytes, list[int], float, float, str | None, str]:
        """The map of the session's current F as PNG, with what ``_show_map`` shows beside it."""
        s = self.host.session
        filters = s.filters
        png = png_bytes(s.input_overlay(filters))
        return png, filters, s.boost, s.percentile, s.map_note(filters), s.filter_mode

    def request_map(self, *, delay: float | None = None) -> None:
        """Recompute the input map for the session's current F (debounced, latest wins)."""
        s = self.host.session
        if delay is None:
            # The debounce gathers fast clicks before a backward pass; a map from the cache or the
            # instant-map basis costs milliseconds, so it is not delayed.
            instant = getattr(s, "map_is_instant", None)
            delay = 0.0 if instant is not None and instant() else self.debounce
        self.host.worker.latest("map", self._compute_map, then=self._show_map, delay=delay, what="input map")

    def _cam_target(self) -> int | str | None:
        """The class the CAM explains: the class box, or None (the label under study)."""
        return parse_label(str(self.target.value or ""))

    def request_cam(self, *, delay: float | None = None) -> None:
        s = self.host.session
        method = str(self.method.value)
        target = self._cam_target()
        layer = self.layer.value or None

        def compute() -> tuple[bytes, str]:
            # The view is the Session's, so that Export writes exactly this CAM.
            s.set_cam_view(method=method, target=None if target is None else s.labels.resolve(target), layer=layer)
            heat = s.cam()
            t = s.cam_target()
            why = "the label under study" if t["source"] == "label" else "the chosen class"
            cls = f"{label_option(t['index'], t['name'])}, {why}"
            return png_bytes(overlay(s.image, heat)), f"{method} for {cls}"

        self.host.worker.latest(
            "cam",
            compute,
            then=self._show_cam,
            delay=self.debounce if delay is None else delay,
            what="CAM",
        )

    def _percentile_changed(self, change: dict[str, Any]) -> None:
        p = float(change["new"])
        s = self.host.session
        self.host.change_state(
            lambda: s.set_percentile(p), what="threshold percentile", changes=frozenset({"settings"})
        )

    # -- views (worker thread) -------------------------------------------------------------------
    def _on_change(self, event: StateEvent) -> None:
        shown, self._shown_instant = self._shown_instant, None
        if event.touches("profile"):
            self.request_map(delay=0.0)
        elif event.touches("filters", "settings"):
            s = self.host.session
            # show_if_instant has just shown this very map (same analysis: the profile is unchanged).
            if shown != (tuple(sorted(s.filters)), s.boost, s.percentile):
                self.request_map()
        if event.touches("image", "label", "profile"):
            self.request_cam(delay=0.0)
        if event.touches("settings"):
            p = self.host.session.percentile
            if self.percentile.value != p:
                with self.host.quiet(self.percentile):
                    self.percentile.value = p

    def _show_map_colorbar(self, percentile: float) -> None:
        self.map_colorbar.value = colorbar_html(
            low=f"{percentile:g}th percentile (below: hidden)",
            high=f"&ge; {UPPER_PERCENTILE}th",
        )

    def _show_map(self, result: tuple[bytes, list[int], float, float, str | None, str]) -> None:
        png, filters, boost, percentile, note, mode = result
        self.map.value = png
        self._show_map_colorbar(percentile)
        # data-filters: the filter set this very map was computed for (tests compare it with F).
        ids = ",".join(str(int(f)) for f in sorted(filters))
        self.map_caption.value = (
            f'<span class="psal-map-filters" data-filters="{ids}" style="font-size:11px;color:#555">'
            f"|F| = {len(filters)}, boost {boost:g}, "
            f"threshold percentile {percentile:g} (values below it are hidden, values above the "
            f"{UPPER_PERCENTILE}th percentile are clipped)</span>"
        )
        self.map_version += 1
        self.host.status.set_ready()
        s = self.host.session
        if mode == "custom":
            how = "custom F (kept when the label or the masks change; top-k resets it)"
        else:
            how = "F = the top-k filters (follows the image, the label and the masks)"
        text = f"{s.image_name}: studying '{s.label_name}', {len(filters)} filters in F, {how}"
        if note:
            text += f". Map is all zero: {note}"
        self.host.status.settle(text)

    def _show_cam(self, result: tuple[bytes, str]) -> None:
        png, caption = result
        self.cam.value = png
        self.cam_caption.value = f'<span style="font-size:11px;color:#555">{esc(caption)}</span>'
