"""Nearest neighbours in parameter-saliency space (paper §3.2): cosine similarity of profiles.

The bank is the raw profiles kept by ``psal stats --profiles`` (``profiles.safetensors``,
float16 [N, F]), standardized with the same statistics as the query, so that query and bank
live in one space. A range of layers restricts the comparison to shallow or deep filters.
NumPy only: one matrix-vector product per query, fast enough on a CPU for thousands of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .filters import FilterIndex
from .standardize import zscore

__all__ = ["all_neighbours", "cosine_neighbours", "cosine_similarities", "layer_columns", "standardize_bank"]


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
