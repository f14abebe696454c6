"""The profile index (``psal index``): every image's raw profile, prediction and features, on disk.

An index folder holds

- ``profiles.npy``: raw profiles (mean |∂L/∂θ| per filter, loss against the TRUE label),
  float16 [N, F], memory-mappable (float16 quantizes at ≈ 2e-4·σ);
- ``features.npy``: the input of the classifier's final linear layer, float16 [N, D] (absent
  when the model has no linear classifier);
- ``table.csv``: one row per image: ``file`` (relative to the dataset root), ``label``,
  ``pred``, ``correct``, ``loss`` (cross-entropy against the label), ``top1..top5`` and
  ``prob1..prob5`` (softmax), ``label_name``, ``pred_name``;
- ``meta.json``: model, weights checksum, preprocessing, filter layout, n, dataset, created,
  package version, the size and sha256 of every file, and ``skipped``: the images that could
  not be read (``{"file", "reason"}``; they have no row, see :meth:`ProfileIndex.usable`).

It is computed WITHOUT statistics, so it can be built on held-out data and standardized later
against any statistics of the same model (:meth:`ProfileIndex.standardized`).

Built by several processes (``torchrun ... -m psal_widgets.cli index``, :mod:`psal_widgets.distributed`),
an index is a folder of shards: ``shard-0000/``, ``shard-0001/``... each an index of the format
above over one rank's contiguous block of the dataset (skipped images of that block in its own
``meta.json``), and ``manifest.json`` (format ``psal-profile-index-shards/1``): the whole
index's metadata under ``"index"`` (the keys of a single ``meta.json``, except ``files``: model,
weights, layout, n, files and root hashes of the whole dataset, accuracy, ``skipped``...),
``world_size``, and ``shards``: for each, its ``folder``, ``rank``, dataset rows ``start``/``stop``,
row count ``n`` and the ``meta_sha256`` of its ``meta.json`` (which holds the checksums of its
files). A block with no readable image has ``folder`` null. :meth:`ProfileIndex.open` reads
such a folder as one index, rows in dataset order (:attr:`ProfileIndex.raw` is then a
:class:`~psal_widgets.sharded_rows.ShardedRows` over the shards' memmaps).

Reliability: the build writes into a hidden temporary folder next to the target
(``.NAME.partial``) and renames it into place at the end, so a half-written index is never read
as complete. Every ``checkpoint_every`` batches it flushes the arrays and records the rows done
in ``progress.json`` (written atomically); the same command run again continues from there and
finishes with files identical, byte for byte, to an uninterrupted run (each image's profile is
computed on its own, so batch boundaries do not matter). A lock file stops two builds of the
same folder from interleaving (:mod:`psal_widgets.atomic`, shared with ``psal stats``). Readers
check that row counts and file sizes agree with the metadata (``verify=True`` also checks the
sha256). An image that cannot be read is skipped with a warning and recorded (``strict=True``
stops instead).

>>> idx = ProfileIndex.open("psal_out/index")
>>> z = idx.standardized(explainer.stats)            # float32 [N, F]
>>> wrong = np.flatnonzero(~idx.correct)
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .atomic import check_files, exclusive_lock, file_records, partial_dir, sha256_file, swap_into_place
from .atomic import write_text_atomic as _write_atomic
from .distributed import SINGLE, DistContext

# A module attribute on purpose: tests interrupt a build by replacing it.
from .kernels.profiles import filter_profiles, tap_in_profile_pass

if TYPE_CHECKING:
    from .data import LabeledImages
    from .explainer import Explainer
    from .kernels.stats import FilterStats
    from .models import LoadedModel

__all__ = ["INDEX_FORMAT", "MANIFEST_FORMAT", "IndexError_", "ProfileIndex", "build_index", "default_index_dir",
           "index_for", "is_index_folder"]

INDEX_FORMAT = "psal-profile-index/1"
PROFILES_FILE = "profiles.npy"
FEATURES_FILE = "features.npy"
TABLE_FILE = "table.csv"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "psal-profile-index-shards/1"
#: Shard folders of a sharded index: ``shard-0000`` ... (the rank, four digits or more).
SHARD_PREFIX = "shard-"
# Working columns of a build in progress; turned into table.csv at the end.
_COLUMNS = {"top5": (np.int64, 5), "top5_prob": (np.float32, 5), "loss": (np.float32, None)}
_TABLE_FIELDS = ["file", "label", "pred", "correct", "loss", *(f"top{i}" for i in range(1, 6)),
                 *(f"prob{i}" for i in range(1, 6)), "label_name", "pred_name"]


class IndexError_(ValueError):
    """A profile index is missing, damaged, or belongs to another model or dataset; the message
    says the fix. (Named with a trailing underscore so it never shadows the builtin.)"""


class _NothingReadable(IndexError_):
    """No image of the data could be read; ``skipped`` lists them (a shard may be left empty)."""

    def __init__(self, message: str, skipped: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.skipped = skipped


def is_index_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a complete profile index, single (``meta.json``) or sharded
    (``manifest.json``); its files are not checked here (:meth:`ProfileIndex.open` does)."""
    f = Path(folder)
    return (f / META_FILE).is_file() or (f / MANIFEST_FILE).is_file()


# -- helpers -----------------------------------------------------------------------------------
def _short_hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for p in parts:
        digest.update(p.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _files_hash(files: Sequence[str], labels: Sequence[int]) -> str:
    return _short_hash(*(f"{f}\t{int(v)}" for f, v in zip(files, labels)))


def _root_hash(root: Path) -> str:
    # A hash, not the path: metadata carries no absolute path of this machine.
    return _short_hash(str(Path(root).resolve()))


def _safe_name(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _first_readable(ds: LabeledImages) -> Any:
    """The first image of ``ds`` that can be read (preprocessed), to probe the model's classifier."""
    from .tolerant import TolerantImages

    items = TolerantImages(ds)
    skipped = []
    for i in range(len(ds)):
        image, _, reason = items[i]
        if not reason:
            return image
        skipped.append({"file": items.relative[i], "reason": reason})
    raise _NothingReadable(f"none of the {len(ds)} images of {ds.description} could be read", skipped)


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so that keys compare equal."""
    return json.loads(json.dumps(value))


def _model_key(model: LoadedModel, layout_checksum: str) -> dict[str, Any]:
    return _json({
        "model": model.name,
        "weights_id": model.weights_id,
        "layout_checksum": layout_checksum,
        "preprocess": model.preprocess.to_dict(),
    })


# -- the reader --------------------------------------------------------------------------------
class ProfileIndex:
    """A profile index on disk (see the module docstring), opened with :meth:`open`.

    Attributes
    ----------
    path : Path
    meta : dict
    files : list of str, length N
        Paths relative to the dataset root, ``/``-separated.
    label, pred : np.ndarray of int64, shape [N]
    top5 : np.ndarray of int64, shape [N, 5]
    top5_prob : np.ndarray of float32, shape [N, 5]
    correct : np.ndarray of bool, shape [N]
    loss : np.ndarray of float32, shape [N]
        Cross-entropy of the logits against ``label``.
    raw : np.ndarray of float16, shape [N, F]
        Raw profiles; a read-only memmap (an in-memory copy for a :meth:`subset`).
    features : np.ndarray of float16, shape [N, D], or None
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        table: dict[str, np.ndarray],
        files: list[str],
        raw: np.ndarray,
        features: np.ndarray | None,
        rows: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self._raw_base = raw
        self._features_base = features
        #: Rows of the files on disk that this (sub)index shows; None: all, in order.
        self.base_rows = rows
        self.files = files
        self.label = table["label"]
        self.pred = table["pred"]
        self.top5 = table["top5"]
        self.top5_prob = table["top5_prob"]
        self.correct = table["correct"]
        self.loss = table["loss"]
        #: Filled by :func:`build_index`: what the last build did (rows computed, resumed from...).
        self.build_info: dict[str, Any] = {}
        #: The shards of a sharded index (each a ProfileIndex of its folder), in dataset order;
        #: empty for a single index.
        self.shards: list[ProfileIndex] = []

    # construction ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = False) -> ProfileIndex:
        """Open an index folder read-only.

        Parameters
        ----------
        path : path
        verify : bool
            Also compare every file's sha256 with the metadata (reads every byte).

        Raises
        ------
        IndexError_
            Missing or unreadable files, or files whose row counts, shapes, sizes (or checksums)
            disagree with each other or with ``meta.json``.
        """
        folder = Path(path)
        meta_path = folder / META_FILE
        if not meta_path.is_file() and (folder / MANIFEST_FILE).is_file():
            return cls._open_sharded(folder, verify=verify)
        if not meta_path.is_file():
            partial = partial_dir(folder)
            hint = (" (an unfinished build is in progress or was interrupted: run the same "
                    "`psal index` command again to finish it)") if partial.is_dir() else ""
            raise IndexError_(f"no profile index at {folder}{hint}; build one with `psal index --data DATA --out DIR`")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise IndexError_(f"cannot read {meta_path}: {err}") from err
        if meta.get("format") != INDEX_FORMAT:
            raise IndexError_(
                f"{folder} is not a profile index of format {INDEX_FORMAT} (found {meta.get('format')!r})"
            )
        n = int(meta["n"])
        recorded = meta.get("files", {})
        problem = check_files(folder, recorded, sha=verify)
        if problem is not None:
            state = "incomplete" if problem.endswith("is missing") else "damaged"
            raise IndexError_(f"the index at {folder} is {state}: {problem}; rebuild it with `psal index`")
        try:
            raw = np.load(folder / PROFILES_FILE, mmap_mode="r")
            features = np.load(folder / FEATURES_FILE, mmap_mode="r") if FEATURES_FILE in recorded else None
            files, table = _read_table(folder / TABLE_FILE)
        except (OSError, ValueError, KeyError) as err:
            raise IndexError_(f"cannot read the index at {folder}: {err}") from err
        counts = {PROFILES_FILE: raw.shape[0], TABLE_FILE: len(files)}
        if features is not None:
            counts[FEATURES_FILE] = features.shape[0]
        if any(c != n for c in counts.values()):
            raise IndexError_(
                f"the index at {folder} is inconsistent: meta.json says {n} images but "
                + ", ".join(f"{k} has {v} rows" for k, v in counts.items())
                + "; rebuild it with `psal index`"
            )
        if raw.ndim != 2 or raw.shape[1] != int(meta["n_filters"]):
            raise IndexError_(f"the index at {folder} is inconsistent: profiles of shape {raw.shape} "
                              f"for {meta['n_filters']} filters")
        return cls(folder, meta, table, files, raw, features)

    @classmethod
    def _open_sharded(cls, folder: Path, *, verify: bool) -> ProfileIndex:
        """One index over the shards listed in ``manifest.json``, rows in dataset order."""
        from .sharded_rows import ShardedRows

        manifest_path = folder / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
            meta = dict(manifest["index"])
            entries = list(manifest["shards"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise IndexError_(f"cannot read {manifest_path}: {err}") from err
        if manifest.get("format") != MANIFEST_FORMAT or meta.get("format") != INDEX_FORMAT:
            raise IndexError_(f"{folder} is not a sharded profile index of format {MANIFEST_FORMAT} "
                              f"(found {manifest.get('format')!r})")
        parts: list[ProfileIndex] = []
        key = {k: meta.get(k) for k in ("model", "weights_id", "layout_checksum", "preprocess")}
        for entry in entries:
            if entry.get("folder") is None:
                continue  # a block with no readable image
            sub = folder / entry["folder"]
            name = entry["folder"]
            if not (sub / META_FILE).is_file():
                raise IndexError_(f"the index at {folder} is incomplete: its shard {name} is missing; "
                                  "rebuild it with `psal index`")
            if sha256_file(sub / META_FILE) != entry.get("meta_sha256"):
                raise IndexError_(f"the index at {folder} is damaged or mixed from two runs: {name}/{META_FILE} "
                                  f"does not match {MANIFEST_FILE}; rebuild it with `psal index`")
            part = cls.open(sub, verify=verify)
            own = {k: part.meta.get(k) for k in key}
            if own != key or len(part) != int(entry["n"]) or part.n_filters != int(meta["n_filters"]):
                raise IndexError_(f"the index at {folder} is inconsistent: shard {name} does not match "
                                  f"{MANIFEST_FILE} (model, layout or row count); rebuild it with `psal index`")
            parts.append(part)
        if not parts:
            raise IndexError_(f"the index at {folder} lists no shard with rows; rebuild it with `psal index`")
        n = sum(len(p) for p in parts)
        if n != int(meta["n"]):
            raise IndexError_(f"the index at {folder} is inconsistent: {MANIFEST_FILE} says {meta['n']} images "
                              f"but its shards hold {n}; rebuild it with `psal index`")
        table = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _TABLE_ARRAYS}
        files = [f for p in parts for f in p.files]
        raw = ShardedRows([p._raw_base for p in parts])
        feats = [p._features_base for p in parts]
        features = ShardedRows(feats) if all(f is not None for f in feats) else None
        meta["shards"] = entries
        meta["world_size"] = manifest.get("world_size")
        out = cls(folder, meta, table, files, raw, features)
        out.shards = parts
        return out

    def subset(self, rows: Sequence[int] | np.ndarray) -> ProfileIndex:
        """A view of some rows, in the given order (the table is copied; profiles are read on
        demand from the files on disk).

        Parameters
        ----------
        rows : sequence of int, shape [n]
            Rows of this index.
        """
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise IndexError_(f"rows must lie in [0, {len(self)})")
        base = r if self.base_rows is None else self.base_rows[r]
        table = {k: getattr(self, k)[r] for k in _TABLE_ARRAYS}
        out = ProfileIndex(self.path, self.meta, table, [self.files[i] for i in r], self._raw_base,
                           self._features_base, base)
        out.shards = self.shards
        return out

    # data --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"ProfileIndex({len(self)} images, {self.n_filters} filters, model {self.meta.get('model')}, "
                f"accuracy {float(self.correct.mean()) if len(self) else float('nan'):.1%})")

    @property
    def n_filters(self) -> int:
        return int(self._raw_base.shape[1])

    @cached_property
    def raw(self) -> np.ndarray:
        """Raw profiles, float16 [N, F]: the memmap itself (a sharded index: a
        :class:`~psal_widgets.sharded_rows.ShardedRows` over its shards' memmaps, read on demand;
        ``np.asarray`` reads it all), or a copy of the rows of a subset."""
        if self.base_rows is None:
            return self._raw_base
        order = np.argsort(self.base_rows, kind="stable")  # sorted reads are sequential on a memmap
        out = np.empty((self.base_rows.size, self.n_filters), dtype=self._raw_base.dtype)
        out[order] = self._raw_base[self.base_rows[order]]
        return out

    @cached_property
    def features(self) -> np.ndarray | None:
        """Penultimate features, float16 [N, D], or None."""
        if self._features_base is None:
            return None
        if self.base_rows is None:
            # A sharded index's features are small (N x D): one array, as a single index's memmap acts.
            base = self._features_base
            return base if isinstance(base, np.ndarray) else np.asarray(base)
        return np.asarray(self._features_base[self.base_rows])

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Images of the dataset left out of the build as unreadable: ``{"file", "reason"}``."""
        return list(self.meta.get("skipped", []))

    def usable(self, dataset: LabeledImages) -> LabeledImages:
        """``dataset`` without the files this index skipped as unreadable (itself when none):
        the dataset whose item ``i`` is row ``i`` of :meth:`aligned`."""
        dropped = {d["file"] for d in self.skipped}
        if not dropped:
            return dataset
        rel = dataset.relative_files()
        keep = [i for i, f in enumerate(rel) if f not in dropped]
        return dataset if len(keep) == len(rel) else dataset.subset(keep)

    def _base(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.base_rows is None else self.base_rows[rows]

    def standardized(
        self, stats: FilterStats, rows: Sequence[int] | np.ndarray | None = None, *, chunk: int = 256
    ) -> np.ndarray:
        """Standardized profiles ``(raw - μ) / σ`` (σ ≤ 1e-14 taken as 1), in float32.

        Parameters
        ----------
        stats : FilterStats
            Statistics of the same model (any dataset); never modified.
        rows : sequence of int, shape [n], optional
            Rows to return (default: all, in order).
        chunk : int
            Rows converted at a time: the float64 temporaries stay at ``chunk × F``.

        Returns
        -------
        np.ndarray of float32, shape [n, F]
        """
        if stats.n_filters != self.n_filters:
            raise IndexError_(
                f"the statistics describe {stats.n_filters} filters but the index has {self.n_filters}: "
                "they belong to another model"
            )
        r = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= len(self)):
            raise IndexError_(f"rows must lie in [0, {len(self)})")
        mean = stats.mean.double().numpy()
        std = stats.safe_std().double().numpy()
        out = np.empty((r.size, self.n_filters), dtype=np.float32)
        base = self._base(r)
        for start in range(0, r.size, chunk):
            b = base[start : start + chunk]
            order = np.argsort(b, kind="stable")  # sorted reads are sequential on a memmap
            block = np.empty((b.size, self.n_filters), dtype=np.float64)
            block[order] = self._raw_base[b[order]]
            out[start : start + chunk] = (block - mean) / std
        return out

    def neighbours(
        self,
        query: np.ndarray,
        stats: FilterStats,
        *,
        k: int = 10,
        columns: slice | None = None,
        exclude: Sequence[int] = (),
        backend: Literal["exact", "faiss"] = "exact",
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows whose standardized profiles are closest (cosine) to ``query``.

        Streamed over the memory-mapped float16 profiles (never the N x F standardized matrix;
        :func:`~psal_widgets.kernels.neighbours.stream_neighbours`).

        Parameters
        ----------
        query : np.ndarray, shape [F]
            A standardized profile (the same statistics).
        stats : FilterStats
        k : int
        columns : slice, optional
            Compare only these filters (:func:`~psal_widgets.kernels.neighbours.layer_columns`).
        exclude : sequence of int
            Rows never returned (e.g. the query image itself).
        backend : {"exact", "faiss"}
            ``faiss``: each chunk's inner products by FAISS (needs ``faiss-cpu``); same result.

        Returns
        -------
        (np.ndarray of int64 [k], np.ndarray of float64 [k])
            Rows and similarities, most similar first (ties: lower row first).
        """
        from .kernels.neighbours import stream_neighbours

        if stats.n_filters != self.n_filters:
            raise IndexError_(
                f"the statistics describe {stats.n_filters} filters but the index has {self.n_filters}: "
                "they belong to another model"
            )
        return stream_neighbours(query, self._raw_base, stats.mean.double().numpy(), stats.std.double().numpy(),
                                 k=k, columns=columns, exclude=exclude, rows=self.base_rows, backend=backend)

    def all_neighbours(
        self, stats: FilterStats, *, k: int = 10, columns: slice | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of every row among the others (standardized profiles, cosine),
        streamed (:func:`~psal_widgets.kernels.neighbours.stream_all_neighbours`).

        Returns
        -------
        (np.ndarray of int64 [N, k], np.ndarray of float32 [N, k])
            Most similar first (ties: lower row first); a row never lists itself.
        """
        from .kernels.neighbours import stream_all_neighbours

        if stats.n_filters != self.n_filters:
            raise IndexError_(
                f"the statistics describe {stats.n_filters} filters but the index has {self.n_filters}: "
                "they belong to another model"
            )
        return stream_all_neighbours(self._raw_base, stats.mean.double().numpy(), stats.std.double().numpy(),
                                     k=k, columns=columns, rows=self.base_rows)

    def rows_for(self, files: Sequence[str]) -> np.ndarray:
        """Row of each file (relative path as in :attr:`files`).

        Returns
        -------
        np.ndarray of int64, shape [n]

        Raises
        ------
        IndexError_
            Some files are not in the index.
        """
        where = {f: i for i, f in enumerate(self.files)}
        missing = [f for f in files if f not in where]
        skipped = {d["file"]: d["reason"] for d in self.skipped}
        if any(f in skipped for f in missing):
            f = next(f for f in missing if f in skipped)
            raise IndexError_(
                f"the index at {self.path} has no row for {f}: it was skipped as unreadable ({skipped[f]}); "
                "leave it out of the dataset (ProfileIndex.usable(dataset)) or fix the file and rebuild"
            )
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise IndexError_(
                f"the index at {self.path} does not hold {len(missing)} of the {len(files)} files asked for "
                f"({shown}); build an index for this data with `psal index --data DATA`"
            )
        return np.array([where[f] for f in files], dtype=np.int64)

    def check_model(self, model: LoadedModel) -> None:
        """Raise :class:`IndexError_` unless the index was built with this model, weights and
        preprocessing."""
        from .kernels.filters import FilterIndex

        m = self.meta
        fix = "build one for this model with `psal index --data DATA --model ... [--weights ...]`"
        if m.get("model") != model.name:
            raise IndexError_(
                f"the index at {self.path} was built for model {m.get('model')!r}, not {model.name!r}; {fix}"
            )
        if m.get("weights_id") != model.weights_id:
            raise IndexError_(
                f"the index at {self.path} was built with other weights ({m.get('weights_id')}) than this "
                f"model's ({model.weights_id}); {fix}"
            )
        layout = FilterIndex(model.module).checksum()
        if m.get("layout", {}).get("checksum") != layout:
            raise IndexError_(f"the index at {self.path} has another filter layout than {model.name}; {fix}")
        if m.get("preprocess") != _json(model.preprocess.to_dict()):
            raise IndexError_(f"the index at {self.path} was built with other preprocessing than this model's; {fix}")

    def aligned(self, dataset: LabeledImages, *, same_root: bool = False) -> ProfileIndex:
        """This index with row ``i`` = item ``i`` of ``dataset`` (itself when it already is).

        Parameters
        ----------
        dataset : LabeledImages
        same_root : bool
            Also require that the index was built from the same dataset folder (files are matched
            by their path relative to it; an index given explicitly may come from a moved copy).

        Raises
        ------
        IndexError_
            A file of the dataset is missing, or has another label in the index.
        """
        files = dataset.relative_files()
        if same_root and self.meta.get("root_hash") != _root_hash(dataset.root):
            raise IndexError_(f"the index at {self.path} was built for images in another folder than "
                              f"{dataset.description}; build an index for this data with `psal index --data DATA`")
        rows = self.rows_for(files)
        labels = np.asarray(dataset.labels, dtype=np.int64)
        bad = np.flatnonzero(self.label[rows] != labels)
        if bad.size:
            i = int(bad[0])
            raise IndexError_(
                f"the index at {self.path} has other labels for {bad.size} of the dataset's files (e.g. "
                f"{files[i]}: {int(self.label[rows[i]])} in the index, {int(labels[i])} in the data); rebuild it"
            )
        if rows.size == len(self) and np.array_equal(rows, np.arange(len(self))):
            return self
        return self.subset(rows)


_TABLE_ARRAYS = ("label", "pred", "top5", "top5_prob", "correct", "loss")


def _read_table(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    if reader.fieldnames is None or not set(_TABLE_FIELDS[:15]) <= set(reader.fieldnames):
        raise ValueError(f"{path.name} lacks the columns {', '.join(_TABLE_FIELDS[:15])}")
    n = len(rows)
    files = [r["file"] for r in rows]
    table = {
        "label": np.array([int(r["label"]) for r in rows], dtype=np.int64).reshape(n),
        "pred": np.array([int(r["pred"]) for r in rows], dtype=np.int64).reshape(n),
        "top5": np.array([[int(r[f"top{i}"]) for i in range(1, 6)] for r in rows], dtype=np.int64).reshape(n, 5),
        "top5_prob": np.array([[float(r[f"prob{i}"]) for i in range(1, 6)] for r in rows],
                              dtype=np.float32).reshape(n, 5),
        "loss": np.array([float(r["loss"]) for r in rows], dtype=np.float32).reshape(n),
    }
    table["correct"] = table["pred"] == table["label"]
    return files, table


def _fmt(v: float) -> str:
    # repr of the float32 value as a Python float: reads back to the same float32, bit for bit.
    return repr(float(v))


# -- the builder -------------------------------------------------------------------------------
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
        (see the module docstring). ``out`` must be on a file system that every rank sees.

    Returns
    -------
    ProfileIndex
        ``build_info`` says ``{"status": "built" | "resumed" | "up to date", "resumed_from",
        "rows_computed", "seconds"}``. Under torchrun: the whole index, on every rank.
    """
    from .kernels.filters import FilterIndex
    from .store import layout_meta

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

    from . import __version__
    from .kernels.features import FeatureTap, find_classifier
    from .tolerant import Skipped, TolerantImages, report_skipped

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

    def checkpoint(rows_done: int) -> None:
        for arr in (profiles, features, *columns.values()):
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
                    checkpoint(row)
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
                checkpoint(row)
        checkpoint(row)
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
        files = [f for f, k in zip(files, keep) if k]
        labels = [v for v, k in zip(labels, keep) if k]
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
    from .tolerant import Skipped, report_skipped

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
    from . import __version__

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


# -- finding or building the index of a dataset ------------------------------------------------
def index_root(model_name: str) -> Path:
    """The user cache of indexes of one model."""
    from .store import user_helper_objects

    return user_helper_objects().parent / "index" / _safe_name(model_name)


def default_index_dir(model: LoadedModel, dataset: LabeledImages) -> Path:
    """Where :func:`index_for` builds the index of ``dataset`` in the user cache: a short hash of
    the dataset's root folder, its files and labels, and the weights."""
    files = dataset.relative_files()
    return index_root(model.name) / _short_hash(_root_hash(dataset.root), _files_hash(files, dataset.labels),
                                                model.weights_id)


def index_for(
    explainer: Explainer,
    dataset: LabeledImages,
    *,
    path: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> ProfileIndex:
    """The profile index of ``dataset`` for the explainer's model, row ``i`` = item ``i`` of
    ``index.usable(dataset)`` (the dataset itself unless some images were skipped as unreadable:
    callers that read images by row must use that dataset).

    Parameters
    ----------
    explainer : Explainer
    dataset : LabeledImages
    path : path, optional
        An index folder: opened and checked (same model, weights, preprocessing; holds every file
        of the dataset with the same labels), or built there when it does not exist yet (an
        unfinished build there is resumed).
        Default: any index in the user cache that covers the dataset, else a new one built there
        (see :func:`default_index_dir`).
    batch_size, progress
        For a build.

    Raises
    ------
    IndexError_
        The index at ``path`` belongs to another model or does not cover the dataset.
    """
    model = explainer.model
    if path is not None:
        folder = Path(path)
        if not is_index_folder(folder):
            idx = build_index(model, dataset, folder, batch_size=batch_size, progress=progress)
            return idx.aligned(idx.usable(dataset))
        idx = ProfileIndex.open(folder)
        idx.check_model(model)
        return idx.aligned(idx.usable(dataset))
    root = index_root(model.name)
    if root.is_dir():
        for candidate in sorted(p for p in root.iterdir() if is_index_folder(p)):
            try:
                idx = ProfileIndex.open(candidate)
                idx.check_model(model)
                # Same folder required: two datasets can share relative names and labels.
                return idx.aligned(idx.usable(dataset), same_root=True)
            except IndexError_:
                continue
    idx = build_index(model, dataset, default_index_dir(model, dataset), batch_size=batch_size, progress=progress)
    return idx.aligned(idx.usable(dataset))
