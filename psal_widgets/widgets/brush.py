"""Masking by brushing: drag boxes or lassos on the image the model sees (paper §3.4, Fig. 7).

Mouse events come from ``ipyevents`` on an ``ipywidgets.Image`` (mousedown / throttled
mousemove / mouseup, browser default actions prevented); they carry ``dataX``, ``dataY`` in the
image's own pixels whatever its displayed size. While dragging, the stroke is drawn on the
image (no computation); on release the region is masked and the model re-run, and the panel
shows the probabilities and the % change of each F filter's saliency before and after
(paper Fig. 7c).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import ipywidgets as W
import numpy as np
from ipyevents import Event

from ..viz.encode import png_bytes
from ..viz.masks import Stroke
from .common import DISPLAY_WIDTH, explain
from .host import Host, StateEvent
from .html import change_bar, esc, span, table

__all__ = ["BrushPanel"]

#: A drag shorter than this (image pixels) is a click, not a stroke.
_MIN_DRAG = 2.0
_STROKE_COLOR = (255, 255, 0)


def _draw_stroke(image: np.ndarray, kind: str, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """A copy of ``image`` (uint8 [H, W, 3]) with the stroke in progress drawn on it."""
    out = np.ascontiguousarray(image).copy()
    if len(points) < 2:
        return out
    pts = np.round(np.asarray(points, dtype=np.float64)).astype(np.int32)
    if kind == "box":
        (x0, y0), (x1, y1) = pts[0], pts[-1]
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), _STROKE_COLOR, 1)
    else:
        cv2.polylines(out, [pts.reshape(-1, 1, 2)], True, _STROKE_COLOR, 1)
    return out


_HELP = (
    "Cover part of the image and see what changes (paper section 3.4). Drag a <b>box</b> or draw "
    "a <b>lasso</b> on the image; the region is filled (<b>mean</b> colour, <b>black</b> or a "
    "<b>blur</b>) and the model runs again. The report below the chart then shows the "
    "probabilities before and after, and how the saliency of each filter of F changed: if "
    "masking the region makes F's filters much less salient, that region is what made them "
    "malfunction. <b>mask top %</b> masks the most salient pixels of the input map. "
    "<b>undo</b> removes the last mask, <b>reset</b> all of them."
)


class BrushPanel:
    """``psal-image`` (brushable), tool, fill, undo / reset, "mask the top p%" and the report."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._base: np.ndarray = np.asarray(host.session.image)
        self.image = W.Image(value=png_bytes(self._base), format="png", width=DISPLAY_WIDTH)
        self.image.add_class("psal-image")
        self.events = Event(
            source=self.image,
            watched_events=["mousedown", "mousemove", "mouseup", "mouseleave"],
            prevent_default_action=True,
            throttle_or_debounce="throttle",
            wait=40,
        )
        self.events.on_dom_event(host.status.guard(self._on_event, "brush"))
        self._drag: list[tuple[float, float]] | None = None

        self.tool = W.ToggleButtons(
            options=["box", "lasso"], value="box", style={"button_width": "60px"}
        )
        self.fill = W.Dropdown(
            options=["mean", "black", "blur"],
            value="mean",
            description="fill",
            style={"description_width": "initial"},
            layout=W.Layout(width="110px"),
        )
        self.undo = W.Button(description="undo", icon="undo", layout=W.Layout(width="72px"))
        self.reset = W.Button(description="reset", layout=W.Layout(width="60px"))
        self.top_p = W.BoundedFloatText(
            value=5.0,
            min=0.1,
            max=100.0,
            step=1.0,
            description="top %",
            style={"description_width": "initial"},
            layout=W.Layout(width="100px"),
        )
        self.top_button = W.Button(description="mask top % of map", layout=W.Layout(width="150px"))
        g = host.status.guard
        self.undo.on_click(g(lambda _b: self.undo_mask(), "undo mask"))
        self.reset.on_click(g(lambda _b: self.reset_mask(), "reset mask"))
        self.top_button.on_click(g(lambda _b: self.mask_top_percent(), "mask top pixels"))
        self.masks = W.HTML("")
        # Hidden while empty: an empty HTML still takes a line of the page.
        self.report = W.HTML("", layout=W.Layout(display="none"))
        self.widget = W.VBox(
            [
                explain("Image", "drag on it to mask a region; the model runs again.", _HELP),
                self.image,
                W.HBox([self.tool, self.fill], layout=W.Layout(align_items="center")),
                W.HBox([self.undo, self.reset, self.masks], layout=W.Layout(align_items="center")),
                W.HBox([self.top_p, self.top_button], layout=W.Layout(align_items="center")),
            ],
            layout=W.Layout(width=f"{DISPLAY_WIDTH + 4}px"),
        )
        host.changed.connect(self._on_change, "image")

    # -- hooks ------------------------------------------------------------------------------------
    def on_stroke(
        self, kind: str = "box", points: Sequence[Sequence[float]] = (), fill: str | None = None
    ) -> None:
        """Mask a region (pixel coordinates of the image), as a finished mouse drag does."""
        stroke = Stroke(
            kind=kind,
            points=tuple((float(p[0]), float(p[1])) for p in points),
            fill=fill or self.fill.value,
        )
        s = self.host.session
        self.host.change_state(lambda: s.brush(stroke), what="brush", report=True)

    def undo_mask(self) -> None:
        self.host.change_state(self.host.session.undo_mask, what="undo", report=True)

    def reset_mask(self) -> None:
        self.host.change_state(self.host.session.reset_mask, what="reset mask", report=True)

    def mask_top_percent(self, p: float | None = None) -> None:
        pct = float(self.top_p.value if p is None else p)
        fill = self.fill.value
        s = self.host.session
        self.host.change_state(
            lambda: s.mask_top_percent(pct, fill=fill), what="mask top pixels", report=True
        )

    # -- mouse events (main thread) ---------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if "dataX" not in event or "dataY" not in event:
            return
        pt = (float(event["dataX"]), float(event["dataY"]))
        if kind == "mousedown":
            self._drag = [pt]
        elif kind == "mousemove" and self._drag is not None:
            self._drag.append(pt)
            self.image.value = png_bytes(_draw_stroke(self._base, self.tool.value, self._drag))
        elif kind in ("mouseup", "mouseleave") and self._drag is not None:
            pts, self._drag = [*self._drag, pt], None
            span = np.ptp(np.asarray(pts), axis=0)
            if float(span.max()) < _MIN_DRAG:
                self.image.value = png_bytes(self._base)
                return
            if self.tool.value == "box":
                self.on_stroke("box", [pts[0], pts[-1]])
            elif len(pts) >= 3:
                self.on_stroke("lasso", pts)

    # -- views (worker thread) --------------------------------------------------------------------
    def _on_change(self, event: StateEvent) -> None:
        if event.touches("image", "profile"):
            self.show_image()
        if event.touches("profile"):
            self.show_report(event.report)

    def show_image(self) -> None:
        s = self.host.session
        self._base = np.asarray(s.image)
        self.image.value = png_bytes(self._base)
        n = len(s.masks)
        self.masks.value = (
            f'<span style="font-size:12px;color:#555">{n} mask{"s" if n != 1 else ""}</span>'
        )

    def show_report(self, report: dict[str, Any] | None) -> None:
        """Paper Fig. 7c: probabilities and the % change of each F filter's saliency."""
        if not report:
            self.report.value = ""
            self.report.layout.display = "none"
            return
        self.report.layout.display = None
        b, a = report["before"], report["after"]
        pred, label = report.get("pred", {}), report.get("label", {})
        probs = table(
            ["", "before", "after"],
            [
                [
                    f"P(label {esc(label.get('name', ''))})",
                    f"{b['prob_label']:.4f}",
                    f"{a['prob_label']:.4f}",
                ],
                [
                    f"P(predicted {esc(pred.get('name', ''))})",
                    f"{b['prob_pred']:.4f}",
                    f"{a['prob_pred']:.4f}",
                ],
                ["top-1", esc(b["top5"][0]["name"]), esc(a["top5"][0]["name"])],
            ],
            align=["left", "right", "right"],
        )
        rows = []
        for r in report.get("filters", [])[:30]:
            pct = r.get("change_pct")
            rows.append(
                [
                    str(r["id"]),
                    f"{r['before']:.2f}",
                    f"{r['after']:.2f}",
                    "n/a" if pct is None else f"{pct:+.1f}%",
                    change_bar(pct),
                ]
            )
        filters = table(
            ["filter", "before", "after", "change", "decrease | increase"],
            rows,
            align=["right", "right", "right", "right", "center"],
        )
        self.report.value = "<b>Before / after the last mask change</b>" + span(
            f"<div>{probs}</div><div>{filters}</div>",
            "display:flex;gap:24px;flex-wrap:wrap",
            block=True,
        )
