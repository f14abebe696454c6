"""Result and option types of the session: TypedDicts (dict access keeps working), Literals.

Every public result of :class:`~psal_widgets.session.Session` is one of these, so callers and
type checkers know its keys; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np

from .resolve import LabelSource

__all__ = [
    "PRUNE_CHOICES",
    "BasisStatus",
    "BrushReport",
    "CamTarget",
    "CamView",
    "ClassProb",
    "ClassRef",
    "DatasetRow",
    "DatasetSummary",
    "FilterChange",
    "FilterInfo",
    "FilterMode",
    "LabelSource",
    "NeighbourRow",
    "OnlyFilter",
    "PredictionSummary",
    "PruneChoice",
    "PruneReport",
]

#: How the boosted set F is chosen. ``top-k``: the k most salient filters of the current
#: profile, recomputed whenever the image, the label or the masks change. ``custom``: picked
#: by hand, kept across label changes and masks (a new image goes back to ``top-k``).
FilterMode = Literal["top-k", "custom"]
FILTER_MODES: tuple[str, ...] = ("top-k", "custom")

#: Which dataset rows to list.
OnlyFilter = Literal["correct", "incorrect"]

#: Which filters :meth:`Session.prune` turns off: the n most salient, n random ones, the n
#: least salient, or exactly F.
PruneChoice = Literal["salient", "random", "least", "selected"]
PRUNE_CHOICES: tuple[str, ...] = ("salient", "random", "least", "selected")


class ClassRef(TypedDict):
    """A class of the model."""

    index: int
    name: str


class ClassProb(TypedDict):
    """A class and its probability (one entry of a top-k list)."""

    index: int
    name: str
    prob: float


class CamTarget(TypedDict):
    """The class the CAM explains now, and why."""

    index: int
    name: str
    #: ``label``: the label under study (the default); ``chosen``: set with set_cam_view.
    source: Literal["label", "chosen"]


@dataclass(frozen=True)
class CamView:
    """What the CAM panel shows.

    Attributes
    ----------
    method : str
        One of ``psal_widgets._types.CAM_METHODS``.
    target : int or None
        Class index; None: the label under study (follows label changes).
    layer : str or None
        Conv layer name; None: the model's last conv layer.
    """

    method: str = "gradcam"
    target: int | None = None
    layer: str | None = None


class BasisStatus(TypedDict):
    """Progress of the instant-map basis of the current analysis."""

    built: int
    planned: int
    covers_f: bool


class FilterInfo(TypedDict):
    """One filter of the current profile (``rank`` 0 = the most salient of the model)."""

    id: int
    layer: str
    channel: int
    saliency: float
    rank: int
    raw: float
    layer_pos: int
    selected: bool


class FilterChange(TypedDict):
    """A filter of F before and after an edit of the image (paper Fig. 7c)."""

    id: int
    before: float
    after: float
    #: ``(after - before) / |before| * 100``; None where the saliency was 0.
    change_pct: float | None


class PredictionSummary(TypedDict):
    """Probabilities of one image version."""

    top5: list[ClassProb]
    #: Probability of the label under study.
    prob_label: float
    #: Probability of the class predicted BEFORE the edit.
    prob_pred: float


class _Comparison(TypedDict):
    before: PredictionSummary
    after: PredictionSummary
    #: The class predicted before the edit, and the label under study.
    pred: ClassRef
    label: ClassRef
    #: F as it was before the edit, each filter's saliency before and after.
    filters: list[FilterChange]


class BrushReport(_Comparison, total=False):
    """What a brush stroke (or an undo / reset) changed; ``masked_pixels`` only for a stroke."""

    masked_pixels: int


class PruneReport(TypedDict):
    """Predictions before and after turning filters off (paper §3.1)."""

    kind: PruneChoice
    n: int
    filters: list[int]
    #: Top 5 after / before turning the filters off.
    prediction: list[ClassProb]
    prediction_before: list[ClassProb]
    #: (before, after) probability of the label under study.
    prob_label: tuple[float, float]
    #: (before, after) probability of the class predicted before.
    prob_pred: tuple[float, float]
    #: (before, after) top-1 class.
    top1: tuple[ClassProb, ClassProb]
    #: The class predicted before, and the label under study.
    pred: ClassRef
    label: ClassRef


class DatasetRow(TypedDict):
    """One dataset image with the model's prediction (from the profile index)."""

    i: int
    file: str
    label: int
    label_name: str
    pred: int
    pred_name: str
    correct: bool
    prob_label: float
    prob_pred: float
    #: Cross-entropy against the label (``prob_label = exp(-loss)``).
    loss: float
    #: The image's standardized profile averaged over all filters (NaN without statistics).
    mean_saliency: float


class DatasetSummary(TypedDict):
    """Paper Fig. 2 for the session's dataset: mean standardized profiles, correct vs incorrect.

    The ``y`` arrays are the group means of the standardized profile, each sorted per layer
    (descending) and laid out as the profile chart (layer ``i`` spans ``x`` in ``[i, i+1)``); NaN
    for an empty group.
    """

    #: float64 [F]: position of each sorted value.
    x: np.ndarray
    #: float64 [F]: mean over the correctly / incorrectly classified images, sorted per layer.
    y_correct: np.ndarray
    y_incorrect: np.ndarray
    #: int64 [F]: layer position of each point.
    layer: np.ndarray
    layer_names: list[str]
    n_correct: int
    n_incorrect: int
    #: Mean over the group's images of their mean standardized saliency.
    mean_saliency_correct: float
    mean_saliency_incorrect: float


class NeighbourRow(TypedDict):
    """A dataset image close to the current one in parameter-saliency space."""

    i: int
    file: str
    label: int
    label_name: str
    pred: int
    pred_name: str
    correct: bool
    similarity: float
