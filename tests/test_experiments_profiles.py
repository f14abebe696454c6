"""`psal experiment profiles` (Fig. 1-2) on the tiny model against NumPy, and on real images."""
from __future__ import annotations

import json

import numpy as np
import pytest

from psal_widgets.experiments import run_experiment

from .conftest import VAL800, needs_data
from .tinydata import tiny_setup, val800_subset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    explainer, ds, csv_path = tiny_setup(folder, n=12)
    result = run_experiment("profiles", data=csv_path, explainer=explainer, dataset=ds, out=folder / "out",
                            index=str(folder / "idx"), progress=False, chunk=5)
    return explainer, folder, result


def test_means_match_numpy(tiny_run):
    explainer, folder, result = tiny_run
    from psal_widgets.index import ProfileIndex

    idx = ProfileIndex.open(folder / "idx")
    stats = explainer.stats
    z = (idx.raw.astype(np.float64) - stats.mean.numpy()) / stats.safe_std().numpy()
    ok = idx.correct
    assert 0 < ok.sum() < len(ok)  # the tiny model makes mistakes and gets some right
    assert result["n_correct"] == int(ok.sum()) and result["n_incorrect"] == int((~ok).sum())
    np.testing.assert_allclose(result["mean_saliency_correct"], z[ok].mean(), rtol=1e-5)
    np.testing.assert_allclose(result["mean_saliency_incorrect"], z[~ok].mean(), rtol=1e-5)
    np.testing.assert_allclose(result["difference"], z[~ok].mean() - z[ok].mean(), rtol=1e-5)
    # Depth thirds of the tiny model's 3 layers: one layer each (4, 4 and 5 filters).
    for name, cols in (("shallow", slice(0, 4)), ("middle", slice(4, 8)), ("deep", slice(8, 13))):
        d = result["by_depth"][name]
        np.testing.assert_allclose(d["mean_saliency_incorrect"], z[~ok][:, cols].mean(), rtol=1e-5)
        np.testing.assert_allclose(d["mean_saliency_correct"], z[ok][:, cols].mean(), rtol=1e-5)
        assert d["n_filters"] == cols.stop - cols.start
    for key in ("mean_saliency_correct", "mean_saliency_incorrect", "difference"):
        low, high = result[f"{key}_ci"]
        assert low <= result[key] <= high
    np.testing.assert_allclose(result["mean_raw_by_layer"][0], idx.raw[:, :4].astype(np.float64).mean(), rtol=1e-5)


def test_files_written(tiny_run):
    _, folder, result = tiny_run
    out = folder / "out"
    for name in ("fig1_raw_profile.png", "fig2_standardized_profiles.png", "fig2_by_depth.png",
                 "profiles.html", "result.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    doc = json.loads((out / "result.json").read_text())
    assert doc["experiment"] == "profiles" and doc["summary"] == result["summary"]


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_real_mistakes_are_more_salient(default_explainer, tmp_path):
    ds, index_dir = val800_subset(default_explainer, 32)
    result = run_experiment("profiles", data=VAL800 / "labels.csv", explainer=default_explainer, dataset=ds,
                            out=tmp_path / "out", index=str(index_dir), progress=False)
    assert result["n_correct"] + result["n_incorrect"] == 32 and result["n_incorrect"] >= 2
    # The paper's Fig. 2 claim, large enough to show on a few dozen images (GUIDE: +0.83 vs -0.19).
    assert result["mean_saliency_incorrect"] > result["mean_saliency_correct"]
    assert result["by_depth"]["deep"]["mean_saliency_incorrect"] > result["by_depth"]["deep"]["mean_saliency_correct"]
