"""adversarial (paper A.7): the L2 budget, the loss goes up (down), one step is the vanilla profile, keys."""
from __future__ import annotations

import copy

import pytest
import torch

from psal_widgets.experiments.similarity import cosine_similarity
from psal_widgets.kernels.adversarial import adversarial_perturbation
from psal_widgets.kernels.filters import FilterIndex
from psal_widgets.kernels.profiles import filter_profiles

from .conftest import VAL800, make_tiny, needs_data
from .experiment_helpers import run_tiny


def _x() -> torch.Tensor:
    return torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(0))


def test_budget_is_respected_and_the_loss_moves_the_right_way():
    net = make_tiny()
    before = copy.deepcopy(net.state_dict())
    index = FilterIndex(net)
    for eps in (1e-3, 0.5):
        up = adversarial_perturbation(net, _x(), 1, index=index, eps=eps, steps=8)
        assert up.norm <= eps * (1 + 1e-5)
        assert up.norm == pytest.approx(eps, rel=1e-4)  # ascent runs to the boundary
        assert up.loss_after > up.loss_before
        assert set(up.delta) == set(index.param_names)
        down = adversarial_perturbation(net, _x(), 1, index=index, eps=eps, steps=8, direction="min")
        assert down.norm <= eps * (1 + 1e-5) and down.loss_after < down.loss_before
    # Independent check of loss_after: put δ into a copy of the model by hand.
    moved = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if name in down.delta:
                p += down.delta[name]
        loss = torch.nn.functional.cross_entropy(moved(_x().unsqueeze(0)), torch.tensor([1]))
    assert float(loss) == pytest.approx(down.loss_after, rel=1e-5)
    for key, value in net.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_one_step_is_the_vanilla_profile():
    net = make_tiny()
    index = FilterIndex(net)
    adv = adversarial_perturbation(net, _x(), 2, index=index, eps=1e-3, steps=1, step_size=1e-3)
    vanilla = filter_profiles(net, _x().unsqueeze(0), [2], index=index, mode="raw").raw[0]
    torch.testing.assert_close(adv.profile * adv.grad_norm / 1e-3, vanilla, rtol=1e-4, atol=1e-9)
    assert cosine_similarity(adv.profile.numpy(), vanilla.numpy()) == pytest.approx(1.0, abs=1e-6)


def test_adversarial_experiment(tmp_path):
    res, out, _ = run_tiny("adversarial", tmp_path, eps=[1e-4, 1.0], steps=3, top_k=4)
    for key in ("eps", "cosine_similarity", "top_k_overlap", "cosine_similarity_std", "top_k_overlap_std",
                "loss_change", "max_norm_ratio", "n_studied", "summary"):
        assert key in res
    assert all(r <= 1 + 1e-5 for r in res["max_norm_ratio"])
    assert all(c["mean"] > 0 for c in res["loss_change"])
    # A tiny budget keeps the loss locally linear: the profile is the vanilla one.
    assert res["cosine_similarity"][0]["mean"] > 0.999
    assert res["top_k_overlap"][0]["mean"] == 1.0
    assert (out / "adversarial.png").is_file() and (out / "adversarial.html").is_file()


@pytest.mark.slow
@pytest.mark.data
@needs_data(VAL800)
def test_adversarial_matches_vanilla_on_real_images(tmp_path, default_explainer):
    """Paper A.7: for eps = 1e-4 the adversarial profile is close to the vanilla one (cosine 0.99 on ResNet-50)."""
    from psal_widgets.experiments import run_experiment

    res = run_experiment("adversarial", data=VAL800 / "labels.csv", explainer=default_explainer, limit=4,
                         out=tmp_path, progress=False, eps=[1e-4], steps=3)
    assert res["cosine_similarity"][0]["mean"] > 0.95
    assert res["top_k_overlap"][0]["mean"] > 0.8
