"""The `psal` command as users run it: subprocesses, files written, exit codes and messages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psal_widgets.cli import main

from .conftest import REFERENCE, ROOT, VAL800, needs_data

RAW = ROOT / "raw_images"


def psal(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "psal_widgets.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_explain_writes_the_five_files(tmp_path):
    out = tmp_path / "out"
    run = psal("explain", str(RAW / "grace_hopper.jpg"), "--out", str(out), "--k", "7")
    assert run.returncode == 0, run.stderr
    for name in ("profile.png", "input_saliency.png", "gradcam.png", "result.json", "profile.csv"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "result.json").read_text())
    assert {"model", "n_filters", "label", "prediction", "top_filters"} <= set(result)
    assert result["model"] == "efficientnet_lite0" and result["n_filters"] == 21008
    # raw_images/labels.csv knows the true class; the default model gets it wrong (GUIDE §3).
    assert result["label"] == {"index": 652, "name": "military uniform", "source": "known"}
    assert [p["name"] for p in result["prediction"][:2]] == ["academic gown", "mortarboard"]
    probs = [p["prob"] for p in result["prediction"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    top = result["top_filters"]
    assert len(top) == 7 and set(top[0]) == {"id", "layer", "channel", "saliency"}
    assert [t["saliency"] for t in top] == sorted((t["saliency"] for t in top), reverse=True)
    lines = (out / "profile.csv").read_text().splitlines()
    assert lines[0] == "id,layer,channel,saliency,raw" and len(lines) == 21008 + 1
    row = lines[1 + top[0]["id"]].split(",")
    assert row[1] == top[0]["layer"] and int(row[2]) == top[0]["channel"]
    assert float(row[3]) == pytest.approx(top[0]["saliency"], rel=1e-4)


@pytest.mark.slow
def test_explain_with_filters_label_and_mode(tmp_path):
    run = psal("explain", str(RAW / "grace_hopper.jpg"), "--out", str(tmp_path), "--filters", "5,300,20000",
               "--label", "mortarboard", "--mode", "raw")
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["filters"] == [5, 300, 20000] and result["label"]["index"] == 667
    assert result["mode"] == "raw"


def test_layers_json_and_table():
    run = psal("layers", "--model", "resnet50", "--random-weights", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["n_filters"] == 26560
    assert data["layers"][0] == {"name": "conv1", "param": "conv1.weight", "filters": 64, "offset": 0}
    assert sum(la["filters"] for la in data["layers"]) == 26560
    table = psal("layers")
    assert table.returncode == 0 and "total: 21008 filters in 49 conv layers" in table.stdout


BAD = [
    (["explain", "no/such/image.jpg"], "not found"),
    (["explain", "{corrupt}"], "corrupt"),
    (["explain", str(RAW / "grace_hopper.jpg"), "--label", "tabbby"], "tabby"),
    (["explain", str(RAW / "grace_hopper.jpg"), "--filters", "1,x"], "--filters"),
    (["explain", str(RAW / "grace_hopper.jpg"), "--filters", "99999999"], "out of range"),
    (["explain", str(RAW / "grace_hopper.jpg"), "--model", "resnet5O"], "resnet50"),
    (["explain", str(RAW / "grace_hopper.jpg"), "--model", "resnet50"], "--weights"),
    (["explain", str(RAW / "grace_hopper.jpg"), "--weights", "missing.pth"], "not found"),
    (["stats", "--data", "no/such/folder"], "no/such/folder"),
    (["import-legacy", "missing.pth", "--model", "resnet50"], "not found"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_gives_one_line_error(args, needle, tmp_path, capsys):
    # In-process (the same main() as the console script) to keep the suite fast.
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    args = [str(corrupt) if a == "{corrupt}" else a for a in args]
    code = main([*args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psal: error:"), err
    assert needle.lower() in err.lower(), err
    assert not (tmp_path / "o" / "result.json").exists()


def test_exit_code_and_message_of_the_console_script(tmp_path):
    run = psal("explain", str(tmp_path / "missing.png"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("psal: error:") and "missing.png" in run.stderr
    debug = psal("--debug", "explain", str(tmp_path / "missing.png"))
    assert "Traceback" in debug.stderr


@needs_data(REFERENCE / "original-helper-objects")
@pytest.mark.data
def test_statistics_of_another_model_are_refused(tmp_path):
    legacy = next((REFERENCE / "original-helper-objects" / "resnet50").glob("*.pth"))
    imp = psal("import-legacy", str(legacy), "--model", "resnet50", "--out", str(tmp_path / "r50"))
    assert imp.returncode == 0, imp.stderr
    assert "26560 filters" in imp.stdout
    run = psal("explain", str(RAW / "grace_hopper.jpg"), "--stats", str(tmp_path / "r50"), "--out", str(tmp_path / "o"))
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "resnet50" in run.stderr and "psal stats" in run.stderr


@needs_data(VAL800)
@pytest.mark.data
@pytest.mark.slow
def test_stats_command_on_a_few_images(tmp_path):
    run = psal("stats", "--data", str(VAL800 / "labels.csv"), "--limit", "6", "--out", str(tmp_path), "--quiet",
               "--profiles")
    assert run.returncode == 0, run.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["n"] == 6 and meta["model"] == "efficientnet_lite0" and len(meta["files"]) == 6
    assert meta["layout"]["n_filters"] == 21008
    assert str(VAL800.parent) not in json.dumps(meta)  # no machine paths in helper objects
    from psal_widgets.store import load_samples

    samples = load_samples(tmp_path)
    assert samples.profiles.shape == (6, 21008) and samples.profiles.dtype == "float16"
    assert len(samples.files) == 6 and (samples.prob_label <= samples.prob_pred + 1e-6).all()
