"""Neighbour queries streamed over a memory-mapped float16 index (issue 9 §4) and
``psal bench neighbors`` on a tiny index (keys and sanity only: timings belong to the bench)."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from psal_widgets.kernels.filters import FilterIndex
from psal_widgets.kernels.neighbours import (
    all_neighbours,
    cosine_neighbours,
    layer_columns,
    standardize_bank,
    stream_all_neighbours,
    stream_neighbours,
)

from .conftest import make_tiny

N, F = 120, 13  # the tiny model's 13 filters: conv1 0..3, dw 4..7, pw 8..12


@pytest.fixture(scope="module")
def bank_on_disk(tmp_path_factory):
    rng = np.random.default_rng(3)
    raw = rng.gamma(2.0, 1.0, size=(N, F)).astype(np.float16)
    mean, std = rng.uniform(1, 2, F), rng.uniform(0.5, 1.5, F)
    std[5] = 0.0  # a dead filter: divided by 1
    raw[9] = 0  # a row far from everything
    path = tmp_path_factory.mktemp("bank") / "profiles.npy"
    np.save(path, raw)
    return np.load(path, mmap_mode="r"), raw, mean, std


def _reference(query: np.ndarray, raw: np.ndarray, mean, std, cols: slice) -> np.ndarray:
    """Cosine similarities in float64, one row at a time (independent of both kernels)."""
    sd = np.where(std <= 1e-14, 1.0, std)
    q = query[cols]
    out = []
    for row in raw.astype(np.float64):
        z = ((row - mean) / sd)[cols]
        out.append(float(z @ q / (np.linalg.norm(z) * np.linalg.norm(q))))
    return np.array(out)


@pytest.mark.parametrize("layers", [None, (0, 0), (1, 2), (-1, -1)], ids=["all", "shallow", "mid+deep", "deep"])
@pytest.mark.parametrize("chunk", [1, 7, 32])
def test_streamed_query_equals_the_in_memory_path(bank_on_disk, layers, chunk):
    mm, raw, mean, std = bank_on_disk
    cols = layer_columns(FilterIndex(make_tiny()), layers)
    bank = standardize_bank(raw, mean, std)
    query = bank[17] + np.random.default_rng(0).normal(scale=0.5, size=F)
    ids, sims = stream_neighbours(query, mm, mean, std, k=10, columns=cols, exclude=[17], chunk=chunk)
    ref_ids, ref_sims = cosine_neighbours(query, bank, k=10, columns=cols, exclude=[17])
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
    loop = _reference(query, raw, mean, std, cols)
    loop[17] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-loop, kind="stable")[:10])
    np.testing.assert_allclose(sims, loop[ids], rtol=1e-9)  # re-scored in float64
    assert 17 not in ids and ids.dtype == np.int64 and sims.dtype == np.float64


def test_a_subset_view_the_exclusions_and_small_k(bank_on_disk):
    mm, raw, mean, std = bank_on_disk
    rows = np.random.default_rng(1).permutation(N)[:50]
    bank = standardize_bank(raw[rows], mean, std)
    query = bank[4] * 0.9 + 0.1
    ids, sims = stream_neighbours(query, mm, mean, std, k=50, rows=rows, exclude=[4, 11], chunk=8)
    ref_ids, ref_sims = cosine_neighbours(query, bank, k=50, exclude=[4, 11])
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
    assert len(ids) == 48  # every row but the two excluded ones
    one, _ = stream_neighbours(query, mm, mean, std, k=1, rows=rows)
    assert one.tolist() == [4]  # the query's own row is its nearest neighbour
    # A zero query is at similarity 0 to everything: ties, lower row first, across chunks.
    for chunk in (1, 5, 64):
        zero_ids, zero_sims = stream_neighbours(np.zeros(F), mm, mean, std, k=30, chunk=chunk)
        assert zero_ids.tolist() == list(range(30)) and zero_sims.tolist() == [0.0] * 30
        rev = np.arange(N)[::-1]
        zero_ids, _ = stream_neighbours(np.zeros(F), mm, mean, std, k=30, rows=rev, chunk=chunk)
        assert zero_ids.tolist() == list(range(30))  # rows of the view, read in another order


def test_memory_stays_a_few_chunks(tmp_path):
    """The query never allocates anything like the N x F float32 matrix (NumPy allocations are
    traced; the torch chunk buffers are ``chunk x F``)."""
    rng = np.random.default_rng(0)
    n, f = 3000, 400  # the float32 matrix would be 4.8 MB
    path = tmp_path / "profiles.npy"
    np.save(path, rng.gamma(2.0, 1.0, size=(n, f)).astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    mean, std = np.full(f, 2.0), np.full(f, 1.4)
    query = rng.normal(size=f)
    tracemalloc.start()
    try:
        ids, _ = stream_neighbours(query, mm, mean, std, k=10, chunk=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * f * 4 / 10
    ref, _ = cosine_neighbours(query, standardize_bank(np.asarray(mm), mean, std), k=10)
    np.testing.assert_array_equal(ids, ref)


def test_all_neighbours_streamed_equal_the_in_memory_path(bank_on_disk):
    mm, raw, mean, std = bank_on_disk
    bank = standardize_bank(raw, mean, std)
    for cols in (None, slice(4, 13)):
        nn, sims = stream_all_neighbours(mm, mean, std, k=5, columns=cols, block=16, chunk=9)
        ref_nn, ref_sims = all_neighbours(bank, k=5, columns=cols)
        np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
        # Same rows, except where two candidates tie to float32 rounding.
        differ = nn != ref_nn
        assert np.all(np.abs(sims[differ] - ref_sims[differ]) < 1e-6)
        assert differ.sum() <= 2
        assert not (nn == np.arange(N)[:, None]).any()  # a row never lists itself
    # Rows that standardize to 0 tie at similarity 0 with everything: lower rows first,
    # whatever the chunks (also at the cut between kept and dropped candidates).
    nn, sims = stream_all_neighbours(np.zeros((N, F), dtype=np.float16), np.zeros(F), std, k=20, block=7, chunk=5)
    assert nn[0].tolist() == list(range(1, 21)) and nn[50].tolist() == list(range(20))
    assert np.all(sims == 0)
    with pytest.raises(ValueError, match="k must lie"):
        stream_all_neighbours(mm, mean, std, k=N)


def test_bad_input_names_the_problem(bank_on_disk):
    mm, _, mean, std = bank_on_disk
    q = np.zeros(F)
    with pytest.raises(ValueError, match="another model"):
        stream_neighbours(q, mm, mean[:5], std[:5])
    with pytest.raises(ValueError, match="query has 4 filters"):
        stream_neighbours(q[:4], mm, mean, std)
    with pytest.raises(ValueError, match="k must be at least 1"):
        stream_neighbours(q, mm, mean, std, k=0)
    with pytest.raises(ValueError, match="backend must be"):
        stream_neighbours(q, mm, mean, std, backend="annoy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 120\)"):
        stream_neighbours(q, mm, mean, std, rows=np.array([0, 500]))


def test_faiss_backend_gives_the_same_neighbours_or_says_how_to_get_it(bank_on_disk):
    mm, raw, mean, std = bank_on_disk
    query = standardize_bank(raw, mean, std)[3] + 0.2
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install faiss-cpu"):
            stream_neighbours(query, mm, mean, std, backend="faiss")
        return
    ids, sims = stream_neighbours(query, mm, mean, std, k=10, exclude=[3], backend="faiss", chunk=16)
    ref_ids, ref_sims = stream_neighbours(query, mm, mean, std, k=10, exclude=[3])
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-9)


# -- psal bench neighbors --------------------------------------------------------------------------
def test_synthetic_profiles_have_the_stated_statistics(tmp_path):
    from psal_widgets.bench_neighbors import write_synthetic_profiles

    mean, std = write_synthetic_profiles(tmp_path / "p.npy", 4000, 300, seed=2, rows_per_write=700)
    raw = np.load(tmp_path / "p.npy", mmap_mode="r")
    assert raw.shape == (4000, 300) and raw.dtype == np.float16
    x = np.asarray(raw, dtype=np.float64)
    dead = std == 0
    assert dead.any()  # this seed draws a few dead filters (σ = 0)
    assert np.all(x[:, dead] == 0)
    live = ~dead
    np.testing.assert_allclose(x[:, live].mean(axis=0), mean[live], rtol=0.08)
    np.testing.assert_allclose(x[:, live].std(axis=0), std[live], rtol=0.08)


def test_bench_neighbors_on_a_tiny_index(tmp_path):
    from psal_widgets.bench_neighbors import bench_neighbors

    res = bench_neighbors(n=300, n_filters=64, repeat=3, naive_n=100, folder=str(tmp_path))
    assert 0 < res["baseline_rss_gb"] <= res["peak_rss_gb"]
    for key in ("query_s", "query_max_s", "peak_rss_gb", "build_s", "index_gb", "dense_float32_gb",
                "naive_query_s", "naive_standardize_s", "stream_query_s_at_naive_n", "ratio_stream_over_naive"):
        assert np.isfinite(res[key]) and res[key] > 0, key
    assert res["query_s"] <= res["query_max_s"]
    assert res["index_gb"] == pytest.approx(300 * 64 * 2 / 1e9)
    assert res["naive_n"] == 100 and res["n"] == 300 and res["k"] == 10
    assert list(tmp_path.iterdir()) == []  # the temporary index is gone
    json.dumps(res)  # what --json writes


@pytest.mark.parametrize("args, needle", [
    (["--n", "1"], "--n must be at least 2"),
    (["--n", "20", "--naive-n", "-1"], "--naive-n must be 0"),
])
def test_bench_neighbors_refuses_bad_sizes(args, needle, capsys):
    from psal_widgets.cli import main

    assert main(["bench", "neighbors", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"psal: error: {err[0].split('psal: error: ', 1)[1]}"] and needle in err[0]


def test_bench_neighbors_cli_writes_json(tmp_path, monkeypatch, capsys):
    from psal_widgets.cli import main

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "nb.json"
    assert main(["bench", "neighbors", "--n", "200", "--filters", "32", "--repeat", "2", "--naive-n", "50",
                 "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert {"query_s", "peak_rss_gb", "build_s", "machine"} <= set(got)
    assert {"cpu", "cores"} <= set(got["machine"])
    assert "psal bench neighbors" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["nb.json"]


def test_the_index_reader_streams_its_memmap_and_subsets(bank_on_disk, tmp_path):
    """ProfileIndex.neighbours / all_neighbours (what the session and the experiment call) on
    the memory-mapped profiles, for the whole index and for a reordered subset of it."""
    import torch

    from psal_widgets.index import IndexError_, ProfileIndex
    from psal_widgets.kernels.stats import FilterStats

    mm, raw, mean, std = bank_on_disk
    table = {"label": np.zeros(N, dtype=np.int64), "pred": np.zeros(N, dtype=np.int64),
             "top5": np.zeros((N, 5), dtype=np.int64), "top5_prob": np.zeros((N, 5), dtype=np.float32),
             "correct": np.ones(N, dtype=bool), "loss": np.zeros(N, dtype=np.float32)}
    idx = ProfileIndex(tmp_path, {}, table, [f"{i}.png" for i in range(N)], mm, None)
    stats = FilterStats(torch.from_numpy(mean), torch.from_numpy(std))
    bank = standardize_bank(raw, mean, std)
    query = bank[8] + 0.3
    cols = slice(4, 13)
    got = idx.neighbours(query, stats, k=7, columns=cols, exclude=[8])
    ref = cosine_neighbours(query, bank, k=7, columns=cols, exclude=[8])
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5)
    rows = np.random.default_rng(2).permutation(N)[:40]
    sub = idx.subset(rows)
    got = sub.neighbours(query, stats, k=7)
    ref = cosine_neighbours(query, bank[rows], k=7)
    np.testing.assert_array_equal(got[0], ref[0])  # rows of the subset, not of the file
    nn, _ = sub.all_neighbours(stats, k=3)
    ref_nn, _ = all_neighbours(bank[rows], k=3)
    assert (nn != ref_nn).sum() <= 2
    other = FilterStats(torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    with pytest.raises(IndexError_, match="another model"):
        idx.neighbours(query, other)
