"""Reading a profile index: :class:`ProfileIndex` and its ``table.csv``.

:meth:`ProfileIndex.open` opens a folder written by :func:`~psal_widgets.index.build_index`, single
or sharded (the format is described in :mod:`psal_widgets.index`), checks it against its metadata,
and serves its rows: raw and standardized profiles, predictions, features, neighbours. Also
:func:`_read_table`, and :func:`_fmt`, the form in which the builder writes the table's floats so
that they read back bit for bit. Imports only :mod:`~psal_widgets.index.common`.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..atomic import check_files, partial_dir, sha256_file
from .common import (
    _TABLE_FIELDS,
    FEATURES_FILE,
    INDEX_FORMAT,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    META_FILE,
    PROFILES_FILE,
    TABLE_FILE,
    IndexError_,
    _json,
    _root_hash,
)

if TYPE_CHECKING:
    from ..data import LabeledImages
    from ..kernels.stats import FilterStats
    from ..models import LoadedModel


class ProfileIndex:
    """A profile index on disk (see :mod:`psal_widgets.index`), opened with :meth:`open`.

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
        from ..sharded_rows import ShardedRows

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
        from ..kernels.neighbours import stream_neighbours

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
        from ..kernels.neighbours import stream_all_neighbours

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
        from ..kernels.filters import FilterIndex

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
