"""Statistics of a model's filter saliency over a validation set (``psal stats``).

:func:`compute_stats` streams the per-filter moments in float64 and, given a ``checkpoint``
folder, saves them (counts, mean, M2, the per-sample results so far and the position) every
``checkpoint_every`` batches; run again with the same model, weights, data and options it
continues from there and ends with results identical, byte for byte, to an uninterrupted run
(the batches are the same, so the float64 merges happen in the same order). A checkpoint of
another run is ignored with a message. :func:`run_stats` is the whole command: the lock on the
output folder, the checkpoint beside it, the unit write of the folder.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._types import Strategy
from .atomic import exclusive_lock, partial_dir
from .data import LabeledImages
from .kernels.filters import FilterIndex

# A module attribute on purpose: tests interrupt a run by replacing it.
from .kernels.profiles import filter_profiles
from .kernels.stats import FilterStats, RunningMoments
from .models import LoadedModel
from .store import SampleResults, check_replaceable, layout_meta, save_stats
from .tolerant import Skipped, TolerantImages, report_skipped

__all__ = ["CHECKPOINT_FILE", "compute_stats", "run_stats"]

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "psal-stats-checkpoint/1"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _run_key(model: LoadedModel, ds: LabeledImages, index: FilterIndex, *, batch_size: int,
             strategy: str, keep_profiles: bool) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued: model, weights, data, options."""
    digest = hashlib.sha256()
    digest.update(os.fspath(Path(ds.root).resolve()).encode())  # hashed: no absolute path on disk
    for f, y in zip(ds.relative_files(), ds.labels):
        digest.update(f"\0{f}\t{int(y)}".encode())
    return json.loads(json.dumps({
        "format": CHECKPOINT_FORMAT,
        "model": model.name,
        "weights_id": model.weights_id,
        "layout_checksum": index.checksum(),
        "preprocess": model.preprocess.to_dict(),
        "data": digest.hexdigest()[:16],
        "n": len(ds),
        "batch_size": batch_size,
        "strategy": strategy,
        "keep_profiles": keep_profiles,
    }))


class _Progress:
    """The running state of a run: what a checkpoint holds."""

    def __init__(self, n_filters: int) -> None:
        self.rows_done = 0
        self.moments = RunningMoments(n_filters)
        self.preds: list[np.ndarray] = []
        self.prob_label: list[np.ndarray] = []
        self.prob_pred: list[np.ndarray] = []
        self.profiles: list[np.ndarray] = []
        self.skipped: list[Skipped] = []

    def save(self, path: Path, key: dict[str, Any]) -> None:
        def cat(parts: list[np.ndarray], dtype: Any, width: int | None = None) -> torch.Tensor:
            empty = np.zeros((0,) if width is None else (0, width), dtype=dtype)
            return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts) if parts else empty))

        tensors = {
            "mean": self.moments.mean.contiguous(),
            "m2": self.moments.m2.contiguous(),
            "pred": cat(self.preds, np.int64),
            "prob_label": cat(self.prob_label, np.float32),
            "prob_pred": cat(self.prob_pred, np.float32),
        }
        if key["keep_profiles"]:
            tensors["profiles"] = cat(self.profiles, np.float16, self.moments.mean.shape[0])
        header = {"key": json.dumps(key, sort_keys=True), "rows_done": str(self.rows_done),
                  "count": str(self.moments.n), "skipped": json.dumps([s.to_dict() for s in self.skipped])}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # one step: a kill leaves the previous checkpoint or this one

    @classmethod
    def load(cls, path: Path, key: dict[str, Any], n_filters: int, notify: Callable[[str], None]) -> _Progress | None:
        """The checkpoint at ``path`` when it belongs to this run, else None (with a message)."""
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                header = dict(fh.metadata() or {})
            tensors = load_file(str(path))
            stored = json.loads(header["key"])
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint only costs the work
            notify(f"psal: note: the checkpoint {path} cannot be read ({err}); starting afresh")
            return None
        if stored != json.loads(json.dumps(key, sort_keys=True)):
            diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
            notify(f"psal: note: the checkpoint in {path.parent.name} belongs to another run (different "
                   f"{', '.join(diff)}); starting afresh")
            return None
        state = cls(n_filters)
        state.rows_done = int(header["rows_done"])
        state.moments.n = int(header["count"])
        state.moments.mean = tensors["mean"].to(torch.float64)
        state.moments.m2 = tensors["m2"].to(torch.float64)
        state.preds = [tensors["pred"].numpy()]
        state.prob_label = [tensors["prob_label"].numpy()]
        state.prob_pred = [tensors["prob_pred"].numpy()]
        state.profiles = [tensors["profiles"].numpy()] if "profiles" in tensors else []
        state.skipped = [Skipped(**d) for d in json.loads(header["skipped"])]
        return state


def compute_stats(
    model: LoadedModel,
    dataset: LabeledImages,
    *,
    batch_size: int = 16,
    strategy: Strategy = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    keep_profiles: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 8,
    strict: bool = False,
    notify: Callable[[str], None] = _stderr,
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
    checkpoint : path, optional
        A folder for ``checkpoint.safetensors``: continued from when it holds a checkpoint of the
        same model, weights, data and options (else ignored, with a message), and rewritten every
        ``checkpoint_every`` batches. The caller removes the folder once the results are saved.
    checkpoint_every : int
        Batches between checkpoints.
    strict : bool
        Stop at the first unreadable image. By default it is skipped with a warning and listed,
        file and reason, in ``meta["skipped"]``; ``n`` and the samples count readable images only.
    notify : callable
        Receives the one-line messages (resuming, a checkpoint ignored); default: stderr.

    Returns
    -------
    (FilterStats, SampleResults)
        ``mean``/``std`` of shape [F] with provenance metadata; per-sample prediction,
        probability of the label and of the prediction.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"batch_size and checkpoint_every must be at least 1; got {batch_size}, {checkpoint_every}")
    index = FilterIndex(model.module)
    ds = replace(dataset, preprocess=model.preprocess)
    files = ds.relative_files()
    key = _run_key(model, ds, index, batch_size=batch_size, strategy=strategy, keep_profiles=keep_profiles)
    ckpt = Path(checkpoint) / CHECKPOINT_FILE if checkpoint is not None else None
    state = _Progress.load(ckpt, key, index.n_filters, notify) if ckpt is not None else None
    if state is None:
        state = _Progress(index.n_filters)
    elif state.rows_done:
        notify(f"psal: resuming from the checkpoint at image {state.rows_done} of {len(ds)}")
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    workers = 1 if num_workers is None else num_workers
    cuda = model.device.type == "cuda"
    start = state.rows_done
    # Decoding the next batches overlaps with this one's compute; pinned memory only helps a GPU copy.
    loader = DataLoader(TolerantImages(ds.subset(range(start, len(ds)))), batch_size=batch_size,
                        num_workers=workers if start < len(ds) else 0, shuffle=False, pin_memory=cuda)
    bar = tqdm(total=len(ds), initial=start, desc=f"stats {model.name}", unit="img", disable=not progress)
    batches = 0
    try:
        for images, labels, reasons in loader:
            good = [j for j, r in enumerate(reasons) if not r]
            for j, r in enumerate(reasons):
                if r:
                    state.skipped.append(Skipped(files[state.rows_done + j], r))
                    report_skipped(state.skipped[-1], strict=strict, command="psal stats", bar=bar)
            if good:
                images, labels = images[good].to(model.device, non_blocking=cuda), labels[good]
                batch = filter_profiles(model.module, images, labels, index=index, mode="raw", strategy=strategy)
                state.moments.update(batch.raw)
                if keep_profiles:
                    state.profiles.append(batch.raw.to(device="cpu", dtype=torch.float16).numpy())
                probs = torch.softmax(batch.logits.float(), dim=1).cpu()
                top = probs.max(dim=1)
                state.preds.append(top.indices.numpy())
                state.prob_pred.append(top.values.numpy())
                state.prob_label.append(probs.gather(1, labels.view(-1, 1)).squeeze(1).numpy())
            state.rows_done += len(reasons)
            bar.update(len(reasons))
            batches += 1
            if ckpt is not None and batches % checkpoint_every == 0:
                state.save(ckpt, key)
        if ckpt is not None and batches % checkpoint_every:
            state.save(ckpt, key)  # the whole pass: a crash while saving the results costs no compute
    finally:
        bar.close()
    moments = state.moments
    if moments.n == 0:
        raise ValueError(f"none of the {len(ds)} images of {ds.description} could be read "
                         f"(e.g. {state.skipped[0].file}: {state.skipped[0].reason})")
    dropped = {s.file for s in state.skipped}
    keep = [i for i, f in enumerate(files) if f not in dropped]
    samples = SampleResults(
        label=np.asarray([ds.labels[i] for i in keep], dtype=np.int64),
        pred=np.concatenate(state.preds).astype(np.int64),
        prob_label=np.concatenate(state.prob_label).astype(np.float32),
        prob_pred=np.concatenate(state.prob_pred).astype(np.float32),
        files=[files[i] for i in keep],
        profiles=np.concatenate(state.profiles) if keep_profiles else None,
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
        "skipped": [s.to_dict() for s in state.skipped],
    }
    return FilterStats(moments.mean.clone(), moments.std(), meta), samples


def run_stats(
    model: LoadedModel,
    dataset: LabeledImages,
    out: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    progress: bool = True,
    keep_profiles: bool = False,
    checkpoint_every: int = 8,
    strict: bool = False,
    num_workers: int | None = None,
    notify: Callable[[str], None] = _stderr,
) -> tuple[FilterStats, SampleResults]:
    """``psal stats``: compute the statistics of ``dataset`` into the folder ``out``, resumably.

    Holds the lock of ``out`` (a second run into it stops with a message), checkpoints into
    ``.NAME.partial`` beside it, writes the folder as a unit (:func:`~psal_widgets.store.save_stats`)
    and only then removes the checkpoint.

    Raises
    ------
    psal_widgets.atomic.LockedError
        Another live run writes ``out``.
    """
    target = Path(out)
    check_replaceable(target)  # before the work, not after it
    with exclusive_lock(target, command="psal stats"):
        work = partial_dir(target)
        stats, samples = compute_stats(model, dataset, batch_size=batch_size, progress=progress,
                                       keep_profiles=keep_profiles, checkpoint=work,
                                       checkpoint_every=checkpoint_every, strict=strict,
                                       num_workers=num_workers, notify=notify)
        save_stats(target, stats, samples=samples)
        shutil.rmtree(work, ignore_errors=True)
    return stats, samples
