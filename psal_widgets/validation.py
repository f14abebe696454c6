"""Statistics of a model's filter saliency over a validation set (``psal stats``)."""
from __future__ import annotations

import datetime as _dt
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._types import Strategy
from .data import LabeledImages
from .kernels.filters import FilterIndex
from .kernels.profiles import filter_profiles
from .kernels.stats import FilterStats, RunningMoments
from .models import LoadedModel
from .store import SampleResults, layout_meta

__all__ = ["compute_stats"]


def compute_stats(
    model: LoadedModel,
    dataset: LabeledImages,
    *,
    batch_size: int = 16,
    strategy: Strategy = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    keep_profiles: bool = False,
) -> tuple[FilterStats, SampleResults]:
    """Per-filter mean and std of the raw profile over ``dataset``, streamed in float64.

    Parameters
    ----------
    model : LoadedModel
    dataset : LabeledImages
        Its ``preprocess`` is replaced by the model's (statistics depend on it).
    batch_size : int
        Images per step; memory stays O(F) whatever the dataset size...
    strategy : {"auto", "loop", "vmap", "hooks"}
        Per-sample gradient path of :func:`filter_profiles`; ``auto`` is the fastest exact one.
    num_workers : int, optional
        Processes that read and decode images while the model computes; ``None``: one (measured
        faster than decoding in-process on a 2-core CPU, docs/benchmarks.md), ``0``: in-process.
    keep_profiles : bool
        ...unless the raw profiles are kept too (float16, [n, F]) for nearest-neighbour search;
        they come back as ``samples.profiles``.

    Returns
    -------
    (FilterStats, SampleResults)
        ``mean``/``std`` of shape [F] with provenance metadata; per-sample prediction,
        probability of the label and of the prediction.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    index = FilterIndex(model.module)
    ds = replace(dataset, preprocess=model.preprocess)
    workers = 1 if num_workers is None else num_workers
    cuda = model.device.type == "cuda"
    # Decoding the next batches overlaps with this one's compute; pinned memory only helps a GPU copy.
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False, pin_memory=cuda)
    moments = RunningMoments(index.n_filters)
    preds, prob_label, prob_pred, kept = [], [], [], []
    bar = tqdm(total=len(ds), desc=f"stats {model.name}", unit="img", disable=not progress)
    for images, labels in loader:
        images = images.to(model.device, non_blocking=cuda)
        batch = filter_profiles(model.module, images, labels, index=index, mode="raw", strategy=strategy)
        moments.update(batch.raw)
        if keep_profiles:
            kept.append(batch.raw.to(device="cpu", dtype=torch.float16))
        probs = torch.softmax(batch.logits.float(), dim=1).cpu()
        top = probs.max(dim=1)
        preds.append(top.indices.numpy())
        prob_pred.append(top.values.numpy())
        prob_label.append(probs.gather(1, labels.view(-1, 1)).squeeze(1).numpy())
        bar.update(images.shape[0])
    bar.close()
    samples = SampleResults(
        label=np.asarray(ds.labels, dtype=np.int64),
        pred=np.concatenate(preds).astype(np.int64),
        prob_label=np.concatenate(prob_label).astype(np.float32),
        prob_pred=np.concatenate(prob_pred).astype(np.float32),
        files=ds.relative_files(),
        profiles=torch.cat(kept).numpy() if keep_profiles else None,
    )
    meta = {
        "model": model.name,
        "weights_id": model.weights_id,
        "preprocess": model.preprocess.to_dict(),
        "layout": layout_meta(index),
        "n": moments.n,
        "dataset": ds.description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "std_ddof": 1,
        "dead_filters": int((moments.std() <= 1e-14).sum()),
        "accuracy": float(np.mean(samples.correct)),
    }
    return FilterStats(moments.mean.clone(), moments.std(), meta), samples
