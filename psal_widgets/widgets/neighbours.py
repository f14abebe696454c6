"""Nearest neighbours in saliency space (paper §3.2): the dataset images whose standardized
profiles are closest (cosine) to the current one, optionally over a range of layers only."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import cv2
import ipywidgets as W
import numpy as np

from ..viz.encode import png_bytes, thumbnail
from .common import close_widgets, explain
from .host import Host
from .html import esc, span

__all__ = ["NeighboursPanel", "read_thumbnail"]

_THUMB = 96


def read_thumbnail(path: str | os.PathLike[str], *, max_side: int = _THUMB) -> bytes | None:
    """PNG thumbnail of an image file, None when it cannot be read."""
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return png_bytes(thumbnail(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), max_side=max_side))


_HELP = (
    "The dataset images whose saliency profiles are most similar to this one: the "
    "<b>cosine similarity</b> of the two standardized profiles (1 = the same filters are "
    "salient in the same proportions). Images that malfunction in the same way tend to be "
    "mistakes of the same kind (paper section 3.2). <b>only layers</b> compares shallow or deep "
    "layers only; &#10003; marks a correctly classified neighbour."
)


class NeighboursPanel:
    """k, an optional layer range (IntRangeSlider), a button, and a grid of neighbour cards.

    Parameters
    ----------
    host : Host
    open_row : callable(i)
        Opens dataset row ``i`` (the image panel's action), for each card's "open" button.
    """

    def __init__(self, host: Host, *, open_row: Callable[[int], None]) -> None:
        self.host = host
        self.open_row = open_row
        s = host.session
        n_layers = len(s.layout().layer_names)
        g = host.status.guard
        self.k = W.BoundedIntText(
            value=10, min=1, max=100, description="k", layout=W.Layout(width="160px")
        )
        self.restrict = W.Checkbox(
            value=False, description="only layers", indent=False, layout=W.Layout(width="110px")
        )
        self.layers = W.IntRangeSlider(
            value=(0, max(0, n_layers - 1)),
            min=0,
            max=max(0, n_layers - 1),
            continuous_update=False,
            layout=W.Layout(width="320px"),
        )
        self.button = W.Button(
            description="find neighbours", icon="search", layout=W.Layout(width="150px")
        )
        self.summary = W.HTML("")
        self.grid = W.GridBox(
            [],
            layout=W.Layout(
                grid_template_columns=f"repeat(auto-fill, {_THUMB + 40}px)", grid_gap="6px"
            ),
        )
        self.results: list[dict[str, Any]] = []
        self.button.on_click(g(lambda _b: self.find(), "neighbours"))
        self.widget = W.VBox(
            [
                explain("Neighbours", "images whose filters malfunction alike.", _HELP),
                W.HBox([self.k, self.restrict, self.layers, self.button]),
                self.summary,
                self.grid,
            ]
        )

    def find(self, k: int | None = None, layers: tuple[int, int] | None = None) -> None:
        s = self.host.session
        count = int(self.k.value if k is None else k)
        span = (
            layers
            if layers is not None
            else (tuple(self.layers.value) if self.restrict.value else None)
        )
        dataset = getattr(s, "dataset", None)

        def run() -> list[dict[str, Any]]:
            rows = s.neighbours(k=count, layers=span)
            for r in rows:
                files = getattr(dataset, "files", None)
                r["thumb"] = read_thumbnail(files[r["i"]]) if files is not None else None
            return rows

        self.host.worker.run(run, then=self.show, what="neighbours")

    def show(self, rows: list[dict[str, Any]]) -> None:
        self.results = rows
        cards = []
        for r in rows:
            thumb = r.get("thumb")
            img = (
                W.Image(value=thumb, format="png", width=_THUMB)
                if thumb
                else W.HTML("(no preview)")
            )
            mark = (
                '<span style="color:#2a7">✓</span>'
                if r["correct"]
                else '<span style="color:#c22">✗</span>'
            )
            text = W.HTML(
                f'<div style="font-size:11px;line-height:1.25">{mark} sim {r["similarity"]:.3f}<br>'
                f"true: {esc(r['label_name'])}<br>pred: {esc(r['pred_name'])}</div>"
            )
            open_button = W.Button(description="open", layout=W.Layout(width=f"{_THUMB}px"))
            i = int(r["i"])
            open_button.on_click(
                self.host.status.guard(lambda _b, i=i: self.open_row(i), "open neighbour")
            )
            cards.append(W.VBox([img, text, open_button]))
        old = self.grid.children
        self.grid.children = cards
        close_widgets(old)  # replaced cards would otherwise stay registered in the kernel
        correct = float(np.mean([r["correct"] for r in rows])) if rows else 0.0
        self.summary.value = span(
            f"{len(rows)} neighbours, {correct:.0%} of them correctly classified"
        )
