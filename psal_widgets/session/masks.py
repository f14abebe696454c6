"""Masking the image (brush strokes, the top pixels of a map) and the paper's Fig. 7c report.

Pure functions: the session applies a stroke with :func:`paint`, analyzes the result, and
compares the two analyses with :func:`compare` (probabilities and the saliency of each filter
of F before and after).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..labels import LabelSet
from ..viz.heatmap import mask_top_percent
from ..viz.masks import Fill, Stroke, apply_fill
from .classes import class_ref, top_classes
from .state import frozen
from .types import BrushReport, FilterChange, PredictionSummary

if TYPE_CHECKING:
    from ..explainer import Analysis

__all__ = ["compare", "paint", "top_percent_stroke"]


def paint(image: np.ndarray, stroke: Stroke, *, mean: Sequence[float]) -> tuple[np.ndarray, int]:
    """Apply one stroke to a uint8 [H, W, 3] image.

    Parameters
    ----------
    image : np.ndarray, uint8 [H, W, 3]
    stroke : Stroke
        Pixel coordinates of ``image``.
    mean : 3 floats
        The model's normalization mean (``fill="mean"`` paints the colour the model reads as 0).

    Returns
    -------
    (np.ndarray uint8 [H, W, 3] read-only, int)
        The masked image and the number of masked pixels.

    Raises
    ------
    TypeError, ValueError
        Not a Stroke; a stroke covering no pixel.
    """
    if not isinstance(stroke, Stroke):
        raise TypeError(f"brush takes a Stroke, got {type(stroke).__name__}")
    mask = stroke.mask(image.shape[:2])
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the stroke covers no pixel: draw a larger region")
    return frozen(apply_fill(image, mask, fill=stroke.fill, mean=tuple(mean))), n


def top_percent_stroke(heat: np.ndarray, p: float, *, fill: Fill = "mean") -> Stroke:
    """A stroke covering the top ``p`` % pixels of a map [H, W] (paper A.9)."""
    region = mask_top_percent(heat, percent=p)
    return Stroke(kind="pixels", fill=fill, region=region, note=f"top {float(p):g}%")


def _summary(labels: LabelSet, probs: np.ndarray, label: int, pred: int) -> PredictionSummary:
    return {
        "top5": top_classes(labels, probs, 5),
        "prob_label": float(probs[label]),
        "prob_pred": float(probs[pred]),
    }


def compare(
    before: Analysis, after: Analysis, filters: Sequence[int], *, label: int, labels: LabelSet
) -> BrushReport:
    """Paper Fig. 7c: probabilities, and the % change of each filter's saliency.

    Parameters
    ----------
    before, after : Analysis
        Of the same label, before and after the edit.
    filters : sequence of int
        F as it was when the edit was made.
    label : int
        The label under study.
    labels : LabelSet

    Returns
    -------
    BrushReport
        ``prob_pred`` is the probability of the class predicted BEFORE the edit.
    """
    pred = int(np.argmax(before.probs))
    rows: list[FilterChange] = []
    for i in filters:
        b, a = float(before.profile[i]), float(after.profile[i])
        change = (a - b) / abs(b) * 100.0 if abs(b) > 1e-12 else None
        rows.append({"id": int(i), "before": b, "after": a, "change_pct": change})
    return {
        "before": _summary(labels, before.probs, label, pred),
        "after": _summary(labels, after.probs, label, pred),
        "pred": class_ref(labels, pred),
        "label": class_ref(labels, label),
        "filters": rows,
    }
