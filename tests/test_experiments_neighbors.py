"""`psal experiment neighbors` (§3.2 / A.2 / A.4): fractions against a plain loop, and real images."""
from __future__ import annotations

import numpy as np
import pytest

from psal_widgets.experiments import run_experiment
from psal_widgets.kernels.neighbours import all_neighbours, cosine_neighbours

from .conftest import VAL800, needs_data
from .tinydata import tiny_setup, val800_subset


def test_all_neighbours_equals_single_queries():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(40, 12)).astype(np.float32)
    bank[5] = 0  # a zero row: similarity 0 to everything
    cols = slice(2, 9)
    nn, sims = all_neighbours(bank, k=4, columns=cols, block=7)
    for i in range(40):
        ref, ref_sims = cosine_neighbours(bank[i], bank, k=4, columns=cols, exclude=[i])
        if i != 5:
            np.testing.assert_array_equal(nn[i], ref)
        np.testing.assert_allclose(sims[i], ref_sims, rtol=1e-5, atol=1e-6)
        assert i not in nn[i]
    with pytest.raises(ValueError, match="k must lie"):
        all_neighbours(bank, k=40)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("neighbors")
    explainer, ds, csv_path = tiny_setup(folder, n=12)
    result = run_experiment("neighbors", data=csv_path, explainer=explainer, dataset=ds, out=folder / "out",
                            index=str(folder / "idx"), progress=False, n_neighbors=3, gallery=2)
    return explainer, folder, result


def _loop_fractions(bank: np.ndarray, correct: np.ndarray, k: int) -> tuple[float, float]:
    fr = []
    for i in range(len(bank)):
        sims = [float(bank[i] @ bank[j] / (np.linalg.norm(bank[i]) * np.linalg.norm(bank[j]))) if j != i else -np.inf
                for j in range(len(bank))]
        nn = np.argsort(-np.array(sims), kind="stable")[:k]
        fr.append(correct[nn].mean())
    fr = np.array(fr)
    return float(fr[correct].mean()), float(fr[~correct].mean())


def test_fractions_match_a_plain_loop(tiny_run):
    explainer, folder, result = tiny_run
    from psal_widgets.index import ProfileIndex

    idx = ProfileIndex.open(folder / "idx")
    stats = explainer.stats
    z = (idx.raw.astype(np.float64) - stats.mean.numpy()) / stats.safe_std().numpy()
    ok = idx.correct
    for key, bank in (("top", z), ("shallow", z[:, :4]), ("deep", z[:, 8:]),
                      ("features", idx.features.astype(np.float64))):
        d = result if key == "top" else result[key]
        c, w = _loop_fractions(bank, ok, 3)
        assert d["nn_correct_frac_for_correct"] == pytest.approx(c)
        assert d["nn_correct_frac_for_incorrect"] == pytest.approx(w)
        for name in ("nn_correct_frac_for_correct", "nn_correct_frac_for_incorrect"):
            low, high = d[f"{name}_ci"]
            assert low <= d[name] <= high
    assert result["n_neighbors"] == 3
    assert result["accuracy"] == pytest.approx(ok.mean())
    out = folder / "out"
    for name in ("neighbors_fractions.png", "fig4_gallery.png", "fig5_depth_and_features.png",
                 "neighbors_map.html", "result.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_real_mistakes_have_mistaken_neighbours(default_explainer, tmp_path):
    ds, index_dir = val800_subset(default_explainer, 32)
    result = run_experiment("neighbors", data=VAL800 / "labels.csv", explainer=default_explainer, dataset=ds,
                            out=tmp_path / "out", index=str(index_dir), progress=False, n_neighbors=5)
    assert result["n_incorrect"] >= 2
    # A.2: a mistake's neighbours are correct less often than a correct image's neighbours.
    assert result["nn_correct_frac_for_incorrect"] < result["nn_correct_frac_for_correct"]
    for key in ("shallow", "deep", "features"):
        assert set(result[key]) >= {"nn_correct_frac_for_correct", "nn_correct_frac_for_incorrect"}
