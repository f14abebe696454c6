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
from typing import TYPE_CHECKING, Any

import cv2
import ipywidgets as W
import numpy as np
from ipyevents import Event

from ..viz.encode import png_bytes
from ..viz.masks import Stroke
from .html import change_bar, esc, span, table
from .maps import DISPLAY_WIDTH

if TYPE_CHECKING:
    from .app import Explorer

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


class BrushPanel:
    """``psal-image`` (brushable), tool, fill, undo / reset, "mask the top p%" and the report."""

    def __init__(self, app: Explorer) -> None:
        self.app = app
        self._base: np.ndarray = np.asarray(app.session.image)
        self.image = W.Image(value=png_bytes(self._base), format="png", width=DISPLAY_WIDTH)
        self.image.add_class("psal-image")
        self.events = Event(
            source=self.image,
            watched_events=["mousedown", "mousemove", "mouseup", "mouseleave"],
            prevent_default_action=True,
            throttle_or_debounce="throttle",
            wait=40,
        )
        self.events.on_dom_event(app.status.guard(self._on_event, "brush"))
        self._drag: list[tuple[float, float]] | None = None

        self.tool = W.ToggleButtons(
            options=["box", "lasso"], value="box", style={"button_width": "60px"}
        )
        self.fill = W.Dropdown(
            options=["mean", "black", "blur"],
            value="mean",
            description="fill",
            layout=W.Layout(width="150px"),
        )
        self.undo = W.Button(description="undo", icon="undo", layout=W.Layout(width="80px"))
        self.reset = W.Button(description="reset", layout=W.Layout(width="70px"))
        self.top_p = W.BoundedFloatText(
            value=5.0,
            min=0.1,
            max=100.0,
            step=1.0,
            description="top %",
            layout=W.Layout(width="130px"),
        )
        self.top_button = W.Button(description="mask top p% of map", layout=W.Layout(width="160px"))
        g = app.status.guard
        self.undo.on_click(g(lambda _b: self.undo_mask(), "undo mask"))
        self.reset.on_click(g(lambda _b: self.reset_mask(), "reset mask"))
        self.top_button.on_click(g(lambda _b: self.mask_top_percent(), "mask top pixels"))
        self.masks = W.HTML("")
        self.report = W.HTML("")
        self.widget = W.VBox(
            [
                W.HTML(
                    "<b>Image</b> <span style='font-size:12px;color:#555'>(drag to mask)</span>"
                ),
                self.image,
                W.HBox([self.tool, self.fill]),
                W.HBox([self.undo, self.reset, self.masks], layout=W.Layout(align_items="center")),
                W.HBox([self.top_p, self.top_button]),
            ]
        )

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
        s = self.app.session
        self.app.change_state(lambda: s.brush(stroke), what="brush", report=True)

    def undo_mask(self) -> None:
        self.app.change_state(self.app.session.undo_mask, what="undo", report=True)

    def reset_mask(self) -> None:
        self.app.change_state(self.app.session.reset_mask, what="reset mask", report=True)

    def mask_top_percent(self, p: float | None = None) -> None:
        pct = float(self.top_p.value if p is None else p)
        fill = self.fill.value
        s = self.app.session
        self.app.change_state(
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
    def show_image(self) -> None:
        s = self.app.session
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
            return
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
