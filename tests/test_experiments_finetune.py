"""finetune (paper §3.3 / B.1): the normalized step against a plain autograd loop, and the experiment's protocol."""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from psal_widgets.kernels.filters import FilterIndex
from psal_widgets.kernels.finetune import detached_parameters, filter_step, loss_gradients, raw_profile

from .conftest import VAL800, make_tiny, needs_data
from .experiment_helpers import run_tiny


@pytest.fixture(autouse=True)
def _no_profile_index(monkeypatch):
    """Neighbour pools through finetune's own profile computation (its fallback), so that these tests
    neither depend on nor write a profile index in the user cache."""
    monkeypatch.setitem(sys.modules, "psal_widgets.index", None)


def _conv_channels(net: nn.Module) -> list[tuple[nn.Conv2d, int]]:
    """(conv module, channel) of every filter, in module order (the tiny net's index order)."""
    return [(m, c) for m in net.modules() if isinstance(m, nn.Conv2d) for c in range(m.out_channels)]


def _hand_step(net: nn.Module, x: torch.Tensor, y: int, filters: list[int], step: float) -> nn.Module:
    """The paper's step on a deep copy with loss.backward() and a Python loop over the chosen filters."""
    net = copy.deepcopy(net).eval()
    net.zero_grad()
    F.cross_entropy(net(x), torch.tensor([y])).backward()
    chosen = [_conv_channels(net)[f] for f in filters]
    norm = torch.sqrt(sum((m.weight.grad[c] ** 2).sum() for m, c in chosen))
    with torch.no_grad():
        for m, c in chosen:
            m.weight[c] -= step * m.weight.grad[c] / norm
    return net


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def test_step_equals_hand_computed_and_touches_only_the_chosen_filters():
    net = make_tiny()
    before = copy.deepcopy(net.state_dict())
    index = FilterIndex(net)
    x, y, filters = _x(), 2, [1, 5, 6, 11]
    params = detached_parameters(net)
    grads, _ = loss_gradients(net, x, [y], params=params)
    new = filter_step(params, grads, index, np.array(filters), step=0.01)
    ref = _hand_step(net, x, y, filters, 0.01)
    ref_params = dict(ref.named_parameters())
    for name, value in new.items():
        torch.testing.assert_close(value, ref_params[name].detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(functional_call(net, new, (x,)), ref(x))
    # Exactly the chosen (layer, channel) slices moved; everything else is the same tensor.
    moved = set()
    for name, value in new.items():
        diff = (value != params[name])
        if diff.any():
            assert name in index.param_names
            rows = diff.flatten(1).any(dim=1).nonzero().flatten().tolist()
            layer = index.param_names.index(name)
            moved |= {index.layers[layer].offset + c for c in rows}
        else:
            assert value is params[name]
    assert moved == set(filters)
    # The user's model is untouched.
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_every_strategy_gets_the_same_step_norm_and_whole_network_moves_everything():
    net = make_tiny()
    index = FilterIndex(net)
    params = detached_parameters(net)
    grads, _ = loss_gradients(net, _x(1), [0], params=params)
    profile = raw_profile(grads, index).numpy()
    order = np.argsort(-profile)
    sets = {"salient": order[:3], "least": order[-3:], "random": np.array([0, 7, 12])}
    for ids in sets.values():
        new = filter_step(params, grads, index, ids, step=0.003)
        delta = torch.sqrt(sum(((new[k] - params[k]).double() ** 2).sum() for k in params))
        assert float(delta) == pytest.approx(0.003, rel=1e-4)  # float32 parameters
    new = filter_step(params, grads, index, None, step=0.003)
    for name in params:
        assert grads[name].abs().sum() > 0
        assert not torch.equal(new[name], params[name]), name
    delta = torch.sqrt(sum(((new[k] - params[k]).double() ** 2).sum() for k in params))
    assert float(delta) == pytest.approx(0.003, rel=1e-4)  # float32 parameters


def test_step_zero_changes_nothing_and_a_descent_step_raises_the_true_class(tmp_path):
    res, out, _ = run_tiny("finetune", tmp_path / "zero", k=[1, 3], step=0.0, neighbors=2)
    for key in ("k", "salient", "random", "least", "whole_network", "n_mistakes", "n_pool_incorrect", "summary"):
        assert key in res
    assert res["k"] == [1, 3] and res["n_mistakes"] > 0
    for s in ("salient", "random", "least"):
        for m in ("corrected_pct", "true_conf_change", "nn_corrected_pct", "nn_true_conf_change"):
            assert len(res[s][m]) == 2 and len(res[s][f"{m}_ci"]) == 2
        assert res[s]["corrected_pct"] == [0.0, 0.0]
        assert res[s]["true_conf_change"] == [0.0, 0.0]
        assert res[s]["nn_corrected_pct"] == [0.0, 0.0]
    assert (out / "finetune.png").is_file() and (out / "finetune.html").is_file()
    assert all(len(im["neighbors"]) == 2 for im in res["images"])

    res, _, _ = run_tiny("finetune", tmp_path / "step", k=[2, 13], step=0.05, neighbors=2)
    # A small descent step on the true label's loss raises its probability on the image itself.
    assert all(v > 0 for v in res["salient"]["true_conf_change"])
    assert res["whole_network"]["true_conf_change"] > 0
    # Updating all 13 filters is the same set for every strategy.
    assert res["salient"]["true_conf_change"][1] == pytest.approx(res["random"]["true_conf_change"][1])
    assert res["salient"]["true_conf_change"][1] == pytest.approx(res["least"]["true_conf_change"][1])


def test_neighbours_come_from_a_separate_pool(tmp_path):
    from .experiment_helpers import write_images

    pool = write_images(tmp_path / "pool", 6, seed=3)
    res, _, _ = run_tiny("finetune", tmp_path / "run", k=[1], step=0.01, neighbors=3, pool=str(pool))
    assert res["n_pool"] == 6
    for im in res["images"]:
        assert len(im["neighbors"]) <= 3 and all(f.startswith("img") for f in im["neighbors"])


@pytest.mark.slow
@pytest.mark.data
@needs_data(VAL800)
def test_finetune_on_real_images(tmp_path, default_explainer):
    from psal_widgets.experiments import run_experiment

    res = run_experiment("finetune", data=VAL800 / "labels.csv", explainer=default_explainer, limit=16,
                         out=tmp_path, progress=False, k=[10], neighbors=2)
    assert res["n_mistakes"] >= 1
    assert all(v > 0 for v in res["salient"]["true_conf_change"])
    assert res["whole_network"]["true_conf_change"] > 0
