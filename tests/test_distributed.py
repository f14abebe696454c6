"""``psal stats`` / ``psal index`` on several processes (torch.distributed, gloo on the CPU).

Two ranks are started as torchrun starts them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` in their environment) and their results are compared with one
plain process over the same data: the statistics (Chan's merge) within 1e-6 relative, the
per-sample results and skipped images in dataset order, and the sharded index, opened as one,
row for row (files, labels, predictions, profiles, neighbours).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from psal_widgets.distributed import SINGLE, init_distributed, shard_range, torchrun_env
from psal_widgets.index import MANIFEST_FILE, IndexError_, ProfileIndex, build_index
from psal_widgets.kernels.stats import RunningMoments, merge_moments
from psal_widgets.sharded_rows import ShardedRows

from .tinydata import make_dataset_csv, photo, tiny_model

ROOT = Path(__file__).resolve().parents[1]
BAD = (1, 6)  # unreadable images of the test data: one in each rank's block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    # One thread per rank: two ranks share this machine's cores.
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
            **extra}


# -- the merge and the split, without processes ------------------------------------------------
def test_chan_merge_of_uneven_shards_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.lognormal(mean=-3.0, sigma=1.5, size=(61, 7)) + 1e3  # large offset: a naive formula loses digits
    sizes = [17, 0, 1, 40, 3]  # uneven, an empty shard, a shard of one
    bounds = np.cumsum([0, *sizes])
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        m = RunningMoments(7)
        for start in range(a, b, 5):  # each shard streamed in batches, as a rank does
            m.update(torch.from_numpy(data[start : min(b, start + 5)]))
        parts.append((m.n, m.mean, m.m2))
    merged = merge_moments(parts, 7)
    assert merged.n == 61
    np.testing.assert_allclose(merged.mean.numpy(), data.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(merged.std().numpy() ** 2, data.var(axis=0, ddof=1), rtol=1e-9)
    # Any order of the boundaries gives the same moments (to float64 rounding).
    one = RunningMoments(7)
    one.update(torch.from_numpy(data))
    np.testing.assert_allclose(merged.m2.numpy(), one.m2.numpy(), rtol=1e-9)
    empty = merge_moments([(0, torch.zeros(7), torch.zeros(7))], 7)
    assert empty.n == 0 and empty.std().abs().sum() == 0


def test_shards_are_contiguous_and_cover_the_data():
    for n in (0, 1, 3, 10, 11):
        for world in (1, 2, 3, 4):
            ranges = [shard_range(n, r, world) for r in range(world)]
            assert [i for rg in ranges for i in rg] == list(range(n))
            assert max(len(rg) for rg in ranges) - min(len(rg) for rg in ranges) <= 1
    with pytest.raises(ValueError):
        shard_range(5, 2, 2)


def test_a_plain_run_initialises_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() is None
    with init_distributed(device="cpu") as dist:
        assert dist is SINGLE and not dist.enabled and dist.is_main
        assert dist.device_for("cpu") == "cpu" and dist.shard(5) == range(5)
        assert dist.all_gather_objects(3) == [3] and dist.run_on_main(lambda: 4) == 4
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with init_distributed(device="cpu") as dist:  # torchrun --nproc_per_node=1: a plain run
        assert dist is SINGLE
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK=3"):
        torchrun_env()


def test_sharded_rows_read_like_the_concatenation(tmp_path):
    rng = np.random.default_rng(1)
    blocks = [rng.standard_normal((n, 4)).astype(np.float16) for n in (3, 0, 5, 2)]
    for i, b in enumerate(blocks):
        np.save(tmp_path / f"b{i}.npy", b)
    maps = [np.load(tmp_path / f"b{i}.npy", mmap_mode="r") for i in range(len(blocks))]
    whole = np.concatenate(blocks)
    rows = ShardedRows(maps)
    assert rows.shape == whole.shape and rows.dtype == whole.dtype and rows.ndim == 2 and len(rows) == 10
    np.testing.assert_array_equal(np.asarray(rows), whole)
    for key in (slice(None), slice(2, 9), slice(1, 9, 3), slice(8, 1, -2), slice(4, 4), 0, 7, -1,
                [9, 0, 3, 3], np.array([4, 2]), whole[:, 0] > 0, (slice(1, 6), slice(1, 3)), (3, 2),
                (np.array([7, 1]), [0, 3])):
        np.testing.assert_array_equal(rows[key], whole[key])
    np.testing.assert_array_equal(rows.astype(np.float64), whole.astype(np.float64))
    with pytest.raises(IndexError):
        rows[10]


# -- two gloo ranks against one process --------------------------------------------------------
_RANK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from psal_widgets.data import open_dataset
    from psal_widgets.distributed import init_distributed
    from psal_widgets.index import build_index
    from psal_widgets.validation import run_stats
    from tests.tinydata import tiny_model

    csv, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    model = tiny_model(0)
    ds = open_dataset(csv, labels=model.labels, preprocess=model.preprocess)
    with init_distributed(device="cpu") as dist:
        assert dist.world_size == 2 and dist.backend == "gloo", dist
        if mode == "more":
            # A build that finds rank 0's shard complete in the hidden folder continues from it.
            info = build_index(model, ds, out / "resumed", batch_size=2, progress=False, dist=dist).build_info
            (out / f"resumed{dist.rank}.json").write_text(json.dumps(info))
            # Rank 1's block holds an unreadable image, rank 0's does not.
            try:
                run_stats(model, ds.subset([0, 2, 3, 4, 5, 6, 7, 8]), out / "strict", batch_size=2, progress=False,
                          num_workers=0, strict=True, dist=dist)
            except Exception as err:
                (out / f"strict{dist.rank}.txt").write_text(f"{type(err).__name__}: {err}")
                sys.exit(3)
            sys.exit(0)
        stats, samples = run_stats(model, ds, out / "stats", batch_size=2, progress=False, keep_profiles=True,
                                   num_workers=0, checkpoint_every=1, dist=dist)
        idx = build_index(model, ds, out / "index", batch_size=2, progress=False, dist=dist)
        again = build_index(model, ds, out / "index", batch_size=2, progress=False, dist=dist)
        report = {"n": stats.meta["n"], "files": samples.files, "rows": len(idx), "status": idx.build_info["status"],
                  "again": again.build_info["status"], "profiles": samples.profiles is not None}
        (out / f"rank{dist.rank}.json").write_text(json.dumps(report))
""")


def _launch_ranks(csv_path: Path, out: Path, mode: str = "full", world: int = 2) -> list[tuple[int, str]]:
    """Start the ranks as torchrun would and wait for them: ``(exit code, stderr)`` of each."""
    port = str(_free_port())
    out.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen([sys.executable, "-c", _RANK, str(csv_path), str(out), mode], cwd=ROOT,
                         env=_env(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world),
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(world)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, err) for p, (_, err) in zip(procs, outputs, strict=True)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process stats, samples, index; the folder the two ranks wrote; the dataset)."""
    from psal_widgets.data import open_dataset
    from psal_widgets.store import load_samples, load_stats
    from psal_widgets.validation import run_stats

    base = tmp_path_factory.mktemp("dist")
    csv_path = make_dataset_csv(base / "data", 9)
    for i in BAD:
        (base / "data" / "images" / f"img_{i:03d}.png").write_bytes(b"not an image")
    model = tiny_model(0)
    ds = open_dataset(csv_path, labels=model.labels, preprocess=model.preprocess)
    run_stats(model, ds, base / "one" / "stats", batch_size=4, progress=False, keep_profiles=True, num_workers=0)
    single = build_index(model, ds, base / "one" / "index", batch_size=4, progress=False)
    for r, (code, err) in enumerate(_launch_ranks(csv_path, base / "two")):
        assert code == 0, f"rank {r}: {err[-3000:]}"
    return {
        "ds": ds, "model": model, "single": single, "two": base / "two",
        "stats1": load_stats(base / "one" / "stats"), "samples1": load_samples(base / "one" / "stats"),
        "stats2": load_stats(base / "two" / "stats"), "samples2": load_samples(base / "two" / "stats"),
    }


def test_two_ranks_give_the_statistics_of_one_process(runs):
    s1, s2 = runs["stats1"], runs["stats2"]
    assert s2.meta["n"] == s1.meta["n"] == 9 - len(BAD)
    np.testing.assert_allclose(s2.mean.numpy(), s1.mean.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(s2.std.numpy(), s1.std.numpy(), rtol=1e-6, atol=0)
    assert s2.meta["skipped"] == s1.meta["skipped"] and [d["file"] for d in s2.meta["skipped"]] == [
        f"images/img_{i:03d}.png" for i in BAD]
    assert s2.meta["accuracy"] == pytest.approx(s1.meta["accuracy"])
    assert s2.meta["dead_filters"] == s1.meta["dead_filters"]
    assert s2.meta["distributed"]["world_size"] == 2 and s2.meta["distributed"]["backend"] == "gloo"
    assert [s["n"] for s in s2.meta["distributed"]["shards"]] == [3, 4]
    a, b = runs["samples1"], runs["samples2"]
    assert b.files == a.files  # dataset order, unreadable images left out
    np.testing.assert_array_equal(b.label, a.label)
    np.testing.assert_array_equal(b.pred, a.pred)
    np.testing.assert_allclose(b.prob_label, a.prob_label, rtol=1e-5)
    np.testing.assert_allclose(b.prob_pred, a.prob_pred, rtol=1e-5)
    np.testing.assert_allclose(b.profiles.astype(np.float64), a.profiles.astype(np.float64), rtol=2e-3, atol=1e-7)
    # Every rank came back with the merged result; only rank 0 holds the kept profiles.
    reports = [json.loads((runs["two"] / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["n"] == 7 and r["files"] == a.files for r in reports)
    assert [r["profiles"] for r in reports] == [True, False]
    assert not any(p.name.endswith((".partial", ".lock")) for p in runs["two"].iterdir())


def test_the_sharded_index_reads_as_the_single_one(runs):
    single, folder = runs["single"], runs["two"] / "index"
    assert (folder / MANIFEST_FILE).is_file() and not (folder / "meta.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_FILE, "shard-0000", "shard-0001"]
    idx = ProfileIndex.open(folder, verify=True)
    assert len(idx.shards) == 2 and [len(s) for s in idx.shards] == [3, 4]
    assert len(idx) == len(single) == 7 and idx.n_filters == single.n_filters
    assert idx.files == single.files
    for name in ("label", "pred", "top5", "correct"):
        np.testing.assert_array_equal(getattr(idx, name), getattr(single, name))
    np.testing.assert_allclose(idx.top5_prob, single.top5_prob, rtol=1e-5)
    np.testing.assert_allclose(idx.loss, single.loss, rtol=1e-5)
    # Each image's profile is computed on its own: the rows are the very same float16 values.
    np.testing.assert_array_equal(np.asarray(idx.raw), np.asarray(single.raw))
    np.testing.assert_array_equal(idx.features, single.features)
    assert idx.skipped == single.skipped
    for k in ("model", "weights_id", "layout_checksum", "preprocess", "files_hash", "root_hash", "n", "accuracy",
              "n_incorrect", "feature_dim", "n_filters"):
        assert idx.meta[k] == single.meta[k], k
    idx.check_model(runs["model"])
    reports = [json.loads((runs["two"] / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["status"] for r in reports] == ["built", "built"] and [r["again"] for r in reports] == ["up to date"] * 2
    # A one-process build of the same data accepts the sharded folder as it is.
    same = build_index(runs["model"], runs["ds"], folder, batch_size=4, progress=False)
    assert same.build_info["status"] == "up to date" and len(same.shards) == 2


def test_the_sharded_index_answers_every_query_as_the_single_one(runs):
    single, idx, ds = runs["single"], ProfileIndex.open(runs["two"] / "index"), runs["ds"]
    stats = runs["stats1"]
    np.testing.assert_array_equal(idx.standardized(stats), single.standardized(stats))
    rows = [5, 0, 3]
    np.testing.assert_array_equal(idx.standardized(stats, rows=rows), single.standardized(stats, rows=rows))
    z = single.standardized(stats)
    for i in range(len(single)):
        got = idx.neighbours(z[i], stats, k=4, exclude=[i])
        want = single.neighbours(z[i], stats, k=4, exclude=[i])
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
    got, want = idx.all_neighbours(stats, k=3), single.all_neighbours(stats, k=3)
    np.testing.assert_array_equal(got[0], want[0])
    usable = idx.usable(ds)
    assert usable.relative_files() == single.usable(ds).relative_files()
    aligned = idx.aligned(usable)
    assert aligned is idx
    files = list(reversed(single.files[1:5]))
    np.testing.assert_array_equal(idx.rows_for(files), single.rows_for(files))
    sub, sub1 = idx.subset(idx.rows_for(files)), single.subset(single.rows_for(files))
    np.testing.assert_array_equal(sub.raw, sub1.raw)
    np.testing.assert_array_equal(sub.features, sub1.features)
    np.testing.assert_array_equal(sub.label, sub1.label)
    q = z[2]
    np.testing.assert_array_equal(sub.neighbours(q, stats, k=2)[0], sub1.neighbours(q, stats, k=2)[0])
    with pytest.raises(IndexError_, match="skipped as unreadable"):
        idx.rows_for([f"images/img_{BAD[0]:03d}.png"])


def test_resuming_a_sharded_build_and_an_error_on_one_rank(runs, tmp_path):
    """A sharded build continues from the shards already complete (what another world size left
    is removed); no rank waits forever for one that gave up: each ends with a message naming
    the failure."""
    import shutil

    work = tmp_path / ".resumed.partial"
    shutil.copytree(runs["two"] / "index" / "shard-0000", work / "shard-0000")
    (work / "shard-0007").mkdir()
    (work / "progress.json").write_text("{}")
    csv_path = Path(runs["ds"].root) / "labels.csv"
    codes = _launch_ranks(csv_path, tmp_path, "more")
    assert [c for c, _ in codes] == [3, 3], [e[-2000:] for _, e in codes]
    infos = [json.loads((tmp_path / f"resumed{r}.json").read_text()) for r in range(2)]
    assert [(i["status"], i["resumed_from"], i["rows_computed"]) for i in infos] == [("resumed", 4, 5)] * 2
    idx, single = ProfileIndex.open(tmp_path / "resumed", verify=True), runs["single"]
    assert sorted(p.name for p in idx.path.iterdir()) == [MANIFEST_FILE, "shard-0000", "shard-0001"]
    assert idx.files == single.files and idx.skipped == single.skipped
    np.testing.assert_array_equal(np.asarray(idx.raw), np.asarray(single.raw))
    assert not work.exists()
    rank0, rank1 = ((tmp_path / f"strict{r}.txt").read_text() for r in range(2))
    assert rank1.startswith("ImageError") and "--strict" in rank1
    assert rank0.startswith("DistributedError: rank 1 of 2 failed") and "--strict" in rank0
    assert not (tmp_path / "strict").exists() and not (tmp_path / ".strict.lock").exists()


def test_a_damaged_shard_is_refused(runs, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(runs["two"] / "index", folder)
    meta = folder / "shard-0001" / "meta.json"
    meta.write_text(meta.read_text().replace('"n": 4', '"n": 4 '))
    with pytest.raises(IndexError_, match="does not match manifest.json"):
        ProfileIndex.open(folder)
    shutil.rmtree(folder / "shard-0001")
    with pytest.raises(IndexError_, match="shard-0001 is missing"):
        ProfileIndex.open(folder)


# -- the command itself under torchrun ---------------------------------------------------------
@pytest.mark.slow
def test_torchrun_runs_the_command(tmp_path):
    """``torchrun --nproc_per_node=2 -m psal_widgets.cli stats|index`` with the default model."""
    from psal_widgets.cli import main
    from psal_widgets.store import load_stats

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = ["file,label"]
    for i in range(4):
        photo(100 + i, size=64).save(data / "images" / f"p{i}.png")
        lines.append(f"images/p{i}.png,{(281, 1, 2)[i % 3]}")  # ImageNet class indices
    csv_path = data / "labels.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    common = ["--data", str(csv_path), "--device", "cpu", "--quiet", "--batch-size", "2"]
    # The reference on one thread, as each rank runs: float32 sums over other thread counts
    # differ in their last bits, which is not what this test is about.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["stats", *common, "--out", str(tmp_path / "s1")]) == 0
        assert main(["index", *common, "--out", str(tmp_path / "i1"), "--stats", str(tmp_path / "s1")]) == 0
    finally:
        torch.set_num_threads(threads)
    for command, out in (("stats", "s2"), ("index", "i2")):
        run = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
             f"--master_port={_free_port()}", "-m", "psal_widgets.cli", command, *common,
             "--out", str(tmp_path / out)],
            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "on 2 processes (gloo)" in run.stdout and run.stdout.count("wrote") == 1, run.stdout
    s1, s2 = load_stats(tmp_path / "s1"), load_stats(tmp_path / "s2")
    np.testing.assert_allclose(s2.mean.numpy(), s1.mean.numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(s2.std.numpy(), s1.std.numpy(), rtol=1e-6, atol=0)
    one, two = ProfileIndex.open(tmp_path / "i1"), ProfileIndex.open(tmp_path / "i2")
    assert two.files == one.files and len(two.shards) == 2
    np.testing.assert_array_equal(two.pred, one.pred)
    np.testing.assert_allclose(np.asarray(two.raw, dtype=np.float64), np.asarray(one.raw, dtype=np.float64),
                               rtol=2e-3, atol=1e-7)
