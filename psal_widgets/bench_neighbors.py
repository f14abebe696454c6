"""``psal bench neighbors``: top-k cosine queries over a large memory-mapped profile index.

A synthetic index (float16 raw profiles, ``n x filters``, written as ``profiles.npy`` like
``psal index`` does) goes to a temporary folder, which is removed afterwards. After one warm-up
query (it also brings the file into the page cache), ``repeat`` top-10 queries are timed with
:func:`~.kernels.neighbours.stream_neighbours`; ``peak_rss_gb`` is the process's peak resident
memory right after them. Side by side on a smaller index (``naive_n`` rows), the same queries
through the in-memory path (standardize the whole matrix in float32, then
:func:`~.kernels.neighbours.cosine_neighbours`) give the ratio.
"""
from __future__ import annotations

import math
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_neighbors", "write_synthetic_profiles"]

#: Share of the synthetic filters that are dead (σ = 0: raw profile 0 on every image), as in
#: the default model (134 of 21,008).
DEAD_SHARE = 0.0064


def write_synthetic_profiles(path: Path, n: int, n_filters: int, *, seed: int = 0,
                             rows_per_write: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Write ``n x n_filters`` float16 raw profiles to ``path`` (``.npy``) and return their
    exact ``(mean, std)``.

    Each filter's raw saliency is ``|N(0, 1)| x scale`` (half-normal, as mean |grad| roughly
    is), with per-filter scales spread over two orders of magnitude; a few filters are dead.
    Written with plain file writes, so the process never maps the file.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(n_filters).uniform_(math.log(1e-3), math.log(1e-1), generator=gen))
    dead = torch.rand(n_filters, generator=gen) < DEAD_SHARE
    scale[dead] = 0.0
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
              "shape": (int(n), int(n_filters))}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for start in range(0, n, rows_per_write):
            m = min(rows_per_write, n - start)
            block = torch.randn(m, n_filters, generator=gen).abs_().mul_(scale)
            fh.write(block.half().numpy().tobytes())
    s = scale.double().numpy()
    return s * math.sqrt(2 / math.pi), s * math.sqrt(1 - 2 / math.pi)


def _peak_rss_gb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20  # bytes on macOS, KiB on Linux


def _queries(raw: np.ndarray, mean: np.ndarray, std: np.ndarray, count: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """``(row, query)``: standardized rows of the index plus noise (the row itself is excluded)."""
    from .kernels.standardize import zscore

    rng = np.random.default_rng(seed)
    rows = rng.choice(raw.shape[0], size=count, replace=False)
    return [(int(r), zscore(np.asarray(raw[int(r)]), mean, std) + rng.normal(size=raw.shape[1]))
            for r in rows]


def bench_neighbors(*, n: int = 50_000, n_filters: int = 26_560, repeat: int = 5, k: int = 10,
                    naive_n: int = 5_000, folder: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Time top-``k`` queries over a synthetic ``n x n_filters`` float16 index.

    Parameters
    ----------
    n, n_filters : int
        Size of the synthetic index (default 50,000 x 26,560: ImageNet val, ResNet-50; 2.7 GB).
    repeat : int
        Timed queries (median reported), after one warm-up.
    k : int
    naive_n : int
        Rows of the side-by-side comparison with the in-memory path (0: skip it).
    folder : str, optional
        Where the temporary index goes (default: the system's temporary folder).
    seed : int

    Returns
    -------
    dict
        ``query_s`` (median), ``peak_rss_gb``, ``baseline_rss_gb`` (the process before any index
        work), ``build_s`` (writing the index), ``index_gb``,
        ``dense_float32_gb`` (what the in-memory path would hold), and with ``naive_n``:
        ``naive_n``, ``naive_standardize_s`` (building the in-memory float32 matrix, once),
        ``naive_query_s`` (a query on it), ``stream_query_s_at_naive_n``, ``ratio_stream_over_naive``.
    """
    from .kernels.neighbours import cosine_neighbours, standardize_bank, stream_neighbours

    for name, value, low in (("--n", n, 2), ("--filters", n_filters, 1), ("--repeat", repeat, 1)):
        if isinstance(value, bool) or int(value) < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    if not 1 <= k < n:
        raise ValueError(f"k must lie in [1, {n - 1}], got {k}")
    if naive_n < 0:
        raise ValueError(f"--naive-n must be 0 (skip) or positive, got {naive_n}")
    need = (n + min(naive_n, n)) * n_filters * 2
    base = Path(folder or tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < 1.1 * need:
        raise ValueError(f"the synthetic index needs {need / 1e9:.1f} GB but {base} has {free / 1e9:.1f} GB free: "
                         "pass a smaller --n or set TMPDIR to a larger disk")
    tmp = Path(tempfile.mkdtemp(prefix="psal-bench-neighbors-", dir=base))
    res: dict[str, Any] = {"n": n, "n_filters": n_filters, "k": k, "repeat": repeat,
                           "index_gb": n * n_filters * 2 / 1e9, "dense_float32_gb": n * n_filters * 4 / 1e9,
                           # Before any index work: the interpreter with torch and NumPy loaded.
                           "baseline_rss_gb": _peak_rss_gb()}
    try:
        t0 = time.perf_counter()
        mean, std = write_synthetic_profiles(tmp / "profiles.npy", n, n_filters, seed=seed)
        res["build_s"] = time.perf_counter() - t0
        raw = np.load(tmp / "profiles.npy", mmap_mode="r")
        queries = _queries(raw, mean, std, repeat + 1, seed)
        times = []
        for i, (row, q) in enumerate(queries):
            t = time.perf_counter()
            ids, _ = stream_neighbours(q, raw, mean, std, k=k, exclude=[row])
            if i:  # query 0 is the warm-up
                times.append(time.perf_counter() - t)
        res["query_s"] = statistics.median(times)
        res["query_max_s"] = max(times)
        res["peak_rss_gb"] = _peak_rss_gb()
        del raw
        if naive_n:
            m = min(naive_n, n)
            mean_s, std_s = write_synthetic_profiles(tmp / "small.npy", m, n_filters, seed=seed + 1)
            small = np.load(tmp / "small.npy", mmap_mode="r")
            pairs = _queries(small, mean_s, std_s, repeat + 1, seed)
            t = time.perf_counter()
            bank = standardize_bank(small, mean_s, std_s)  # the in-memory path keeps this matrix
            res["naive_standardize_s"] = time.perf_counter() - t
            naive_t, stream_t = [], []
            for i, (row, q) in enumerate(pairs):  # alternate, so that load from other jobs hits both
                t = time.perf_counter()
                a, _ = cosine_neighbours(q, bank, k=k, exclude=[row])
                t_naive = time.perf_counter() - t
                t = time.perf_counter()
                b, _ = stream_neighbours(q, small, mean_s, std_s, k=k, exclude=[row])
                t_stream = time.perf_counter() - t
                if not np.array_equal(a, b):
                    raise RuntimeError(f"streamed and in-memory neighbours differ for row {row}: {b} vs {a}")
                if i:
                    naive_t.append(t_naive)
                    stream_t.append(t_stream)
            del bank
            res["naive_n"] = m
            res["naive_query_s"] = statistics.median(naive_t)
            res["stream_query_s_at_naive_n"] = statistics.median(stream_t)
            res["ratio_stream_over_naive"] = res["stream_query_s_at_naive_n"] / res["naive_query_s"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def print_neighbors(res: dict[str, Any]) -> None:
    """The table ``psal bench neighbors`` prints."""
    m = res["machine"]
    print(f"psal bench neighbors: synthetic float16 index {res['n']:,} x {res['n_filters']:,} "
          f"({res['index_gb']:.2f} GB; dense float32 would be {res['dense_float32_gb']:.2f} GB), "
          f"{m['cpu']}, {m['cores']} cores; median of {res['repeat']} top-{res['k']} queries after a warm-up")
    print(f"  {'index written (build_s)':<46} {res['build_s']:9.2f} s")
    print(f"  {'top-k query, streamed (query_s)':<46} {res['query_s']:9.3f} s  (max {res['query_max_s']:.3f} s)")
    print(f"  {'peak resident memory (peak_rss_gb)':<46} {res['peak_rss_gb']:9.2f} GB  "
          f"(before the index: {res['baseline_rss_gb']:.2f} GB)")
    ok = res["query_s"] <= 1.0 and res["peak_rss_gb"] < 24
    print(f"  target: <= 1 s per query, memory well under 24 GB -> {'met' if ok else 'MISSED'}")
    if "naive_n" in res:
        dense = res["naive_n"] * res["n_filters"] * 4 / 1e9
        print(f"  side by side at {res['naive_n']:,} rows: in-memory path {res['naive_standardize_s']:.2f} s to build "
              f"the float32 matrix ({dense:.2f} GB) once, then {res['naive_query_s']:.3f} s per query; streamed "
              f"{res['stream_query_s_at_naive_n']:.3f} s per query (x{res['ratio_stream_over_naive']:.1f}), "
              "same neighbours")
