"""Class references and top-k lists of probabilities, as the session reports them."""

from __future__ import annotations

import numpy as np

from ..labels import LabelSet
from .types import ClassProb, ClassRef

__all__ = ["class_prob", "class_ref", "top_classes"]


def class_ref(labels: LabelSet, index: int) -> ClassRef:
    """``{index, name}`` of one class."""
    i = int(index)
    return {"index": i, "name": labels.name(i)}


def class_prob(labels: LabelSet, probs: np.ndarray, index: int) -> ClassProb:
    """``{index, name, prob}`` of one class; ``probs`` has shape [C]."""
    i = int(index)
    return {"index": i, "name": labels.name(i), "prob": float(probs[i])}


def top_classes(labels: LabelSet, probs: np.ndarray, top: int = 5) -> list[ClassProb]:
    """The ``top`` most probable classes of ``probs`` [C], descending (ties: lower index first)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[: int(top)]
    return [class_prob(labels, probs, int(i)) for i in order]
