"""`psal experiment pruning` (§3.1 / Fig. 3): protocol facts on the tiny model and on real mistakes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from psal_widgets.experiments import run_experiment

from .conftest import VAL800, needs_data
from .tinydata import tiny_setup, val800_subset

KEYS = ("incorrect_conf_change", "true_conf_change", "corrected_pct")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pruning")
    explainer, ds, csv_path = tiny_setup(folder, n=12)
    return explainer, ds, csv_path, folder


def _run(tiny, name, **options):
    explainer, ds, csv_path, folder = tiny
    return run_experiment("pruning", data=csv_path, explainer=explainer, dataset=ds, out=folder / name,
                          index=str(folder / "idx"), progress=False, **options)


def _check_shapes(result, ks):
    assert result["k"] == ks
    for s in ("salient", "random", "least"):
        for m in KEYS:
            assert len(result[s][m]) == len(ks)
            ci = np.asarray(result[s][f"{m}_ci"], dtype=float)
            mean = np.asarray(result[s][m], dtype=float)
            assert ci.shape == (len(ks), 2)
            assert np.all(ci[:, 0] <= mean + 1e-12) and np.all(mean <= ci[:, 1] + 1e-12)  # CI holds the mean


def test_against_a_hand_loop(tiny):
    explainer, ds, _, folder = tiny
    result = _run(tiny, "a", k="0,1,3,13")
    _check_shapes(result, [0, 1, 3, 13])
    from psal_widgets.index import ProfileIndex

    idx = ProfileIndex.open(folder / "idx")
    rows = np.flatnonzero(~idx.correct)
    assert result["n_studied"] == rows.size > 0
    # k=0 changes nothing; k=13 (every filter) is the same set for every strategy.
    for s in ("salient", "random", "least"):
        assert result[s]["incorrect_conf_change"][0] == 0 and result[s]["true_conf_change"][0] == 0
        assert result[s]["corrected_pct"][0] == 0
        for m in KEYS:
            assert result[s][m][3] == pytest.approx(result["salient"][m][3], abs=1e-4)
    # Reference: deepcopy of the model with the filters zeroed by hand (weights, bias, and the
    # batch norm's gamma and beta), for k=1 and k=3 of the salient strategy.
    import copy

    stats = explainer.stats
    model = explainer.model.module
    changes = {1: [], 3: []}
    for row in rows:
        z = (idx.raw[row].astype(np.float64) - stats.mean.numpy()) / stats.safe_std().numpy()
        x = ds[row][0][None]
        with torch.no_grad():
            before = torch.softmax(model(x), 1)[0]
        for k in (1, 3):
            ref = copy.deepcopy(model)
            with torch.no_grad():
                for f in np.argsort(-z, kind="stable")[:k]:
                    layer, c = explainer.index.locate(int(f))
                    conv = dict(ref.named_modules())[layer]
                    conv.weight[c] = 0
                    if conv.bias is not None:
                        conv.bias[c] = 0
                    if layer == "conv1":
                        ref.bn1.weight[c] = 0
                        ref.bn1.bias[c] = 0
                after = torch.softmax(ref(x), 1)[0]
            wrong = int(idx.pred[row])
            changes[k].append(100 * float(after[wrong] - before[wrong]))
    assert result["salient"]["incorrect_conf_change"][1] == pytest.approx(np.mean(changes[1]), abs=1e-3)
    assert result["salient"]["incorrect_conf_change"][2] == pytest.approx(np.mean(changes[3]), abs=1e-3)


def test_random_sets_are_fresh_per_image_and_repeat_with_the_seed(tiny):
    a = _run(tiny, "r1", k="1,2", seed=3)
    b = _run(tiny, "r2", k="1,2", seed=3)
    c = _run(tiny, "r3", k="1,2", seed=4)
    assert a["random"] == b["random"]
    assert a["random"] != c["random"] or a["per_image"]["random"] != c["per_image"]["random"]


def test_perturbation_and_literal_recipe_run(tiny):
    small = _run(tiny, "p0", k="1,13", perturb=1e-9)
    for s in ("salient", "random", "least"):
        assert np.allclose(small[s]["incorrect_conf_change"], 0, atol=1e-4)  # tiny noise, tiny change
    big = _run(tiny, "p1", k="13", perturb=10.0)
    assert abs(big["salient"]["incorrect_conf_change"][0]) > 0
    literal = _run(tiny, "lit", k="1,13", recipe="paper-literal")
    _check_shapes(literal, [1, 13])
    assert literal["recipe"] == "paper-literal"
    with pytest.raises(ValueError, match="--k values"):
        _run(tiny, "bad", k="14")


def test_correct_images_option(tiny):
    result = _run(tiny, "ok", k="1", images="correct")
    assert result["images"] == "correct" and result["n_studied"] > 0


def test_files_written(tiny):
    _run(tiny, "files", k="1,2")
    out = tiny[3] / "files"
    for name in ("fig3_pruning.png", "pruning.html", "result.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_real_mistakes_salient_beats_least_salient(default_explainer, tmp_path):
    ds, index_dir = val800_subset(default_explainer, 32)
    result = run_experiment("pruning", data=VAL800 / "labels.csv", explainer=default_explainer, dataset=ds,
                            out=tmp_path / "out", index=str(index_dir), progress=False, k="0,10,50")
    _check_shapes(result, [0, 10, 50])
    assert result["n_studied"] >= 3
    assert result["prediction_mismatches"] == 0
    for s in ("salient", "random", "least"):
        assert result[s]["incorrect_conf_change"][0] == 0  # nothing pruned, nothing changed
    # Turning off the most salient filters lowers the wrong class far more than the least salient.
    assert result["salient"]["incorrect_conf_change"][2] < result["least"]["incorrect_conf_change"][2] - 5
    assert result["salient"]["incorrect_conf_change"][2] < 0
