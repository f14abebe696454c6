"""Turning filters off (paper §3.1) against deepcopy-and-zero references; the model is intact.

The default recipe ("zero-output") must leave the pruned channel exactly zero after its norm layer,
whatever the norm; "paper-literal" keeps the original code's leftover constant -γ·μ/√(σ²+ε).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from psal_widgets.kernels import FilterIndex
from psal_widgets.kernels.interventions import (
    FilterPruner,
    find_conv_batchnorms,
    find_conv_norms,
    perturbed_parameters,
    pruned_parameters,
    select_filters,
)


class ChainNet(nn.Module):
    """conv -> BN -> relu -> conv (bias, no BN) -> relu -> conv -> BN -> relu -> pool -> fc.

    Filters: c1 0..3, c2 4..9, c3 10..14 (4 + 6 + 5 = 15).
    """

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 5, 1, bias=False)
        self.b3 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def net() -> ChainNet:
    torch.manual_seed(0)
    m = ChainNet()
    for bn in (m.b1, m.b3):
        # Trained-looking batch norms: non-trivial running stats, scale and shift.
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return m.eval()


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _capture(module: nn.Module) -> tuple[dict[str, torch.Tensor], object]:
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("out", out.detach().clone())
    )
    return seen, handle


def test_conv_batchnorm_pairs_on_the_tiny_net(net):
    pairs = find_conv_batchnorms(net, torch.randn(3, 8, 8))
    assert pairs == {"c1": "b1", "c2": None, "c3": "b3"}
    assert net.training is False


def test_paper_literal_leaves_the_batchnorm_constant_and_others_unchanged(net):
    index = FilterIndex(net)
    before = _state(net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen, handle = _capture(net.b1)
    try:
        with torch.no_grad():
            net(x)
        clean = seen["out"]
        pruner = FilterPruner(net, index, x[0], recipe="paper-literal")
        pruner.logits(x, [1])  # channel 1 of c1
        pruned = seen["out"]
    finally:
        handle.remove()
    # Channel 1 after the batch norm no longer depends on the input: one constant for all
    # positions and both images, namely -gamma * mu / sqrt(var + eps).
    bn = net.b1
    with torch.no_grad():
        const = float(-bn.weight[1] * bn.running_mean[1] / torch.sqrt(bn.running_var[1] + bn.eps))
    torch.testing.assert_close(pruned[:, 1], torch.full_like(pruned[:, 1], const))
    assert clean[:, 1].std() > 0.1  # it did depend on the input before
    keep = [0, 2, 3]
    torch.testing.assert_close(pruned[:, keep], clean[:, keep], rtol=0, atol=0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_conv_without_batchnorm_outputs_exact_zero(net):
    index = FilterIndex(net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    seen, handle = _capture(net.c2)
    try:
        FilterPruner(net, index, x).logits(x, [4 + 3, 4 + 5])  # channels 3 and 5 of c2
    finally:
        handle.remove()
    out = seen["out"]
    assert torch.equal(out[:, [3, 5]], torch.zeros_like(out[:, [3, 5]]))
    assert (out[:, [0, 1, 2, 4]].abs().sum(dim=(0, 2, 3)) > 0).all()


@pytest.mark.parametrize("recipe", ["paper-literal", "zero-output"])
def test_functional_call_matches_a_deepcopy_reference(net, recipe):
    index = FilterIndex(net)
    before = _state(net)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ids = [0, 3, 6, 12, 14]  # c1: 0, 3; c2: 2; c3: 2, 4
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for c in (0, 3):
            ref.c1.weight[c] = 0
            ref.c1.bias[c] = 0
            ref.b1.bias[c] = 0
        ref.c2.weight[2] = 0
        ref.c2.bias[2] = 0
        for c in (2, 4):
            ref.c3.weight[c] = 0
            ref.b3.bias[c] = 0
        if recipe == "zero-output":  # gamma too: the channel is 0 after the batch norm
            for c in (0, 3):
                ref.b1.weight[c] = 0
            for c in (2, 4):
                ref.b3.weight[c] = 0
        expected = ref(x)
    pruner = FilterPruner(net, index, x, recipe=recipe)
    got = pruner.logits(x, ids)
    with torch.no_grad():
        by_params = torch.func.functional_call(net, pruner.parameters(ids), (x,))
    torch.testing.assert_close(by_params, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(got, net(x))  # pruning changed something...
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # ...but not the model


def test_pruned_parameters_are_new_tensors_and_empty_set_is_identity(net):
    index = FilterIndex(net)
    x = torch.randn(3, 8, 8)
    pruner = FilterPruner(net, index, x)
    params = dict(net.named_parameters())
    new = pruned_parameters(params, index, pruner.targets, [1])
    assert new["c1.weight"] is not params["c1.weight"]
    assert new["b1.bias"] is not params["b1.bias"]
    assert new["b1.weight"] is not params["b1.weight"]
    assert float(new["b1.weight"][1]) == 0.0 and float(params["b1.weight"].detach()[1]) != 0.0
    literal = pruned_parameters(params, index, pruner.targets, [1], recipe="paper-literal")
    assert literal["b1.weight"] is params["b1.weight"]  # the literal recipe keeps gamma
    assert new["c2.weight"] is params["c2.weight"]  # untouched layers are shared, not copied
    assert float(params["c1.weight"][1].detach().abs().sum()) > 0
    with torch.no_grad():
        torch.testing.assert_close(pruner.logits(x, []), net(x.unsqueeze(0))[0], rtol=0, atol=0)


def test_select_filters_kinds():
    profile = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 3.0])
    np.testing.assert_array_equal(select_filters("salient", profile, 3), [1, 5, 3])
    np.testing.assert_array_equal(select_filters("least", profile, 2), [2, 4])
    a = select_filters("random", profile, 4, seed=7)
    np.testing.assert_array_equal(a, np.random.default_rng(7).permutation(6)[:4])
    np.testing.assert_array_equal(a, select_filters("random", profile, 4, seed=7))
    assert len(set(a.tolist())) == 4 and a.min() >= 0 and a.max() < 6
    draws = {tuple(select_filters("random", np.zeros(1000), 5, seed=s)) for s in range(5)}
    assert len(draws) == 5  # another seed, other filters
    with pytest.raises(ValueError, match="n must lie"):
        select_filters("salient", profile, 0)
    with pytest.raises(ValueError, match="n must lie"):
        select_filters("salient", profile, 7)
    with pytest.raises(ValueError, match="unknown kind"):
        select_filters("median", profile, 2)  # type: ignore[arg-type]


def test_batchnorm_pairs_on_torchvision_resnet():
    from torchvision.models import resnet18

    model = resnet18(weights=None).eval()
    pairs = find_conv_batchnorms(model, torch.randn(3, 64, 64))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(pairs) == set(convs)
    # torchvision's rule: convN -> bnN, downsample.0 -> downsample.1.
    for conv, bn in pairs.items():
        expected = conv[:-1] + "1" if conv.endswith("downsample.0") else conv.replace("conv", "bn")
        assert bn == expected, (conv, bn)


def test_batchnorm_pairs_on_timm_efficientnet_lite():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    pairs = find_conv_batchnorms(model, torch.randn(3, 64, 64))
    # timm's rule: conv_stem -> bn1, conv_head -> bn2; in the first (depthwise-separable)
    # block conv_dw -> bn1, conv_pw -> bn2; in inverted residuals conv_pw -> bn1,
    # conv_dw -> bn2, conv_pwl -> bn3. The batch norms are timm's BatchNormAct2d.
    top = {"conv_stem": "bn1", "conv_head": "bn2"}
    separable = {"conv_dw": "bn1", "conv_pw": "bn2"}
    inverted = {"conv_pw": "bn1", "conv_dw": "bn2", "conv_pwl": "bn3"}
    for conv, bn in pairs.items():
        parent, _, leaf = conv.rpartition(".")
        if conv in top:
            expected = top[conv]
        else:
            expected = f"{parent}." + (separable if parent == "blocks.0.0" else inverted)[leaf]
        assert bn == expected, (conv, bn)
    assert len(pairs) == 49
    assert type(dict(model.named_modules())["bn1"]).__name__ == "BatchNormAct2d"


# -- the zero-output recipe ----------------------------------------------------------------------
class NormZoo(nn.Module):
    """One conv per kind of norm: GroupNorm, InstanceNorm without affine parameters, none
    (a 'fused' conv with a bias), and a BatchNorm; filters 0..5, 6..9, 10..13, 14..17."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.g1 = nn.GroupNorm(2, 6)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1)
        self.i2 = nn.InstanceNorm2d(4, affine=False)
        self.c3 = nn.Conv2d(4, 4, 1)  # fused: no norm, a bias
        self.c4 = nn.Conv2d(4, 4, 1, bias=False)
        self.b4 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.g1(self.c1(x)))
        x = torch.sigmoid(self.i2(self.c2(x)))
        x = torch.sigmoid(self.c3(x))
        x = torch.sigmoid(self.b4(self.c4(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def zoo() -> NormZoo:
    torch.manual_seed(4)
    m = NormZoo()
    with torch.no_grad():
        m.g1.weight.uniform_(0.5, 1.5)
        m.g1.bias.uniform_(-0.5, 0.5)
        m.b4.running_mean.uniform_(-0.5, 0.5)
        m.b4.running_var.uniform_(0.5, 2.0)
        m.b4.weight.uniform_(0.5, 1.5)
        m.b4.bias.uniform_(-0.5, 0.5)
    return m.eval()


def _probe(modules: list[nn.Module]) -> tuple[list[dict[str, torch.Tensor]], list]:
    seen, handles = [], []
    for module in modules:
        s, h = _capture(module)
        seen.append(s)
        handles.append(h)
    return seen, handles


def test_norm_zoo_pairs(zoo):
    assert find_conv_norms(zoo, torch.randn(3, 8, 8)) == {"c1": "g1", "c2": "i2", "c3": None, "c4": "b4"}


def test_zero_output_silences_every_kind_of_norm(zoo):
    index = FilterIndex(zoo)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ids = [1, 6 + 2, 10 + 3, 14 + 0]  # one channel behind each norm (and the fused conv)
    where = [(zoo.g1, 1), (zoo.i2, 2), (zoo.c3, 3), (zoo.b4, 0)]
    pruner = FilterPruner(zoo, index, x)
    seen, handles = _probe([m for m, _ in where])
    try:
        with torch.no_grad():
            zoo(x)
        clean = [s["out"] for s in seen]
        pruner.logits(x, ids)
        pruned = [s["out"] for s in seen]
    finally:
        for h in handles:
            h.remove()
    for (module, channel), before, after in zip(where, clean, pruned, strict=True):
        assert before[:, channel].abs().max() > 1e-3, module  # it carried a signal before
        assert torch.equal(after[:, channel], torch.zeros_like(after[:, channel])), module


def test_affine_free_norm_cannot_be_zeroed_by_parameters_but_hooks_do_it(zoo):
    pruner = FilterPruner(zoo, FilterIndex(zoo), torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="no weight parameter"):
        pruner.parameters([6])  # c2 -> InstanceNorm2d(affine=False)
    pruner.parameters([1, 10, 14])  # GroupNorm, fused conv and BatchNorm can


def test_zero_output_on_the_tiny_model(tiny):
    index = FilterIndex(tiny)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    pruner = FilterPruner(tiny, index, x)
    assert pruner.norms == {"conv1": "bn1", "dw": None, "pw": None}
    seen, handles = _probe([tiny.bn1, tiny.dw, tiny.pw])
    try:
        pruner.logits(x, [2, 4 + 1, 8 + 4])
    finally:
        for h in handles:
            h.remove()
    for s, channel in zip(seen, (2, 1, 4), strict=True):
        out = s["out"]
        assert torch.equal(out[:, channel], torch.zeros_like(out[:, channel]))


def test_pruning_nothing_changes_nothing_and_a_whole_layer_kills_the_prediction(net):
    index = FilterIndex(net)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    pruner = FilterPruner(net, index, x)
    with torch.no_grad():
        clean = net(x)
    assert torch.equal(pruner.logits(x, []), clean)
    assert torch.equal(pruner.logits_many(x[0], [[]])[0], clean[0])
    dead = pruner.logits(x, list(range(10, 15)))  # all of c3: the classifier sees only zeros
    torch.testing.assert_close(dead, net.fc.bias.detach().expand(4, -1), rtol=0, atol=0)
    literal = FilterPruner(net, index, x, recipe="paper-literal").logits(x, list(range(10, 15)))
    assert (literal - literal[0]).abs().max() < 1e-6  # constant across inputs, but not the bias
    assert not torch.allclose(literal[0], net.fc.bias.detach())


def test_logits_many_equals_one_set_at_a_time(net):
    index = FilterIndex(net)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(8))
    sets = [[], [1], [1, 6, 12], list(range(15)), [14, 14, 0]]
    for recipe in ("zero-output", "paper-literal"):
        pruner = FilterPruner(net, index, x, recipe=recipe)
        many = pruner.logits_many(x, sets, chunk=2)
        one = torch.stack([pruner.logits(x, s) for s in sets])
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
    # One image per set.
    xs = torch.randn(len(sets), 3, 8, 8, generator=torch.Generator().manual_seed(9))
    pruner = FilterPruner(net, index, x)
    many = pruner.logits_many(xs, sets)
    one = torch.cat([pruner.logits(xs[i : i + 1], s) for i, s in enumerate(sets)])
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)


def test_the_model_is_untouched_and_no_hook_is_left(net):
    before = _state(net)
    x = torch.randn(3, 8, 8)
    pruner = FilterPruner(net, FilterIndex(net), x)
    pruner.logits_many(x, [[0, 1], [5, 12]])
    pruner.perturbed_logits_many(x, [[0, 1]], sigma=0.1, seed=1)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for name, module in net.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
    assert net.training is False


def test_training_mode_is_refused(net):
    net.train()
    with pytest.raises(ValueError, match=r"call model\.eval\(\)"):
        FilterPruner(net, FilterIndex(net), torch.randn(3, 8, 8))
    net.eval()
    pruner = FilterPruner(net, FilterIndex(net), torch.randn(3, 8, 8))
    net.train()  # switched after construction: refused at prediction time too
    with pytest.raises(ValueError, match="eval mode"):
        pruner.logits(torch.randn(3, 8, 8), [1])


def test_unknown_recipe(net):
    with pytest.raises(ValueError, match="unknown recipe"):
        FilterPruner(net, FilterIndex(net), torch.randn(3, 8, 8), recipe="gentle")  # type: ignore[arg-type]


def test_random_sets_are_nested_and_seeded_per_image():
    profile = np.zeros(500)
    for seed in (3, [3, 17]):
        sets = [select_filters("random", profile, n, seed=seed) for n in (1, 5, 10, 50, 100)]
        for small, big in zip(sets, sets[1:], strict=False):
            np.testing.assert_array_equal(big[: small.size], small)  # the 10 contain the 5
    a = select_filters("random", profile, 25, seed=[0, 1])
    b = select_filters("random", profile, 25, seed=[0, 2])
    assert len(set(a.tolist()) & set(b.tolist())) < 10  # another image, a fresh set
    np.testing.assert_array_equal(a, np.random.default_rng([0, 1]).permutation(500)[:25])


def test_perturbation_adds_seeded_noise_to_the_chosen_rows_only(net):
    index = FilterIndex(net)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(10))
    pruner = FilterPruner(net, index, x)
    with torch.no_grad():
        clean = net(x.unsqueeze(0))[0]
    zero = pruner.perturbed_logits_many(x, [[1, 7]], sigma=0.0, seed=0)
    torch.testing.assert_close(zero[0], clean, rtol=0, atol=1e-6)
    noise = pruner.noise([1, 7], sigma=0.5, seed=3)
    assert set(noise) == {"c1.weight", "c2.weight"}
    params = dict(net.named_parameters())
    new = perturbed_parameters(params, index, pruner.targets, [1, 7], noise)
    diff = (new["c1.weight"] - params["c1.weight"]).detach()
    assert torch.equal(diff[[0, 2, 3]], torch.zeros_like(diff[[0, 2, 3]]))
    torch.testing.assert_close(diff[1], noise["c1.weight"][1])
    assert abs(float(noise["c1.weight"].std()) - 0.5) < 0.2
    # Same noise for a filter whichever set holds it (nested sets, paired strategies).
    torch.testing.assert_close(pruner.noise([1], sigma=0.5, seed=3)["c1.weight"], noise["c1.weight"])
    a, b = pruner.perturbed_logits_many(x, [[1], [1, 7]], sigma=0.5, seed=3)
    assert not torch.allclose(a, clean) and not torch.allclose(a, b)


def _perturbed_by_params(pruner, x, sets, *, sigma, seed):
    """Reference for the batched hooks: one functional_call per set on a new parameter dict."""
    everything = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in sets]))
    noise = pruner.noise(everything, sigma=sigma, seed=seed)
    params = dict(pruner.model.named_parameters())
    with torch.no_grad():
        return torch.cat([
            torch.func.functional_call(
                pruner.model, perturbed_parameters(params, pruner.index, pruner.targets, s, noise), (x.unsqueeze(0),)
            )
            for s in sets
        ])


def test_batched_perturbation_equals_one_parameter_dict_per_set(net):
    index = FilterIndex(net)
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(14))
    pruner = FilterPruner(net, index, x)
    sets = [[], [1], [1, 7], [0, 5, 12, 13], list(range(index.n_filters))]
    batched = pruner.perturbed_logits_many(x, sets, sigma=0.3, seed=[2, 5], chunk=2)
    reference = _perturbed_by_params(pruner, x, sets, sigma=0.3, seed=[2, 5])
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-6)
    assert (batched[1:] - batched[0]).abs().amax(dim=1).min() > 1e-4  # every set moved the logits


# -- the real default model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    from psal_widgets.models import load_model

    return load_model(device="cpu")


@pytest.mark.slow
def test_default_model_pruned_channels_are_exactly_zero_after_their_norm(lite0):
    model = lite0.module
    index = FilterIndex(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    pruner = FilterPruner(model, index, x[0])
    modules = dict(model.named_modules())
    # Stem (BN + ReLU6), a depthwise conv (BN + ReLU6), a projection without activation.
    picks = [("conv_stem", 5), ("blocks.1.0.conv_dw", 17), ("blocks.1.0.conv_pwl", 3), ("conv_head", 100)]
    ids = [index.filter_id(layer, c) for layer, c in picks]
    norms = [modules[pruner.norms[layer]] for layer, _ in picks]
    assert all(type(n).__name__ == "BatchNormAct2d" for n in norms)
    seen, handles = _probe(norms)
    try:
        with torch.no_grad():
            model(x)
        clean = [s["out"] for s in seen]
        pruner.logits(x, ids)
        pruned = [s["out"] for s in seen]
        with torch.no_grad():  # the parameter route silences them too
            torch.func.functional_call(model, pruner.parameters(ids), (x,))
        by_params = [s["out"] for s in seen]
        FilterPruner(model, index, x[0], recipe="paper-literal").logits(x, ids)
        literal = [s["out"] for s in seen]
    finally:
        for h in handles:
            h.remove()
    for (layer, c), norm, before, after, params_out, lit in zip(
        picks, norms, clean, pruned, by_params, literal, strict=True
    ):
        assert before[:, c].abs().max() > 0, layer
        assert torch.equal(after[:, c], torch.zeros_like(after[:, c])), layer
        assert torch.equal(params_out[:, c], torch.zeros_like(params_out[:, c])), layer
        # The literal recipe leaves act(-gamma * mu / sqrt(var + eps)) everywhere.
        with torch.no_grad():
            const = -norm.weight[c] * norm.running_mean[c] / torch.sqrt(norm.running_var[c] + norm.eps)
            const = norm.act(const.reshape(1)).item()
        torch.testing.assert_close(lit[:, c], torch.full_like(lit[:, c], const), rtol=1e-5, atol=1e-6)
    assert any(abs(float(lit[0, c, 0, 0])) > 1e-3 for (_, c), lit in zip(picks, literal, strict=True))


@pytest.mark.slow
def test_default_model_batched_sets_and_a_dead_head(lite0):
    model = lite0.module
    index = FilterIndex(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(12))
    pruner = FilterPruner(model, index, x)
    rng = np.random.default_rng(0)
    sets = [[], rng.choice(index.n_filters, 5, replace=False), rng.choice(index.n_filters, 100, replace=False)]
    many = pruner.logits_many(x, sets)
    one = torch.stack([pruner.logits(x, s) for s in sets])
    torch.testing.assert_close(many, one, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(many[0], model(x.unsqueeze(0))[0], rtol=1e-4, atol=1e-4)
    head = index.layers[-1]
    assert head.name == "conv_head"
    xs = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(13))
    dead = pruner.logits(xs, list(range(head.offset, head.offset + head.n_filters)))
    assert (dead - dead[0]).abs().max() == 0  # no information left: one output for every input
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_default_model_batched_perturbation_matches_parameter_dicts(lite0):
    # Depthwise convs, timm's SAME padding and the head: the hooks' extra convolution uses each
    # module's own forward, so it must agree with editing the weights themselves.
    model = lite0.module
    index = FilterIndex(model)
    x = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(15))
    pruner = FilterPruner(model, index, x)
    rng = np.random.default_rng(1)
    picks = [index.filter_id("conv_stem", 3), index.filter_id("blocks.1.0.conv_dw", 17),
             index.filter_id("conv_head", 100)]
    sets = [picks, rng.choice(index.n_filters, 50, replace=False)]
    batched = pruner.perturbed_logits_many(x, sets, sigma=0.05, seed=7)
    reference = _perturbed_by_params(pruner, x, sets, sigma=0.05, seed=7)
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        clean = model(x.unsqueeze(0))[0]
    assert (batched - clean).abs().amax() > 1e-3
