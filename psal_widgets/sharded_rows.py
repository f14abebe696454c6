"""Several row blocks on disk (the shards of a profile index) read as one matrix.

A sharded profile index (``psal index`` under ``torchrun``) keeps one ``profiles.npy`` per rank.
:class:`ShardedRows` puts their memory maps end to end without copying them: it has the
``shape``, ``dtype`` and ``ndim`` of the stacked matrix and answers the indexing its readers use
(a row, a slice of rows, a list or mask of rows, optionally followed by column indices) by
reading only the rows asked for. ``np.asarray`` of it reads everything.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ShardedRows"]


def _file_backed(part: np.ndarray) -> tuple[str, int] | None:
    """``(path, byte offset of row 0)`` of a whole-file, C-contiguous memmap, else None."""
    path = getattr(part, "filename", None)
    # A slice of a memmap keeps its parent's offset: only the memmap itself (its base is the
    # mmap object) says where its rows start in the file.
    if (isinstance(part, np.memmap) and isinstance(part.base, mmap.mmap) and path
            and part.flags.c_contiguous and os.path.isfile(path)):
        return os.fspath(path), int(part.offset)
    return None


class ShardedRows:
    """The row-wise concatenation of arrays ``parts[0], parts[1], ...`` (same trailing shape and
    dtype), read on demand.

    Parameters
    ----------
    parts : sequence of np.ndarray, shapes [n_i, ...]
        Usually read-only memmaps; none is copied.

    Attributes
    ----------
    shape : tuple
        ``(sum n_i, ...)``.
    dtype : np.dtype
    ndim : int
    offsets : np.ndarray of int64, shape [len(parts) + 1]
        Row ``offsets[i]`` is row 0 of ``parts[i]``.
    """

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        if not parts:
            raise ValueError("ShardedRows needs at least one part")
        first = parts[0]
        for p in parts[1:]:
            if p.shape[1:] != first.shape[1:] or p.dtype != first.dtype:
                raise ValueError(f"parts differ: {first.shape[1:]} {first.dtype} vs {p.shape[1:]} {p.dtype}")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [int(p.shape[0]) for p in parts]).astype(np.int64)
        self.shape: tuple[int, ...] = (int(self.offsets[-1]), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = len(self.shape)
        self._files = [_file_backed(p) for p in self.parts]

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedRows(shape={self.shape}, dtype={self.dtype}, parts={len(self.parts)})"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._range(0, self.shape[0])
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype: Any, copy: bool = True) -> np.ndarray:
        """The whole matrix read into memory, as ``dtype``."""
        return np.asarray(self).astype(dtype, copy=False)

    def __iter__(self):  # noqa: ANN204 - rows, as an array's iteration gives
        for i in range(self.shape[0]):
            yield self[i]

    # -- indexing ------------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            if not key or key[0] is Ellipsis or key[0] is None:
                return np.asarray(self)[key]
            rows, rest = key[0], key[1:]
            if not rest:
                return self[rows]
            if isinstance(rows, (int, np.integer)):
                return self[rows][rest]
            if isinstance(rows, slice):
                return self[rows][(slice(None), *rest)]
            # Rows given as an array: read them, then index the block with their positions in it,
            # so that NumPy pairs them with any array of columns exactly as it would on the matrix.
            idx = np.asarray(rows)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            block = self[idx.reshape(-1)]
            return block[(np.arange(idx.size).reshape(idx.shape), *rest)]
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < 0:
                i += self.shape[0]
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} is out of range for {self.shape[0]} rows")
            part = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.array(self.parts[part][i - self.offsets[part]])
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self._range(start, max(start, stop))
            return self._take(np.arange(start, stop, step, dtype=np.int64))
        if key is Ellipsis:
            return np.asarray(self)
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (self.shape[0],):
                raise IndexError(f"a boolean mask of {self.shape[0]} rows is needed; got shape {idx.shape}")
            idx = np.flatnonzero(idx)
        if not np.issubdtype(idx.dtype, np.integer) and idx.size:
            raise IndexError(f"rows must be integers, slices or a boolean mask; got {idx.dtype}")
        flat = idx.astype(np.int64).reshape(-1)
        return self._take(flat).reshape(*idx.shape, *self.shape[1:])

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop-1`` as one new array (file reads where a part is a memmap)."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        for p, part in enumerate(self.parts):
            lo, hi = max(start, int(self.offsets[p])), min(stop, int(self.offsets[p + 1]))
            if lo >= hi:
                continue
            a, b = lo - int(self.offsets[p]), hi - int(self.offsets[p])
            dest = out[lo - start : hi - start]
            where = self._files[p]
            if where is None:
                dest[...] = part[a:b]
                continue
            # Plain reads, as the neighbour stream does for one memmap: the rows pass through the
            # page cache without being mapped into this process, so resident memory stays small.
            path, offset = where
            row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            view = memoryview(dest.reshape(-1).view(np.uint8))
            with open(path, "rb", buffering=0) as fh:
                fh.seek(offset + a * row_bytes)
                got = 0
                while got < view.nbytes:  # readinto may return less than asked
                    r = fh.readinto(view[got:])
                    if not r:
                        raise ValueError(f"{path} ended before row {b} of its {part.shape[0]}")
                    got += r
        return out

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at ``rows`` (any order, repeats allowed), read part by part in sorted order."""
        n = self.shape[0]
        r = np.where(rows < 0, rows + n, rows)
        if r.size and (r.min() < 0 or r.max() >= n):
            raise IndexError(f"rows must lie in [-{n}, {n})")
        out = np.empty((r.size, *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.offsets, r, side="right") - 1
        for p in np.unique(which):
            sel = np.flatnonzero(which == p)
            local = r[sel] - self.offsets[p]
            order = np.argsort(local, kind="stable")  # sorted reads are sequential on a memmap
            out[sel[order]] = self.parts[int(p)][local[order]]
        return out
