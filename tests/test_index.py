"""The profile index: rows against a plain autograd loop, the table, resuming, refusal of wrong models."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import psal_widgets.index.builder as index_builder
from psal_widgets.index import IndexError_, ProfileIndex, build_index, index_for

from .conftest import VAL800, needs_data
from .tinydata import tiny_model, tiny_setup

DATA_FILES = ("profiles.npy", "features.npy", "table.csv")


@pytest.fixture
def setup(tmp_path):
    return tiny_setup(tmp_path, n=10)


def _digest(folder) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in DATA_FILES}


def _reference(explainer, ds):
    """Per-image raw profiles, features and logits from a plain loop, no package kernel."""
    model = explainer.model.module
    weights = [model.conv1.weight, model.dw.weight, model.pw.weight]
    profiles, feats, logits = [], [], []
    for i in range(len(ds)):
        x, y = ds[i]
        h = torch.tanh(model.bn1(model.conv1(x[None])))
        h = torch.tanh(model.pw(torch.tanh(model.dw(h))))
        f = h.mean(dim=(2, 3))
        out = model.fc(f)
        grads = torch.autograd.grad(F.cross_entropy(out, torch.tensor([y])), weights)
        profiles.append(torch.cat([g.abs().mean(dim=(1, 2, 3)) for g in grads]).detach())
        feats.append(f[0].detach())
        logits.append(out[0].detach())
    return torch.stack(profiles).numpy(), torch.stack(feats).numpy(), torch.stack(logits)


def test_rows_and_table_match_a_plain_loop(setup, tmp_path):
    explainer, ds, _ = setup
    idx = build_index(explainer.model, ds, tmp_path / "idx", batch_size=4, progress=False)
    ref, feats, logits = _reference(explainer, ds)
    assert idx.raw.dtype == np.float16 and idx.raw.shape == (10, 13)
    assert isinstance(idx.raw, np.memmap)
    np.testing.assert_allclose(idx.raw.astype(np.float64), ref, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(idx.features.astype(np.float64), feats, rtol=1e-3, atol=1e-4)
    probs = torch.softmax(logits, dim=1)
    np.testing.assert_array_equal(idx.label, ds.labels)
    np.testing.assert_array_equal(idx.pred, logits.argmax(dim=1).numpy())
    np.testing.assert_array_equal(idx.correct, idx.pred == np.asarray(ds.labels))
    np.testing.assert_array_equal(idx.top5[:, :3], probs.argsort(dim=1, descending=True).numpy())
    assert (idx.top5[:, 3:] == -1).all()  # only 3 classes: the rest is padding
    np.testing.assert_allclose(idx.top5_prob[:, :3], probs.sort(dim=1, descending=True).values.numpy(), rtol=1e-5)
    ce = F.cross_entropy(logits, torch.tensor(ds.labels), reduction="none").numpy()
    np.testing.assert_allclose(idx.loss, ce, rtol=1e-5)
    assert idx.files == ds.relative_files()
    np.testing.assert_array_equal(idx.rows_for([idx.files[7], idx.files[2]]), [7, 2])
    # Reopened from disk: the same numbers (CSV floats read back bit for bit).
    again = ProfileIndex.open(tmp_path / "idx", verify=True)
    np.testing.assert_array_equal(again.top5_prob, idx.top5_prob)
    np.testing.assert_array_equal(again.loss, idx.loss)
    meta = again.meta
    assert meta["n"] == 10 and meta["model"] == "tiny" and meta["weights_id"] == explainer.model.weights_id
    assert set(meta["files"]) == set(DATA_FILES)
    assert meta["feature_layer"] == "fc" and meta["feature_dim"] == 5
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial or lock left


def test_standardized_uses_the_given_statistics(setup, tmp_path):
    explainer, ds, _ = setup
    idx = build_index(explainer.model, ds, tmp_path / "idx", batch_size=4, progress=False)
    stats = explainer.stats
    std = stats.std.clone()
    std[3] = 0.0  # a dead filter divides by 1
    from psal_widgets.kernels.stats import FilterStats

    dead = FilterStats(stats.mean, std, {})
    z = idx.standardized(dead, chunk=3)
    expected = (idx.raw.astype(np.float64) - stats.mean.numpy()) / np.where(std.numpy() <= 1e-14, 1, std.numpy())
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(idx.standardized(dead, rows=[5, 1, 5]), expected[[5, 1, 5]], rtol=1e-6, atol=1e-6)
    assert float(std[3]) == 0.0  # the statistics were not modified


def test_interrupted_build_resumes_to_identical_bytes(setup, tmp_path, monkeypatch):
    explainer, ds, _ = setup
    full = build_index(explainer.model, ds, tmp_path / "full", batch_size=2, progress=False)
    assert full.build_info["status"] == "built"

    real = index_builder.filter_profiles
    calls = {"n": 0}

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(index_builder, "filter_profiles", dies_after_three)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_index(explainer.model, ds, out, batch_size=2, progress=False, checkpoint_every=2)
    assert not out.exists()  # nothing half-written is visible
    progress = json.loads((tmp_path / ".resumed.partial" / "progress.json").read_text())
    assert progress["rows_done"] == 4  # the checkpoint after two batches
    with pytest.raises(IndexError_, match="run the same `psal index` command again"):
        ProfileIndex.open(out)
    monkeypatch.setattr(index_builder, "filter_profiles", real)
    resumed = build_index(explainer.model, ds, out, batch_size=2, progress=False, checkpoint_every=2)
    assert resumed.build_info["status"] == "resumed" and resumed.build_info["resumed_from"] == 4
    assert resumed.build_info["rows_computed"] == 6
    assert _digest(out) == _digest(tmp_path / "full")
    assert not (tmp_path / ".resumed.partial").exists()
    # The same command once more: nothing to do.
    assert build_index(explainer.model, ds, out, batch_size=2, progress=False).build_info["status"] == "up to date"


@pytest.mark.slow
def test_sigkill_and_restart_in_a_subprocess(setup, tmp_path):
    """A real process killed with SIGKILL mid-build, then the same build run again."""
    explainer, ds, csv_path = setup
    full = build_index(explainer.model, ds, tmp_path / "full", batch_size=2, progress=False)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        import psal_widgets.index.builder as ix
        from psal_widgets.data import open_dataset
        from tests.tinydata import tiny_model
        model = tiny_model(0)
        ds = open_dataset({str(csv_path)!r}, labels=model.labels, preprocess=model.preprocess)
        kill = sys.argv[1] == "kill"
        real, n = ix.filter_profiles, [0]
        def maybe_die(*a, **k):
            n[0] += 1
            if kill and n[0] > 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        ix.filter_profiles = maybe_die
        ix.build_index(model, ds, {str(tmp_path / "killed")!r}, batch_size=2, progress=False, checkpoint_every=1)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    killed = subprocess.run([sys.executable, "-c", script, "kill"], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    state = json.loads((tmp_path / ".killed.partial" / "progress.json").read_text())
    assert state["rows_done"] == 6
    done = subprocess.run([sys.executable, "-c", script, "resume"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _digest(tmp_path / "killed") == _digest(full.path)


def test_index_for_refuses_another_model_and_missing_files(setup, tmp_path):
    explainer, ds, _ = setup
    build_index(explainer.model, ds, tmp_path / "idx", batch_size=4, progress=False)
    from psal_widgets.explainer import Explainer

    other = Explainer(tiny_model(seed=1), stats=None, mode="raw")  # same architecture, other weights
    with pytest.raises(IndexError_, match="other weights"):
        index_for(other, ds, path=tmp_path / "idx", progress=False)
    renamed = tiny_model(seed=0)
    renamed.name = "tiny-v2"
    with pytest.raises(IndexError_, match="built for model 'tiny'"):
        index_for(Explainer(renamed, stats=None, mode="raw"), ds, path=tmp_path / "idx", progress=False)
    small = build_index(explainer.model, ds.subset([0, 1, 2]), tmp_path / "small", batch_size=4, progress=False)
    assert len(small) == 3
    with pytest.raises(IndexError_, match="does not hold 7 of the 10 files"):
        index_for(explainer, ds, path=tmp_path / "small", progress=False)


def test_index_for_aligns_a_larger_index_and_uses_the_cache(setup, tmp_path, monkeypatch):
    explainer, ds, _ = setup
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    stats_before = {p.name: p.read_bytes() for p in (tmp_path / "stats").iterdir()}
    idx = index_for(explainer, ds, progress=False)  # built in the user cache
    assert str(idx.path).startswith(str(tmp_path / "cache" / "psal_widgets" / "index" / "tiny"))
    sub = ds.subset([7, 2, 4])
    aligned = index_for(explainer, sub, progress=False)  # found in the cache, not rebuilt
    assert aligned.path == idx.path
    assert aligned.files == sub.relative_files()
    np.testing.assert_array_equal(aligned.raw, idx.raw[[7, 2, 4]])
    np.testing.assert_array_equal(aligned.features, idx.features[[7, 2, 4]])
    expected = idx.standardized(explainer.stats, rows=[7, 2, 4])
    np.testing.assert_array_equal(aligned.standardized(explainer.stats), expected)
    np.testing.assert_array_equal(aligned.loss, idx.loss[[7, 2, 4]])
    # Computing the index never touched the statistics.
    assert {p.name: p.read_bytes() for p in (tmp_path / "stats").iterdir()} == stats_before


def test_damaged_index_is_refused(setup, tmp_path):
    explainer, ds, _ = setup
    build_index(explainer.model, ds, tmp_path / "idx", batch_size=4, progress=False)
    table = tmp_path / "idx" / "table.csv"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:-1]))
    with pytest.raises(IndexError_, match="damaged: table.csv"):
        ProfileIndex.open(tmp_path / "idx")
    table.write_text("".join(lines[:-1]) + lines[-2])  # same size class of damage: content differs
    with pytest.raises(IndexError_):
        ProfileIndex.open(tmp_path / "idx", verify=True)


# -- the command line ----------------------------------------------------------------------------
def test_cli_refuses_a_file_as_out_before_loading_the_model(tmp_path, capsys):
    from psal_widgets.cli import main

    target = tmp_path / "taken"
    target.write_text("x")
    assert main(["index", "--data", str(tmp_path), "--out", str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_cli_parses_the_experiment_options():
    from psal_widgets.cli import build_parser

    args = build_parser().parse_args(["experiment", "pruning", "--data", "d.csv", "--k", "1,5", "--perturb", "0.001",
                                      "--recipe", "paper-literal", "--images", "correct"])
    assert (args.k, args.perturb, args.recipe, args.images) == ("1,5", 0.001, "paper-literal", "correct")
    args = build_parser().parse_args(["experiment", "neighbors", "--data", "d.csv", "--n-neighbors", "7"])
    assert args.n_neighbors == 7
    args = build_parser().parse_args(["index", "--data", "d.csv", "--limit", "5", "--batch-size", "4", "--force"])
    assert (args.limit, args.batch_size, args.force) == (5, 4, True)


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_cli_index_on_real_images_then_up_to_date(tmp_path, capsys):
    from psal_widgets.cli import main

    out = tmp_path / "idx"
    args = ["index", "--data", str(VAL800 / "labels.csv"), "--limit", "4", "--out", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "top-1 accuracy" in printed and "wrote" in printed
    idx = ProfileIndex.open(out, verify=True)
    assert len(idx) == 4 and idx.n_filters == 21008 and idx.features.shape == (4, 1280)
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out


def test_the_cache_never_mixes_two_folders_with_the_same_file_names(setup, tmp_path, monkeypatch):
    from psal_widgets.data import open_dataset

    from .tinydata import make_dataset_csv

    explainer, ds, _ = setup
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = index_for(explainer, ds, progress=False)
    other_csv = make_dataset_csv(tmp_path / "other", 10, seed=5)  # same names and labels, other pictures
    other = open_dataset(other_csv, labels=explainer.model.labels, preprocess=explainer.model.preprocess)
    assert other.relative_files() == ds.relative_files() and other.labels == ds.labels
    second = index_for(explainer, other, progress=False)
    assert second.path != first.path
    assert not np.array_equal(second.raw, first.raw)
    # An index named explicitly may come from a moved copy of the data: matched by relative names.
    assert index_for(explainer, other, path=first.path, progress=False).path == first.path
