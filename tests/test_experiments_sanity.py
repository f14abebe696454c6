"""sanity (paper A.11): stages, the cascade on copies, similarity 1 without randomization and low after all of it."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from psal_widgets.experiments.similarity import rankdata, spearman
from psal_widgets.kernels.randomize import cascade, model_stages

from .conftest import VAL800, make_tiny, needs_data
from .experiment_helpers import run_tiny


def test_stages_of_the_tiny_and_default_models():
    tiny = make_tiny()
    assert [(s.name, s.modules) for s in model_stages(tiny)] == [
        ("conv1", ("conv1", "bn1")), ("dw", ("dw",)), ("pw", ("pw",)), ("fc", ("fc",))]
    from psal_widgets.models import load_model

    m = load_model("efficientnet_lite0", random_weights=True, device="meta")
    names = [s.name for s in model_stages(m.module)]
    assert names == ["conv_stem", *[f"blocks.{i}" for i in range(7)], "conv_head", "classifier"]


def test_cascade_randomizes_one_more_stage_each_step_on_a_copy():
    net = make_tiny()
    before = copy.deepcopy(net.state_dict())
    seen = []
    for n, model in cascade(net, seed=0):
        changed = {name.split(".")[0] for name, v in model.state_dict().items() if not torch.equal(v, before[name])}
        seen.append(changed)
        if n == 0:
            assert model is net
    assert seen == [set(), {"fc"}, {"fc", "pw"}, {"fc", "pw", "dw"}, {"fc", "pw", "dw", "conv1", "bn1"}]
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # Seeded: the same cascade twice gives the same weights.
    a = [copy.deepcopy(m.state_dict()) for _, m in cascade(net, seed=3)][-1]
    b = [copy.deepcopy(m.state_dict()) for _, m in cascade(net, seed=3)][-1]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    a[:20] = 0.0  # ties
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    np.testing.assert_allclose(rankdata(a), stats.rankdata(a))
    assert spearman(a, a) == pytest.approx(1.0)


def test_sanity_experiment(tmp_path):
    res, out, _ = run_tiny("sanity", tmp_path, n=6, k=3, examples=2)
    for key in ("stages", "randomized", "n_randomized", "map_spearman", "map_ssim", "profile_cosine",
                "top_k_overlap", "prediction_kept", "summary"):
        assert key in res
    assert res["n_randomized"] == [0, 1, 2, 3, 4] and res["randomized"] == ["fc", "pw", "dw", "conv1"]
    assert res["map_spearman"][0]["mean"] == pytest.approx(1.0)
    assert res["profile_cosine"][0]["mean"] == pytest.approx(1.0)
    assert res["profile_cosine_raw"][0]["mean"] == pytest.approx(1.0)
    assert res["prediction_kept"][0] == 1.0
    if res["map_ssim"] is not None:
        assert res["map_ssim"][0]["mean"] == pytest.approx(1.0)
    # The whole network randomized: the map no longer resembles the original one.
    assert res["map_spearman"][-1]["mean"] < 0.5
    assert res["profile_cosine"][-1]["mean"] < 0.9
    assert (out / "sanity.png").is_file() and (out / "sanity.html").is_file()


@pytest.mark.slow
@pytest.mark.data
@needs_data(VAL800)
def test_sanity_on_a_real_image(tmp_path, default_explainer):
    from psal_widgets.experiments import run_experiment

    res = run_experiment("sanity", data=VAL800 / "labels.csv", explainer=default_explainer, limit=1,
                         out=tmp_path, progress=False, examples=1)
    assert len(res["stages"]) == 10
    assert res["map_spearman"][0]["mean"] == pytest.approx(1.0)
    assert res["map_spearman"][-1]["mean"] < 0.5
