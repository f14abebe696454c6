"""The immutable state of one analysis: image, masks, label and the analysis itself.

A state is replaced as a whole (``dataclasses.replace`` or a new one): a failure while building
the next one leaves the current one in place, and readers under the session's lock never see
half an update. Its ``generation`` number is unique within a session and keys every cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..viz.masks import Stroke
from .resolve import LabelSource

if TYPE_CHECKING:
    from ..explainer import Analysis

__all__ = ["State", "frozen"]


def frozen(arr: np.ndarray) -> np.ndarray:
    """A contiguous read-only array (a copy only when needed): state images cannot be edited."""
    out = np.ascontiguousarray(arr)
    out.flags.writeable = False
    return out


@dataclass(frozen=True)
class State:
    """What one analysis belongs to.

    Attributes
    ----------
    generation : int
        Increases with every new state of the session; keys the caches.
    name : str
        Image name shown in the UI.
    original : np.ndarray, uint8 [H, W, 3]
        The resized and cropped image before masks (read-only).
    image : np.ndarray, uint8 [H, W, 3]
        What the model sees now, masks applied (read-only).
    label : int
        The label under study.
    label_source : {"known", "given", "prediction"}
    default_label : int or None
        The image's known label (None: its prediction); ``set_label(None)`` returns to it.
    analysis : Analysis
        Profile, probabilities and the kept graph for ``image`` and ``label``.
    dataset_index : int or None
        Row of the session's dataset the image came from.
    masks : tuple of Stroke
        Strokes applied to ``original``, in order.
    history : tuple of np.ndarray
        The image before each stroke (undo restores it exactly).
    """

    generation: int
    name: str
    original: np.ndarray
    image: np.ndarray
    label: int
    label_source: LabelSource
    default_label: int | None
    analysis: Analysis
    dataset_index: int | None = None
    masks: tuple[Stroke, ...] = ()
    history: tuple[np.ndarray, ...] = ()
