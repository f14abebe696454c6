"""Nearest neighbours in parameter-saliency space (paper §3.2): cosine similarity of profiles.

The bank is the raw profiles of a profile index (``psal index``: ``profiles.npy``, float16
[N, F], memory-mapped) or of ``psal stats --profiles``, standardized with the same statistics
as the query, so that query and bank live in one space. A range of layers restricts the
comparison to shallow or deep filters.

Two routes give the same answer:

- :func:`cosine_neighbours` / :func:`all_neighbours` take a bank that is already standardized
  (an in-memory float32 matrix: fine for thousands of images).
- :func:`stream_neighbours` / :func:`stream_all_neighbours` read the raw float16 matrix in row
  chunks and standardize, normalize and compare each chunk on the fly, keeping a running top-k:
  memory is a few chunks, never the N x F float32 matrix (50,000 x 26,560 would be 5.3 GB), and
  a top-10 query over that size takes well under a second on one CPU core (``psal bench
  neighbors``). The chunk arithmetic runs in torch (imported when first needed), whose
  float16 -> float32 conversion is ~10x faster than NumPy's on these CPUs.
  ``backend="faiss"`` hands each chunk's inner products and top-k to FAISS (``faiss-cpu``,
  optional) instead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from .filters import FilterIndex
from .standardize import safe_std, zscore

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "STREAM_CHUNK",
    "Backend",
    "all_neighbours",
    "cosine_neighbours",
    "cosine_similarities",
    "layer_columns",
    "standardize_bank",
    "stream_all_neighbours",
    "stream_neighbours",
]

#: Rows read and standardized at a time: 32 x 26,560 float32 is 3.4 MB, so a chunk's several
#: passes (convert, centre, scale, dot, norm) stay in the CPU cache. Measured on the 2-core
#: machine over 50,000 x 26,560: 32-64 rows fastest (0.8 s), 8 rows 1.2 s (Python overhead).
STREAM_CHUNK = 32
#: Exact (torch chunks) or FAISS inner products on each chunk.
Backend = Literal["exact", "faiss"]
#: Candidates kept beyond k in float32 and re-scored in float64 at the end, so that rows whose
#: float32 similarities differ only by rounding are ordered exactly like the float64 reference.
_RESCORE_EXTRA = 16


def standardize_bank(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardize raw profiles with :func:`.standardize.zscore` (``std <= 1e-14`` taken as 1).

    Parameters
    ----------
    raw : np.ndarray, shape [N, F]
        Raw profiles (any float dtype, usually float16).
    mean, std : np.ndarray, shape [F]
        Per-filter statistics (the query's).

    Returns
    -------
    np.ndarray, shape [N, F], float32
    """
    bank = np.asarray(raw)
    mu = np.asarray(mean, dtype=np.float64).reshape(-1)
    sd = np.asarray(std, dtype=np.float64).reshape(-1)
    if bank.ndim != 2 or bank.shape[1] != mu.shape[0] or sd.shape != mu.shape:
        raise ValueError(
            f"profiles of shape {bank.shape} do not match statistics of {mu.shape[0]} filters: "
            "they were computed for another model"
        )
    out = np.empty(bank.shape, dtype=np.float32)
    # Row blocks keep the float64 temporaries small (800 x 21k floats would be 134 MB at once).
    for start in range(0, bank.shape[0], 256):
        out[start : start + 256] = zscore(bank[start : start + 256], mu, sd)
    return out


def layer_columns(index: FilterIndex, layers: tuple[int, int] | None) -> slice:
    """Columns of the profile that belong to layer positions ``first..last`` (inclusive).

    Parameters
    ----------
    index : FilterIndex
    layers : (int, int) or None
        0-based layer positions; negative values count from the end; None is all filters.

    Returns
    -------
    slice
    """
    if layers is None:
        return slice(0, index.n_filters)
    n = len(index.layers)
    try:
        first, last = (int(v) for v in layers)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"layers must be a pair (first, last) of layer positions, got {layers!r}"
        ) from err
    first = first + n if first < 0 else first
    last = last + n if last < 0 else last
    if not 0 <= first <= last < n:
        raise ValueError(
            f"layers must satisfy 0 <= first <= last < {n} (the model has {n} conv layers); "
            f"got {layers}"
        )
    end = index.layers[last]
    return slice(index.layers[first].offset, end.offset + end.n_filters)


def cosine_similarities(
    query: np.ndarray, bank: np.ndarray, *, columns: slice | None = None
) -> np.ndarray:
    """Cosine similarity of one profile with every row of a bank.

    Parameters
    ----------
    query : np.ndarray, shape [F]
    bank : np.ndarray, shape [N, F]
    columns : slice, optional
        Compare only these filters (see :func:`layer_columns`).

    Returns
    -------
    np.ndarray, shape [N], float64
        0 for a row (or a query) whose norm is 0.
    """
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    b = np.asarray(bank)
    if b.ndim != 2 or b.shape[1] != q.shape[0]:
        raise ValueError(f"query has {q.shape[0]} filters but the bank has shape {b.shape}")
    cols = columns if columns is not None else slice(None)
    qs, bs = q[cols], b[:, cols]
    dots = bs @ qs.astype(bs.dtype, copy=False)
    norms = np.linalg.norm(bs, axis=1).astype(np.float64) * float(np.linalg.norm(qs))
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = np.where(norms > 0.0, dots.astype(np.float64) / norms, 0.0)
    return sims


def cosine_neighbours(
    query: np.ndarray,
    bank: np.ndarray,
    *,
    k: int = 10,
    columns: slice | None = None,
    exclude: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows of the bank.

    Parameters
    ----------
    query : np.ndarray, shape [F]
    bank : np.ndarray, shape [N, F]
    k : int
        At most N (fewer come back when rows are excluded).
    columns : slice, optional
    exclude : sequence of int
        Rows never returned (e.g. the query image itself).

    Returns
    -------
    (np.ndarray of int64 [k], np.ndarray of float64 [k])
        Row indices and similarities, most similar first (ties: lower row first).
    """
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    sims = cosine_similarities(query, bank, columns=columns)
    keep = np.ones(sims.shape[0], dtype=bool)
    bad = [int(i) for i in exclude if 0 <= int(i) < sims.shape[0]]
    keep[bad] = False
    rows = np.flatnonzero(keep)
    order = rows[np.argsort(-sims[rows], kind="stable")[: int(k)]]
    return order.astype(np.int64), sims[order]


def all_neighbours(
    bank: np.ndarray,
    *,
    k: int = 10,
    columns: slice | None = None,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` cosine nearest neighbours of every row of a bank among the other rows.

    Exact: the rows are L2-normalized once (float32) and compared block by block with one
    matrix product per ``block`` query rows, so memory is ``block × N`` similarities plus the
    normalized bank.

    Parameters
    ----------
    bank : np.ndarray, shape [N, F]
    k : int
        At most N - 1.
    columns : slice, optional
        Compare only these filters (see :func:`layer_columns`).
    block : int

    Returns
    -------
    (np.ndarray of int64 [N, k], np.ndarray of float32 [N, k])
        Neighbour rows and similarities, most similar first (ties: lower row first); a row never
        lists itself. Rows of norm 0 have similarity 0 to everything.
    """
    b = np.asarray(bank)
    if b.ndim != 2:
        raise ValueError(f"bank must be [N, F]; got shape {b.shape}")
    n = b.shape[0]
    if isinstance(k, bool) or not 1 <= int(k) <= n - 1:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} rows; got {k}")
    k = int(k)
    x = np.asarray(b[:, columns] if columns is not None else b, dtype=np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    unit = (x / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        s = unit[start:stop] @ unit.T
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never the row itself
        # Stable sort on the negated similarities: ties keep the lower row first.
        part = np.argsort(-s, axis=1, kind="stable")[:, :k]
        idx[start:stop] = part
        sims[start:stop] = np.take_along_axis(s, part, axis=1)
    return idx, sims


# -- streaming over a (memory-mapped) float16 matrix ------------------------------------------------
def _statistics(mean: np.ndarray, std: np.ndarray, n_filters: int) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mean, dtype=np.float64).reshape(-1)
    sd = safe_std(np.asarray(std, dtype=np.float64).reshape(-1))
    if mu.shape != (n_filters,) or sd.shape != mu.shape:
        raise ValueError(
            f"profiles of {n_filters} filters do not match statistics of {mu.shape[0]} filters: "
            "they were computed for another model"
        )
    return mu, sd


def _check_rows(rows: np.ndarray | None, n_base: int) -> np.ndarray | None:
    if rows is None:
        return None
    r = np.asarray(rows, dtype=np.int64).reshape(-1)
    if r.size and (r.min() < 0 or r.max() >= n_base):
        raise ValueError(f"rows must lie in [0, {n_base})")
    return r


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the duration (restored after).

    A chunk is a few MB of memory-bound work: splitting it over the cores gains little, and on a
    shared machine whose other core is busy the thread pool's barriers made a 50,000-row query
    15-60x slower (measured: 15-65 s with 2 threads, 0.8 s with 1).
    """
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _raw_chunks(
    raw: np.ndarray, rows: np.ndarray | None, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions [m], block [m, F] float16)`` over the rows of ``raw`` (or ``raw[rows]``).

    ``positions`` index the rows of the view (0..n-1); ``block`` is one reused buffer. A
    contiguous ``np.memmap`` is read with plain file reads (through the page cache but not
    mapped into this process), so the resident memory stays a few chunks however large the
    index; a subset is gathered in sorted order, sequential on disk.
    """
    n_base, f = raw.shape
    buf = np.empty((chunk, f), dtype=raw.dtype)
    if rows is None:
        path = getattr(raw, "filename", None)
        # Only a whole-file memmap (its base is the mmap itself): a slice of one keeps the
        # parent's ``offset`` and would be read from the wrong place.
        if (isinstance(raw, np.memmap) and isinstance(raw.base, mmap.mmap) and path
                and raw.flags.c_contiguous and os.path.isfile(path)):
            row_bytes = f * raw.dtype.itemsize
            with open(path, "rb", buffering=0) as fh:
                fh.seek(int(raw.offset))
                for start in range(0, n_base, chunk):
                    m = min(chunk, n_base - start)
                    view = memoryview(buf[:m]).cast("B")
                    got = 0
                    while got < m * row_bytes:  # readinto may return less than asked
                        r = fh.readinto(view[got:])
                        if not r:
                            raise ValueError(f"{path} ended before row {start + m} of {n_base}")
                        got += r
                    yield np.arange(start, start + m), buf[:m]
            return
        for start in range(0, n_base, chunk):
            m = min(chunk, n_base - start)
            buf[:m] = raw[start : start + m]
            yield np.arange(start, start + m), buf[:m]
        return
    order = np.argsort(rows, kind="stable")
    for start in range(0, rows.size, chunk):
        pos = order[start : start + chunk]
        m = pos.size
        buf[:m] = raw[rows[pos]]
        yield pos, buf[:m]


class _Standardizer:
    """Standardize and L2-normalize float16 chunks in float32 (torch), columns restricted."""

    def __init__(self, mu: np.ndarray, sd: np.ndarray, columns: slice, chunk: int) -> None:
        import torch

        self.torch = torch
        self.cols = columns
        self.mu = torch.from_numpy(mu[columns].astype(np.float32))
        self.inv = torch.from_numpy((1.0 / sd[columns]).astype(np.float32))
        self.buf = torch.empty((chunk, int(self.mu.shape[0])), dtype=torch.float32)

    def __call__(self, block: np.ndarray) -> tuple[Tensor, Tensor]:
        """``(z [m, F'] float32, norms [m])`` of one chunk; ``z`` is a reused buffer."""
        z = self.buf[: block.shape[0]]
        z.copy_(self.torch.from_numpy(block)[:, self.cols])
        z.sub_(self.mu).mul_(self.inv)
        return z, self.torch.linalg.vector_norm(z, dim=1)


def _faiss() -> object:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError as err:
        raise ValueError(
            "backend='faiss' needs the faiss-cpu package (pip install faiss-cpu); "
            "backend='exact' needs nothing more and gives the same neighbours"
        ) from err
    return faiss


def _merge(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, keep: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` largest of two (similarity, row) lists; -inf entries (excluded) dropped."""
    cand_s = np.concatenate([best_s, s])
    cand_i = np.concatenate([best_i, i])
    ok = cand_s > -np.inf
    cand_s, cand_i = cand_s[ok], cand_i[ok]
    if cand_s.size > keep:
        # A full sort of at most keep + chunk entries: exact ties at the cut keep the lower rows.
        sel = np.lexsort((cand_i, -cand_s))[:keep]
        cand_s, cand_i = cand_s[sel], cand_i[sel]
    return cand_s, cand_i


def _gather(raw: np.ndarray, rows: np.ndarray | None, positions: np.ndarray) -> np.ndarray:
    base = positions if rows is None else rows[positions]
    order = np.argsort(base, kind="stable")
    out = np.empty((base.size, raw.shape[1]), dtype=raw.dtype)
    out[order] = raw[base[order]]
    return out


def stream_neighbours(
    query: np.ndarray,
    raw: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    k: int = 10,
    columns: slice | None = None,
    exclude: Sequence[int] = (),
    rows: np.ndarray | None = None,
    chunk: int = STREAM_CHUNK,
    backend: Backend = "exact",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of a raw profile matrix most similar (cosine) to a standardized query.

    Equal to ``cosine_neighbours(query, standardize_bank(raw, mean, std), ...)`` (ids, and
    similarities to float rounding) without ever holding the standardized matrix: each chunk of
    rows is standardized, normalized and compared in float32 and a running top ``k + 16`` is
    kept; those candidates are re-scored in float64 and the best ``k`` returned.

    Parameters
    ----------
    query : np.ndarray, shape [F]
        A standardized profile (the same statistics).
    raw : np.ndarray, shape [N_base, F]
        Raw profiles, usually the float16 memmap of a profile index.
    mean, std : np.ndarray, shape [F]
        The statistics that standardize ``raw`` (``std <= 1e-14`` taken as 1).
    k : int
        At most this many rows come back (fewer when rows are excluded).
    columns : slice, optional
        Compare only these filters (see :func:`layer_columns`).
    exclude : sequence of int
        Rows (of the view, see ``rows``) never returned, e.g. the query image itself.
    rows : np.ndarray of int, shape [N], optional
        The view: row ``i`` of the result space is ``raw[rows[i]]`` (a subset, reordered).
        Default: all rows in order.
    chunk : int
        Rows per chunk (memory: a few ``chunk x F`` float32 buffers).
    backend : {"exact", "faiss"}
        ``faiss``: each chunk's inner products and top-k by FAISS (needs ``faiss-cpu``).

    Returns
    -------
    (np.ndarray of int64 [k], np.ndarray of float64 [k])
        Rows of the view and similarities, most similar first (ties: lower row first); 0 for a
        row (or a query) of norm 0.
    """
    if isinstance(k, bool) or int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if isinstance(chunk, bool) or int(chunk) < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if backend not in ("exact", "faiss"):
        raise ValueError(f"backend must be 'exact' or 'faiss'; got {backend!r}")
    k, chunk = int(k), int(chunk)
    if np.ndim(raw) != 2:
        raise ValueError(f"raw profiles must be [N, F]; got shape {np.shape(raw)}")
    n_base, f = raw.shape
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    if q.shape[0] != f:
        raise ValueError(f"query has {q.shape[0]} filters but the profiles have {f}")
    mu, sd = _statistics(mean, std, f)
    view = _check_rows(rows, n_base)
    n = n_base if view is None else view.size
    cols = columns if columns is not None else slice(0, f)
    qc = q[cols]
    q_norm = float(np.linalg.norm(qc))
    banned = np.zeros(n, dtype=bool)
    banned[[int(i) for i in exclude if 0 <= int(i) < n]] = True
    keep = k + _RESCORE_EXTRA
    best_s, best_i = np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    faiss = _faiss() if backend == "faiss" else None
    with _one_thread():
        import torch

        std_chunk = _Standardizer(mu, sd, cols, chunk)
        q_unit = torch.from_numpy((qc / q_norm if q_norm > 0 else qc).astype(np.float32))
        for pos, block in _raw_chunks(raw, view, chunk):
            z, norms = std_chunk(block)
            if faiss is not None:
                z.div_(torch.where(norms > 0, norms, torch.ones_like(norms))[:, None])
                m = min(keep, pos.size)
                s_np, j = faiss.knn(q_unit.numpy()[None], z.numpy(), m, metric=faiss.METRIC_INNER_PRODUCT)
                s_np, j = s_np[0].astype(np.float32), j[0]
                s_np, p = s_np[j >= 0], pos[j[j >= 0]]
            else:
                dots = torch.mv(z, q_unit)
                s_t = torch.where(norms > 0, dots / torch.where(norms > 0, norms, torch.ones_like(norms)),
                                  torch.zeros_like(dots))
                s_np, p = s_t.numpy().copy(), pos
            s_np[banned[p]] = -np.inf
            best_s, best_i = _merge(best_s, best_i, s_np, p, keep)
    # Exact re-scoring of the few candidates, in float64 like the in-memory path.
    z64 = zscore(_gather(raw, view, best_i)[:, cols], mu[cols], sd[cols])
    norms64 = np.linalg.norm(z64, axis=1) * q_norm
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = np.where(norms64 > 0.0, (z64 @ qc) / norms64, 0.0)
    order = np.lexsort((best_i, -sims))[:k]
    return best_i[order].astype(np.int64), sims[order]


def stream_all_neighbours(
    raw: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    k: int = 10,
    columns: slice | None = None,
    rows: np.ndarray | None = None,
    block: int = 512,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`all_neighbours` of the standardized raw profiles, streamed.

    ``block`` query rows at a time are standardized and normalized; the whole matrix is then
    read in chunks of ``chunk`` rows and compared with one matrix product per chunk, keeping a
    running top-k per query row. Memory: ``(block + chunk) x F`` float32 plus
    ``block x (chunk + k)`` similarities; time grows as N², as any exact all-pairs search.

    Parameters
    ----------
    raw : np.ndarray, shape [N_base, F]
    mean, std : np.ndarray, shape [F]
    k : int
        At most N - 1.
    columns : slice, optional
    rows : np.ndarray of int, shape [N], optional
        The view (as :func:`stream_neighbours`).
    block, chunk : int

    Returns
    -------
    (np.ndarray of int64 [N, k], np.ndarray of float32 [N, k])
        As :func:`all_neighbours`: a row never lists itself; ties: lower row first.
    """
    if np.ndim(raw) != 2:
        raise ValueError(f"raw profiles must be [N, F]; got shape {np.shape(raw)}")
    n_base, f = raw.shape
    view = _check_rows(rows, n_base)
    n = n_base if view is None else view.size
    if isinstance(k, bool) or not 1 <= int(k) <= n - 1:
        raise ValueError(f"k must lie in [1, {n - 1}] for {n} rows; got {k}")
    k = int(k)
    mu, sd = _statistics(mean, std, f)
    cols = columns if columns is not None else slice(0, f)
    idx = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    with _one_thread():
        import torch

        queries = _Standardizer(mu, sd, cols, block)
        bank = _Standardizer(mu, sd, cols, chunk)

        def unit(z: Tensor, norms: Tensor) -> Tensor:
            return z.div_(torch.where(norms > 0, norms, torch.ones_like(norms))[:, None])

        for q_pos, q_block in _raw_chunks(raw, view, block):
            qz = unit(*queries(q_block)).clone()
            b = q_pos.size
            best_s = np.full((b, 0), -np.inf, dtype=np.float32)
            best_i = np.zeros((b, 0), dtype=np.int64)
            for pos, c_block in _raw_chunks(raw, view, chunk):
                s = (qz @ unit(*bank(c_block)).T).numpy()
                s[q_pos[:, None] == pos[None, :]] = -np.inf  # never the row itself
                cand_s = np.concatenate([best_s, s], axis=1)
                cand_i = np.concatenate([best_i, np.broadcast_to(pos, s.shape)], axis=1)
                # Most similar first, ties: lower row first (as all_neighbours), also at the cut.
                order = np.lexsort((cand_i, -cand_s), axis=1)[:, : k + _RESCORE_EXTRA]
                best_s = np.take_along_axis(cand_s, order, axis=1)
                best_i = np.take_along_axis(cand_i, order, axis=1)
            idx[q_pos] = best_i[:, :k]
            sims[q_pos] = best_s[:, :k]
    return idx, sims
