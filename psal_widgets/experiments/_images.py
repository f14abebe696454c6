"""Small helpers shared by the per-image experiments: batches of preprocessed images, predictions,
which images to study, standardization in NumPy, progress bars.

Kept free of module-level torch imports (the CLI imports every experiment module to build its parser).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from ..data import LabeledImages
    from ..kernels.stats import FilterStats
    from .base import ExperimentContext

__all__ = ["Which", "images", "predict", "progress", "select_rows", "standardize_np"]

#: Which images an experiment studies: the mistakes (the paper's default) or all of them.
Which = Literal["incorrect", "all", "correct"]


def progress(ctx: ExperimentContext, items: Iterable[Any], *, desc: str, total: int | None = None) -> Iterator[Any]:
    """``tqdm`` over ``items`` when the run shows progress, else the items themselves."""
    if not ctx.config.progress:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False)


def images(dataset: LabeledImages, rows: Sequence[int], device: Any) -> torch.Tensor:
    """Preprocessed images ``rows`` of ``dataset`` as one batch, shape [len(rows), 3, H, W]."""
    import torch

    return torch.stack([dataset[int(r)][0] for r in rows]).to(device)


def predict(ctx: ExperimentContext, dataset: LabeledImages | None = None) -> np.ndarray:
    """Class probabilities of every image of ``dataset`` (the run's data by default), [N, C] float32.

    Batched forward passes, no gradients, the model in eval mode (it always is: models are
    loaded in eval mode and never trained here).
    """
    import torch

    ds = ctx.dataset if dataset is None else dataset
    model = ctx.explainer.model
    bs = max(1, int(ctx.config.batch_size))
    out = []
    starts = range(0, len(ds), bs)
    with torch.no_grad():
        for s in progress(ctx, starts, desc="predict", total=len(starts)):
            x = images(ds, range(s, min(s + bs, len(ds))), model.device)
            out.append(torch.softmax(model.module(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.labels)), dtype=np.float32)


def select_rows(labels: np.ndarray, probs: np.ndarray, which: Which) -> np.ndarray:
    """Rows of the images to study: mistakes (top-1 differs from the label), correct ones, or all."""
    pred = probs.argmax(axis=1)
    correct = pred == np.asarray(labels)
    if which == "all":
        return np.arange(len(labels))
    if which == "incorrect":
        return np.flatnonzero(~correct)
    if which == "correct":
        return np.flatnonzero(correct)
    raise ValueError(f"unknown image selection {which!r}; choose incorrect, all or correct")


def standardize_np(raw: np.ndarray, stats: FilterStats) -> np.ndarray:
    """``(raw - mean) / std`` with dead filters (std <= 1e-14) divided by 1; float64, inputs untouched.

    Parameters
    ----------
    raw : np.ndarray, shape [..., F]
    """
    mean = stats.mean.numpy().astype(np.float64)
    std = stats.safe_std().numpy().astype(np.float64)
    return (np.asarray(raw, dtype=np.float64) - mean) / std
