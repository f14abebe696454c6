"""Which filters to turn off, and the report of turning them off (paper §3.1)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from ..kernels.interventions import select_filters
from ..labels import LabelSet
from .classes import class_prob, class_ref, top_classes
from .errors import SessionError
from .types import PRUNE_CHOICES, PruneChoice, PruneReport

__all__ = ["choose_filters", "image_seed", "prune_report"]


def image_seed(image: np.ndarray) -> int:
    """A stable integer derived from the pixels (CRC-32 of the uint8 [H, W, 3] bytes).

    Mixed into the seed of a random draw so that each image gets its own random filters
    (with one global seed every image would lose the same ones), yet the same image always
    gets the same draw.
    """
    return zlib.crc32(np.ascontiguousarray(image, dtype=np.uint8).tobytes())


def choose_filters(
    kind: PruneChoice,
    *,
    profile: np.ndarray,
    selected: Sequence[int],
    n: int | None,
    seed: int,
    image: np.ndarray,
) -> np.ndarray:
    """The filter ids to turn off, int64 [n].

    Parameters
    ----------
    kind : {"salient", "random", "least", "selected"}
    profile : np.ndarray, shape [F]
    selected : sequence of int
        F (``selected`` turns exactly these off; also the default n of the others).
    n : int or None
    seed : int
        Non-negative; ``random`` draws with ``numpy.random.default_rng([seed, image_seed])``.
    image : np.ndarray, uint8 [H, W, 3]
        The image shown (for :func:`image_seed`).
    """
    if kind not in PRUNE_CHOICES:
        raise ValueError(f"kind must be one of {', '.join(PRUNE_CHOICES)}; got {kind!r}")
    if kind == "selected":
        if not selected:
            raise SessionError("F is empty: select filters to turn off")
        return np.asarray(selected, dtype=np.int64)
    count = len(selected) if n is None else n
    if count == 0:
        raise SessionError("F is empty, so n has no default: pass n or select filters")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    # numpy's default_rng takes a sequence of ints as one seed: (user seed, image) -> one draw.
    rng_seed = [int(seed), image_seed(image)] if kind == "random" else int(seed)
    return select_filters(kind, profile, count, seed=rng_seed)  # type: ignore[arg-type]


def prune_report(
    kind: PruneChoice,
    ids: np.ndarray,
    *,
    before: np.ndarray,
    after: np.ndarray,
    label: int,
    labels: LabelSet,
) -> PruneReport:
    """Compare class probabilities [C] before and after turning ``ids`` off."""
    pred = int(np.argmax(before))
    return {
        "kind": kind,
        "n": int(ids.size),
        "filters": [int(i) for i in ids],
        "prediction": top_classes(labels, after, 5),
        "prediction_before": top_classes(labels, before, 5),
        "prob_label": (float(before[label]), float(after[label])),
        "prob_pred": (float(before[pred]), float(after[pred])),
        "top1": (class_prob(labels, before, pred), top_classes(labels, after, 1)[0]),
        "pred": class_ref(labels, pred),
        "label": class_ref(labels, label),
    }
