"""Building a profile index (``psal index``): :func:`build_index`, resumable, single or sharded.

One process computes every image's raw profile, prediction and features into a hidden
``.NAME.partial`` folder, checkpoints it (``progress.json``) so that the same command run again
continues, and renames it into place; under ``torchrun`` each rank builds its shard and rank 0
writes ``manifest.json`` (formats in :mod:`psal_widgets.index`). Reads back through
:class:`~psal_widgets.index.reader.ProfileIndex`.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import exclusive_lock, file_records, partial_dir, sha256_file, swap_into_place
from ..atomic import write_text_atomic as _write_atomic
from ..distributed import SINGLE, DistContext

# A module attribute on purpose: tests interrupt a build by replacing it.
from ..kernels.profiles import filter_profiles, tap_in_profile_pass
from .common import (
    _COLUMNS,
    _TABLE_FIELDS,
    FEATURES_FILE,
    INDEX_FORMAT,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    META_FILE,
    PROFILES_FILE,
    PROGRESS_FILE,
    SHARD_PREFIX,
    TABLE_FILE,
    IndexError_,
    _files_hash,
    _first_readable,
    _model_key,
    _NothingReadable,
    _root_hash,
    is_index_folder,
)
from .reader import ProfileIndex, _fmt

if TYPE_CHECKING:
    from ..data import LabeledImages
    from ..models import LoadedModel


def build_index(
    model: LoadedModel,
    dataset: LabeledImages,
    out: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    progress: bool = True,
    checkpoint_every: int = 4,
    num_workers: int = 0,
    overwrite: bool = False,
    strict: bool = False,
    dist: DistContext = SINGLE,
) -> ProfileIndex:
    """Compute the profile index of ``dataset`` into the folder ``out`` (resumable).

    Parameters
    ----------
    model : LoadedModel
        Used in eval mode; its parameters and any statistics are never modified.
    dataset : LabeledImages
        Its ``preprocess`` is replaced by the model's.
    out : path
        The index folder; built in ``.NAME.partial`` beside it and renamed into place.
    batch_size : int
        Images per step (the profile kernel's batch).
    progress : bool
        A tqdm bar (closed before anything else prints).
    checkpoint_every : int
        Batches between checkpoints (flushed arrays + ``progress.json``).
    num_workers : int
        DataLoader workers decoding images in parallel with the compute.
    overwrite : bool
        Rebuild even when ``out`` already holds a complete index of the same model and data.
    strict : bool
        Stop at the first image that cannot be read (:class:`~psal_widgets.data.ImageError`).
        By default such an image is skipped with a warning and recorded, file and reason, in
        ``meta.json["skipped"]``; the index then has one row per readable image (``n`` of them),
        and :meth:`ProfileIndex.usable` gives the dataset without the skipped files.
    dist : DistContext
        The ranks of a ``torchrun`` run (:func:`~psal_widgets.distributed.init_distributed`);
        default one process, which writes the single-folder format. With several, each rank
        builds ``shard-RRRR/`` (this format, over its contiguous block of the dataset; resumable
        like a single build) inside ``.NAME.partial``, and rank 0, holding the lock of ``out``,
        writes ``manifest.json`` once every shard is complete and renames the folder into place
        (see :mod:`psal_widgets.index`). ``out`` must be on a file system that every rank sees.

    Returns
    -------
    ProfileIndex
        ``build_info`` says ``{"status": "built" | "resumed" | "up to date", "resumed_from",
        "rows_computed", "seconds"}``. Under torchrun: the whole index, on every rank.
    """
    from ..kernels.filters import FilterIndex
    from ..store import layout_meta

    if len(dataset) == 0:
        raise IndexError_("the dataset is empty")
    if batch_size < 1 or checkpoint_every < 1:
        raise IndexError_(f"batch_size and checkpoint_every must be at least 1; got {batch_size}, {checkpoint_every}")
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise IndexError_(f"--out {target} is a file, not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    ds = replace(dataset, preprocess=model.preprocess)
    files, labels = ds.relative_files(), [int(v) for v in ds.labels]
    findex = FilterIndex(model.module)
    key = {
        "format": INDEX_FORMAT,
        **_model_key(model, findex.checksum()),
        "n": len(ds),
        "files_hash": _files_hash(files, labels),
        "root_hash": _root_hash(ds.root),
    }
    if dist.enabled:
        return _build_sharded(model, ds, target, key, dist=dist, batch_size=batch_size, progress=progress,
                              checkpoint_every=checkpoint_every, num_workers=num_workers, overwrite=overwrite,
                              strict=strict)
    if not overwrite and is_index_folder(target):
        with contextlib.suppress(IndexError_):
            existing = ProfileIndex.open(target)
            # "n" counts readable images only; the files hash already pins the whole dataset.
            if all(existing.meta.get(k) == v for k, v in key.items() if k != "n"):
                existing.build_info = {"status": "up to date", "resumed_from": len(ds), "rows_computed": 0,
                                       "seconds": 0.0}
                return existing
    with exclusive_lock(target, command="psal index"):
        return _build_locked(model, ds, target, key, findex, layout_meta(findex), files, labels,
                             batch_size=batch_size, progress=progress, checkpoint_every=checkpoint_every,
                             num_workers=num_workers, strict=strict)


def _build_locked(
    model: LoadedModel,
    ds: LabeledImages,
    target: Path,
    key: dict[str, Any],
    findex: Any,
    layout: dict[str, Any],
    files: list[str],
    labels: list[int],
    *,
    batch_size: int,
    progress: bool,
    checkpoint_every: int,
    num_workers: int,
    strict: bool,
) -> ProfileIndex:
    import torch
    import torch.nn.functional as F
    from numpy.lib.format import open_memmap
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .. import __version__
    from ..kernels.features import FeatureTap, find_classifier
    from ..tolerant import Skipped, TolerantImages, report_skipped

    t0 = time.perf_counter()
    n, n_filters = len(ds), findex.n_filters
    tmp = partial_dir(target)
    state = _read_progress(tmp, key)
    if state is None:
        if tmp.exists():
            shutil.rmtree(tmp)  # another model/data, or a build that never reached its first checkpoint
        tmp.mkdir(parents=True)
        first = _first_readable(ds)
        layer = find_classifier(model.module, first.to(model.device))
        dim = None
        if layer is not None:
            tap = FeatureTap(model.module, layer)
            with torch.no_grad(), tap.tap():
                model.module(first.unsqueeze(0).to(model.device))
            dim = int(tap.take().shape[1])
        state = {"key": key, "rows_done": 0, "feature_layer": layer, "feature_dim": dim, "skipped": []}
        open_memmap(tmp / PROFILES_FILE, mode="w+", dtype=np.float16, shape=(n, n_filters)).flush()
        if dim is not None:
            open_memmap(tmp / FEATURES_FILE, mode="w+", dtype=np.float16, shape=(n, dim)).flush()
        for name, (dtype, width) in _COLUMNS.items():
            shape = (n,) if width is None else (n, width)
            open_memmap(tmp / f"_{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
        _write_atomic(tmp / PROGRESS_FILE, json.dumps(state))
    start = int(state["rows_done"])
    layer, dim = state["feature_layer"], state["feature_dim"]
    skipped = [Skipped(**d) for d in state.get("skipped", [])]
    profiles = np.load(tmp / PROFILES_FILE, mmap_mode="r+")
    features = np.load(tmp / FEATURES_FILE, mmap_mode="r+") if dim is not None else None
    columns = {name: np.load(tmp / f"_{name}.npy", mmap_mode="r+") for name in _COLUMNS}

    # The arrays are passed in, not closed over: the finish deletes them (closing the memmaps).
    def checkpoint(rows_done: int, arrays: tuple[np.ndarray | None, ...]) -> None:
        for arr in arrays:
            if arr is not None:
                arr.flush()
        _write_atomic(tmp / PROGRESS_FILE, json.dumps({**state, "rows_done": rows_done,
                                                        "skipped": [k.to_dict() for k in skipped]}))

    # The profiles take the same path as `psal stats` (`auto`: one batched forward and backward
    # with per-sample gradients from hooks where every conv allows it, else the per-image loop on
    # CPU or vmap elsewhere), and the features come from that same forward when it ran as plain
    # module calls (hooks, loop): one row per image. Otherwise (vmap, or a fallback found midway)
    # they take one extra no-grad forward.
    tap_inline = tap_in_profile_pass(model.module, findex, model.device)
    tap = FeatureTap(model.module, layer) if layer is not None else None
    rest = TolerantImages(ds.subset(range(start, n)))
    loader = DataLoader(rest, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    bar = tqdm(total=n, initial=start, desc=f"index {model.name}", unit="img", disable=not progress)
    row, batches = start, 0
    try:
        for images, y, reasons in loader:
            bad = [j for j, r in enumerate(reasons) if r]
            for j in bad:
                skipped.append(Skipped(files[row + j], reasons[j]))
                report_skipped(skipped[-1], strict=strict, command="psal index", bar=bar)
            good = [j for j, r in enumerate(reasons) if not r]
            if not good:  # nothing readable in this batch: its rows stay zero and are dropped at the end
                row += len(reasons)
                batches += 1
                bar.update(len(reasons))
                if batches % checkpoint_every == 0:
                    checkpoint(row, (profiles, features, *columns.values()))
                continue
            at = np.asarray(good, dtype=np.int64) + row  # rows of the readable images
            images, y = images[good].to(model.device), y[good]
            ctx = tap.tap() if (tap is not None and tap_inline) else contextlib.nullcontext()
            with ctx:
                batch = filter_profiles(model.module, images, y, index=findex, mode="raw", strategy="auto")
            if tap is not None:
                feats = tap.take() if tap_inline else None
                if feats is None or feats.shape[0] != len(good):
                    with torch.no_grad(), tap.tap():
                        model.module(images)
                    feats = tap.take()
            b = len(reasons)
            logits = batch.logits.float().cpu()
            probs = torch.softmax(logits, dim=1)
            top = probs.topk(min(5, probs.shape[1]), dim=1)
            top_idx = np.full((len(good), 5), -1, dtype=np.int64)
            top_p = np.zeros((len(good), 5), dtype=np.float32)
            top_idx[:, : top.indices.shape[1]] = top.indices.numpy()
            top_p[:, : top.values.shape[1]] = top.values.numpy()
            profiles[at] = batch.raw.to(device="cpu", dtype=torch.float16).numpy()
            if features is not None:
                features[at] = feats.to(torch.float16).numpy()
            columns["top5"][at] = top_idx
            columns["top5_prob"][at] = top_p
            columns["loss"][at] = F.cross_entropy(logits, y.long(), reduction="none").numpy()
            row += b
            batches += 1
            bar.update(b)
            if batches % checkpoint_every == 0:
                checkpoint(row, (profiles, features, *columns.values()))
        checkpoint(row, (profiles, features, *columns.values()))
    finally:
        bar.close()
    # Finish: drop the rows of skipped images, the table, the metadata with checksums, one rename.
    dropped = {k.file for k in skipped}
    keep = np.array([f not in dropped for f in files], dtype=bool)
    top5, top5_prob, loss = (np.array(columns[k])[keep] for k in ("top5", "top5_prob", "loss"))
    if not keep.all():
        if not keep.any():
            raise _NothingReadable(f"none of the {n} images of {ds.description} could be read "
                                   f"(e.g. {skipped[0].file}: {skipped[0].reason})", [k.to_dict() for k in skipped])
        for name, arr in ((PROFILES_FILE, profiles), (FEATURES_FILE, features)):
            if arr is not None:
                np.save(tmp / f"_compact_{name}", np.asarray(arr[keep]))
        del profiles, features
        for name in (PROFILES_FILE, FEATURES_FILE):
            if (tmp / f"_compact_{name}").exists():
                os.replace(tmp / f"_compact_{name}", tmp / name)
        profiles = features = None
        files = [f for f, k in zip(files, keep, strict=True) if k]
        labels = [v for v, k in zip(labels, keep, strict=True) if k]
        n = len(files)
    pred = top5[:, 0]
    names = model.labels.names
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_TABLE_FIELDS)
    for i in range(n):
        w.writerow([files[i], labels[i], int(pred[i]), int(pred[i] == labels[i]), _fmt(loss[i]),
                    *(int(v) for v in top5[i]), *(_fmt(v) for v in top5_prob[i]),
                    names[labels[i]] if 0 <= labels[i] < len(names) else "",
                    names[pred[i]] if 0 <= pred[i] < len(names) else ""])
    (tmp / TABLE_FILE).write_text(buf.getvalue(), encoding="utf-8")
    del profiles, features, columns
    for name in _COLUMNS:
        (tmp / f"_{name}.npy").unlink()
    kept = [PROFILES_FILE, TABLE_FILE] + ([FEATURES_FILE] if dim is not None else [])
    correct = pred == np.asarray(labels)
    meta = {
        **key,
        "layout": layout,
        "n_filters": n_filters,
        "profile_dtype": "float16",
        "profile_mode": "raw (mean |dL/dθ| per filter, loss against the label)",
        "feature_layer": layer,
        "feature_dim": dim,
        "dataset": ds.description,
        "accuracy": float(correct.mean()),
        "n_incorrect": int((~correct).sum()),
        "device": str(model.device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "n": n,
        "skipped": [k.to_dict() for k in skipped],
        "files": file_records(tmp, kept),
    }
    _write_atomic(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
    (tmp / PROGRESS_FILE).unlink()
    swap_into_place(tmp, target)
    idx = ProfileIndex.open(target)
    idx.build_info = {"status": "resumed" if start else "built", "resumed_from": start,
                      "rows_computed": len(ds) - start, "seconds": time.perf_counter() - t0,
                      "skipped": len(skipped)}
    return idx


def _shard_name(rank: int) -> str:
    return f"{SHARD_PREFIX}{rank:04d}"


def _build_sharded(
    model: LoadedModel,
    ds: LabeledImages,
    target: Path,
    key: dict[str, Any],
    *,
    dist: DistContext,
    batch_size: int,
    progress: bool,
    checkpoint_every: int,
    num_workers: int,
    overwrite: bool,
    strict: bool,
) -> ProfileIndex:
    """:func:`build_index` on one rank of several: this rank's shard, then rank 0's manifest."""
    from ..tolerant import Skipped, report_skipped

    t0 = time.perf_counter()
    n, world, rank = len(ds), dist.world_size, dist.rank
    names = [_shard_name(r) for r in range(world)]

    def up_to_date() -> bool:
        if overwrite or not is_index_folder(target):
            return False
        try:
            existing = ProfileIndex.open(target)
        except IndexError_:
            return False
        return all(existing.meta.get(k) == v for k, v in key.items() if k != "n")

    if dist.run_on_main(up_to_date):  # rank 0 decides, so that all ranks take the same branch
        idx = dist.run_everywhere(lambda: ProfileIndex.open(target))
        idx.build_info = {"status": "up to date", "resumed_from": n, "rows_computed": 0, "seconds": 0.0}
        return idx
    work = partial_dir(target)

    @contextlib.contextmanager
    def lock_and_prepare() -> Any:
        with exclusive_lock(target, command="psal index"):
            # Whatever a run of another world size or a single-process run left here cannot be
            # continued by these shards (their own leftovers are checked by their own builds).
            work.mkdir(parents=True, exist_ok=True)
            wanted = set(names) | {f".{name}.partial" for name in names}
            for entry in work.iterdir():
                if entry.name not in wanted:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            yield

    with dist.main_holds(lock_and_prepare):
        rows = dist.shard(n)
        part = replace(ds.subset(rows), description=f"{ds.description}, rows {rows.start}-{rows.stop - 1} "
                                                    f"(rank {rank} of {world})")

        def build_mine() -> dict[str, Any]:
            report: dict[str, Any] = {"folder": None, "rank": rank, "start": rows.start, "stop": rows.stop,
                                      "n": 0, "skipped": [], "info": {"resumed_from": 0, "rows_computed": len(part)}}
            if not len(part):
                return report  # fewer images than ranks
            try:
                shard = build_index(model, part, work / names[rank], batch_size=batch_size, progress=progress,
                                    checkpoint_every=checkpoint_every, num_workers=num_workers, strict=strict)
            except _NothingReadable as err:
                # Not fatal for one block: the other blocks may hold readable images.
                if strict and err.skipped:
                    report_skipped(Skipped(**err.skipped[0]), strict=True, command="psal index")
                report["skipped"] = err.skipped
                return report
            report.update(folder=names[rank], n=len(shard), skipped=shard.skipped, info=shard.build_info)
            return report

        reports = dist.all_gather_objects(dist.run_everywhere(build_mine))

        def finish() -> None:
            _write_manifest(model, ds, work, key, reports, world)
            swap_into_place(work, target)

        dist.run_on_main(finish)
    idx = dist.run_everywhere(lambda: ProfileIndex.open(target))
    infos = [r["info"] for r in reports]
    resumed_from = sum(int(i.get("resumed_from", 0)) for i in infos)
    idx.build_info = {"status": "resumed" if resumed_from else "built", "resumed_from": resumed_from,
                      "rows_computed": sum(int(i.get("rows_computed", 0)) for i in infos),
                      "seconds": time.perf_counter() - t0, "skipped": len(idx.skipped)}
    return idx


def _write_manifest(
    model: LoadedModel,
    ds: LabeledImages,
    work: Path,
    key: dict[str, Any],
    reports: list[dict[str, Any]],
    world: int,
) -> None:
    """Rank 0, every shard complete: check them, write ``manifest.json``, drop any leftover."""
    from .. import __version__

    skipped = [d for r in reports for d in r["skipped"]]
    metas = {r["folder"]: json.loads((work / r["folder"] / META_FILE).read_text()) for r in reports if r["folder"]}
    if not metas:
        e = skipped[0] if skipped else {"file": "?", "reason": "?"}
        raise IndexError_(f"none of the {len(ds)} images of {ds.description} could be read "
                          f"(e.g. {e['file']}: {e['reason']})")
    first = next(iter(metas.values()))
    same = ("layout", "n_filters", "feature_layer", "feature_dim", "profile_dtype", "profile_mode")
    for name, m in metas.items():
        if any(m.get(k) != first.get(k) for k in same) or any(m.get(k) != key[k] for k in
                                                              ("model", "weights_id", "layout_checksum", "preprocess")):
            raise IndexError_(f"the shards of {work} disagree ({name}): were the ranks given the same model?")
    rows = sum(int(m["n"]) for m in metas.values())
    wrong = sum(int(m["n_incorrect"]) for m in metas.values())
    shards = [{"folder": r["folder"], "rank": r["rank"], "start": r["start"], "stop": r["stop"], "n": r["n"],
               "meta_sha256": sha256_file(work / r["folder"] / META_FILE) if r["folder"] else None} for r in reports]
    index_meta = {
        **key,
        **{k: first.get(k) for k in same},
        "dataset": ds.description,
        "accuracy": (rows - wrong) / rows,
        "n_incorrect": wrong,
        "device": str(model.device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "n": rows,
        "skipped": skipped,
    }
    manifest = {"format": MANIFEST_FORMAT, "index": index_meta, "world_size": world, "shards": shards}
    keep = {MANIFEST_FILE} | set(metas)
    for entry in work.iterdir():  # e.g. the empty .partial folder of a block with nothing readable
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    _write_atomic(work / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def _read_progress(tmp: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint of an unfinished build of the same model and data, or None."""
    try:
        state = json.loads((tmp / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("key") != key:
        return None
    needed = [PROFILES_FILE, *(f"_{k}.npy" for k in _COLUMNS)] + ([FEATURES_FILE] if state.get("feature_dim") else [])
    if not all((tmp / f).is_file() for f in needed):
        return None
    return state
