"""masking (paper §3.4 / A.8-A.9): pixel counts, the no-op case, the paired test, keys; real images."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from psal_widgets.experiments.masking import mask_pixels, random_mask, ranking_map
from psal_widgets.experiments.statistics import sign_flip_test
from psal_widgets.viz.heatmap import mask_top_percent

from .conftest import VAL800, needs_data
from .experiment_helpers import run_tiny


def test_masks_remove_exactly_the_requested_pixels():
    rng = np.random.default_rng(0)
    grad = rng.normal(size=(3, 20, 30))
    heat = ranking_map(grad)
    top = mask_top_percent(heat, percent=5)
    n = round(0.05 * 600)
    assert top.sum() == n
    # The top mask holds the hottest pixels of the map.
    assert heat[top].min() >= heat[~top].max()
    rnd = random_mask(top.shape, n, np.random.default_rng(1))
    assert rnd.sum() == n
    x = torch.randn(3, 20, 30) + 3.0  # no pixel is 0 before masking
    for mask in (top, rnd):
        out = mask_pixels(x, mask)
        zero = (out == 0).all(dim=0).numpy()
        assert (zero == mask).all()
        torch.testing.assert_close(out[:, torch.as_tensor(~mask)], x[:, torch.as_tensor(~mask)])
    assert mask_top_percent(heat, percent=0).sum() == 0


def test_sign_flip_test_against_enumeration_and_limits():
    rng = np.random.default_rng(0)
    d = np.array([0.5, -1.0, 2.0, 0.25, 1.5, -0.1])
    brute = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-12 for s in itertools.product([-1, 1], repeat=6)])
    assert sign_flip_test(d, rng=rng) == pytest.approx(brute)
    assert sign_flip_test(np.zeros(30), rng=rng) == 1.0
    assert sign_flip_test(np.zeros(5), rng=rng) == 1.0
    shifted = rng.normal(1.0, 0.3, size=40)  # Monte-Carlo branch, a clear shift
    assert sign_flip_test(shifted, rng=rng) < 0.001
    noise = rng.normal(0.0, 1.0, size=40)
    assert sign_flip_test(noise, rng=rng) > 0.01
    assert np.isnan(sign_flip_test(np.array([]), rng=rng))


def test_masking_zero_percent_changes_nothing(tmp_path):
    res, out, _ = run_tiny("masking", tmp_path, which="all", percent=0.0, k=3)
    assert res["n_studied"] == 8 and res["n_pixels"] == 0
    for key in ("true_conf_change_top", "true_conf_change_random", "incorrect_conf_change_top",
                "incorrect_conf_change_random"):
        assert res[key]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert res["saliency_drop_top_pct"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert res["p_true_top_vs_random"] == 1.0
    assert res["gain_images"] == []
    assert (out / "masking_examples.png").is_file() and (out / "masking.html").is_file()


def test_masking_keys_and_consistency(tmp_path):
    res, _, _ = run_tiny("masking", tmp_path, percent=20.0, k=3, gain=0.0)
    for key in ("p_true_top", "p_true_random", "p_incorrect_top", "p_incorrect_random", "p_incorrect_top_vs_random",
                "corrected_pct_top", "corrected_pct_random", "gain_images", "images", "summary"):
        assert key in res
    assert res["which"] == "incorrect" and res["n_studied"] == len(res["images"]) > 0
    assert all(p["pred"] != p["label"] for p in res["images"])
    assert res["n_pixels"] == round(0.2 * 16 * 16)
    gains = [100 * (p["true_top"] - p["true_before"]) for p in res["images"]]
    assert len(res["gain_images"]) == sum(g >= 0 for g in gains)
    assert res["true_conf_change_top"]["mean"] == pytest.approx(np.mean(gains))


@pytest.mark.slow
@pytest.mark.data
@needs_data(VAL800)
def test_masking_on_real_images(tmp_path, default_explainer):
    """The default model on real images: the studied set is the mistakes, 5% is 2509 pixels, and the
    probabilities and saliencies before masking agree with an independent Explainer analysis."""
    from psal_widgets.experiments import run_experiment

    ds_csv = VAL800 / "labels.csv"
    res = run_experiment("masking", data=ds_csv, explainer=default_explainer, limit=16,
                         out=tmp_path, progress=False, examples=1)
    assert res["n_pixels"] == round(0.05 * 224 * 224)
    assert res["n_studied"] >= 1
    for p in res["images"][:2]:
        a = default_explainer.analyze(str(ds_csv.parent / p["file"]), label=p["label"])
        assert p["pred"] != p["label"] and int(np.argmax(a.probs)) == p["pred"]
        assert p["true_before"] == pytest.approx(float(a.probs[p["label"]]), abs=1e-5)
        assert 0.0 <= p["true_top"] <= 1.0 and np.isfinite(p["saliency_drop_top_pct"])
    assert 0.0 < res["p_true_top_vs_random"] <= 1.0
