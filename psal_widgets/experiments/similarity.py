"""Similarity of two profiles or two maps (NumPy only): cosine, top-k overlap, Spearman rank correlation."""
from __future__ import annotations

import numpy as np

__all__ = ["cosine_similarity", "rankdata", "spearman", "top_k_overlap"]


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two vectors (flattened); 0 when either is all zeros."""
    u = np.asarray(a, dtype=np.float64).reshape(-1)
    v = np.asarray(b, dtype=np.float64).reshape(-1)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0.0 or nv == 0.0:
        return 0.0
    return float(u @ v / (nu * nv))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the ``k`` largest entries of ``a`` that are also among the ``k`` largest of ``b``.

    Ties are broken by position (stable sort), the same rule as ``Analysis.top_filters``.
    """
    u = np.asarray(a).reshape(-1)
    v = np.asarray(b).reshape(-1)
    k = int(min(k, u.size))
    if k <= 0:
        raise ValueError(f"k must be positive; got {k}")
    ta = np.argsort(-u, kind="stable")[:k]
    tb = np.argsort(-v, kind="stable")[:k]
    return float(np.intersect1d(ta, tb).size / k)


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties given their average rank (as ``scipy.stats.rankdata``)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # Runs of equal values: first index of each run, and each element's run.
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    run = np.cumsum(np.r_[True, sorted_v[1:] != sorted_v[:-1]]) - 1
    ends = np.r_[starts[1:], v.size]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = avg[run]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays of equal size (flattened); nan if either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise ValueError(f"arrays differ in size: {ra.size} vs {rb.size}")
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / den) if den > 0 else float("nan")
