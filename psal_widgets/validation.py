"""Statistics of a model's filter saliency over a validation set (``psal stats``).

:func:`compute_stats` streams the per-filter moments in float64 and, given a ``checkpoint``
folder, saves them (counts, mean, M2, the per-sample results so far and the position) every
``checkpoint_every`` batches; run again with the same model, weights, data and options it
continues from there and ends with results identical, byte for byte, to an uninterrupted run
(the batches are the same, so the float64 merges happen in the same order). A checkpoint of
another run is ignored with a message. :func:`run_stats` is the whole command: the lock on the
output folder, the checkpoint beside it, the unit write of the folder. Under ``torchrun`` it
splits the dataset over the ranks and merges their moments exactly (Chan's formula, float64;
:mod:`psal_widgets.distributed`); rank 0 writes the folder.
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
from .distributed import SINGLE, DistContext, shard_range
from .kernels.filters import FilterIndex

# A module attribute on purpose: tests interrupt a run by replacing it.
from .kernels.profiles import filter_profiles
from .kernels.stats import FilterStats, RunningMoments, merge_moments
from .models import LoadedModel
from .store import SampleResults, check_replaceable, layout_meta, save_stats
from .tolerant import Skipped, TolerantImages, report_skipped

__all__ = ["CHECKPOINT_FILE", "compute_stats", "run_stats"]

CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "psal-stats-checkpoint/1"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _run_key(model: LoadedModel, ds: LabeledImages, index: FilterIndex, *, batch_size: int,
             strategy: str, keep_profiles: bool, shard: dict[str, int] | None = None) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued: model, weights, data, options
    (and, for one rank of a torchrun run, its place: ``{"rank", "world_size"}``)."""
    digest = hashlib.sha256()
    digest.update(os.fspath(Path(ds.root).resolve()).encode())  # hashed: no absolute path on disk
    for f, y in zip(ds.relative_files(), ds.labels, strict=True):
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
        **({"shard": shard} if shard is not None else {}),
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
    key = _run_key(model, ds, index, batch_size=batch_size, strategy=strategy, keep_profiles=keep_profiles)
    ckpt = Path(checkpoint) / CHECKPOINT_FILE if checkpoint is not None else None
    state = _accumulate(model, ds, index, key=key, ckpt=ckpt, batch_size=batch_size, strategy=strategy,
                        num_workers=num_workers, progress=progress, keep_profiles=keep_profiles,
                        checkpoint_every=checkpoint_every, strict=strict, notify=notify)
    return _finish(model, ds, index, state, keep_profiles=keep_profiles)


def _accumulate(
    model: LoadedModel,
    ds: LabeledImages,
    index: FilterIndex,
    *,
    key: dict[str, Any],
    ckpt: Path | None,
    batch_size: int,
    strategy: Strategy,
    num_workers: int | None,
    progress: bool,
    keep_profiles: bool,
    checkpoint_every: int,
    strict: bool,
    notify: Callable[[str], None],
    desc: str | None = None,
) -> _Progress:
    """One pass over ``ds`` (already preprocessed as the model wants; may be empty: a rank with
    no rows): the moments and per-sample results, checkpointed into ``ckpt``."""
    files = ds.relative_files()
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
    bar = tqdm(total=len(ds), initial=start, desc=desc or f"stats {model.name}", unit="img", disable=not progress)
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
    return state


def _finish(
    model: LoadedModel,
    ds: LabeledImages,
    index: FilterIndex,
    state: _Progress,
    *,
    keep_profiles: bool,
    extra_meta: dict[str, Any] | None = None,
) -> tuple[FilterStats, SampleResults]:
    """The statistics and per-sample results of a whole pass over ``ds`` (``state`` holds the
    samples in dataset order), with their metadata."""
    files = ds.relative_files()
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
        **(extra_meta or {}),
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
    dist: DistContext = SINGLE,
) -> tuple[FilterStats, SampleResults]:
    """``psal stats``: compute the statistics of ``dataset`` into the folder ``out``, resumably.

    Holds the lock of ``out`` (a second run into it stops with a message), checkpoints into
    ``.NAME.partial`` beside it, writes the folder as a unit (:func:`~psal_widgets.store.save_stats`)
    and only then removes the checkpoint.

    Parameters
    ----------
    dist : DistContext
        The ranks of a ``torchrun`` run (:func:`~psal_widgets.distributed.init_distributed`);
        default one process. With several, each rank computes a contiguous block of the dataset
        (its checkpoint ``checkpoint-rankR-ofW.safetensors`` in the same hidden folder), the
        moments (count, mean, M2, float64) are gathered and merged with Chan's formula in rank
        order, and rank 0 alone holds the lock and writes ``out``, with the per-sample results
        and skipped images in dataset order; the others wait for it.

    Returns
    -------
    (FilterStats, SampleResults)
        The same on every rank, except that kept ``profiles`` come back on rank 0 only.

    Raises
    ------
    psal_widgets.atomic.LockedError
        Another live run writes ``out``.
    psal_widgets.distributed.DistributedError
        Another rank failed (on the ranks that did not).
    """
    target = Path(out)
    if dist.enabled:
        return _run_stats_sharded(model, dataset, target, dist=dist, batch_size=batch_size, progress=progress,
                                  keep_profiles=keep_profiles, checkpoint_every=checkpoint_every, strict=strict,
                                  num_workers=num_workers, notify=notify)
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


def _run_stats_sharded(
    model: LoadedModel,
    dataset: LabeledImages,
    target: Path,
    *,
    dist: DistContext,
    batch_size: int,
    progress: bool,
    keep_profiles: bool,
    checkpoint_every: int,
    strict: bool,
    num_workers: int | None,
    notify: Callable[[str], None],
) -> tuple[FilterStats, SampleResults]:
    """:func:`run_stats` on one rank of several (see there)."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    if batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"batch_size and checkpoint_every must be at least 1; got {batch_size}, {checkpoint_every}")
    index = FilterIndex(model.module)
    n_filters = index.n_filters
    ds = replace(dataset, preprocess=model.preprocess)
    dist.run_on_main(lambda: check_replaceable(target))  # only rank 0 writes it: its view counts
    with dist.main_holds(lambda: exclusive_lock(target, command="psal stats")):
        work = partial_dir(target)
        rows = dist.shard(len(ds))
        part = ds.subset(rows)
        key = _run_key(model, part, index, batch_size=batch_size, strategy="auto", keep_profiles=keep_profiles,
                       shard={"rank": dist.rank, "world_size": dist.world_size})
        ckpt = work / f"checkpoint-rank{dist.rank}-of{dist.world_size}.safetensors"
        desc = f"stats {model.name} (rank {dist.rank} of {dist.world_size})"
        state = dist.run_everywhere(lambda: _accumulate(
            model, part, index, key=key, ckpt=ckpt, batch_size=batch_size, strategy="auto",
            num_workers=num_workers, progress=progress, keep_profiles=keep_profiles,
            checkpoint_every=checkpoint_every, strict=strict, notify=notify, desc=desc))
        # The moments travel as float64 tensors [1 + 2F] (count, mean, M2): the merge is exact
        # to float64 rounding, whatever the backend.
        mine = torch.cat([torch.tensor([float(state.moments.n)], dtype=torch.float64),
                          state.moments.mean, state.moments.m2])
        parts = [(int(t[0].item()), t[1 : 1 + n_filters], t[1 + n_filters :]) for t in dist.all_gather_tensor(mine)]
        merged = merge_moments(parts, n_filters)

        def cat(arrays: list[np.ndarray], dtype: Any, width: int | None = None) -> np.ndarray:
            empty = np.zeros((0,) if width is None else (0, width), dtype=dtype)
            return np.concatenate(arrays).astype(dtype, copy=False) if arrays else empty

        payload = {
            "pred": cat(state.preds, np.int64),
            "prob_label": cat(state.prob_label, np.float32),
            "prob_pred": cat(state.prob_pred, np.float32),
            "profiles": cat(state.profiles, np.float16, n_filters) if keep_profiles else None,
            "skipped": [s.to_dict() for s in state.skipped],
        }
        gathered = dist.gather_objects(payload)  # rank 0 only: it alone writes
        full: list[tuple[FilterStats, SampleResults]] = []

        def write() -> tuple[FilterStats, SampleResults]:
            assert gathered is not None
            total = _Progress(n_filters)
            total.moments = merged
            for got in gathered:  # rank order: contiguous blocks, so dataset order
                total.preds.append(got["pred"])
                total.prob_label.append(got["prob_label"])
                total.prob_pred.append(got["prob_pred"])
                if keep_profiles:
                    total.profiles.append(got["profiles"])
                total.skipped += [Skipped(**d) for d in got["skipped"]]
            blocks = [shard_range(len(ds), r, dist.world_size) for r in range(dist.world_size)]
            shards = [{"rank": r, "start": blocks[r].start, "stop": blocks[r].stop, "n": parts[r][0]}
                      for r in range(dist.world_size)]
            extra = {"distributed": {"world_size": dist.world_size, "backend": dist.backend, "shards": shards}}
            stats, samples = _finish(model, ds, index, total, keep_profiles=keep_profiles, extra_meta=extra)
            save_stats(target, stats, samples=samples)
            shutil.rmtree(work, ignore_errors=True)
            full.append((stats, samples))
            return stats, replace(samples, profiles=None)  # the profiles stay on rank 0

        result = dist.run_on_main(write)
    return full[0] if full else result
