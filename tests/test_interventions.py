"""Turning filters off (paper §3.1) against a deepcopy-and-zero reference; the model is intact."""

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


def test_pruned_bn_channel_is_constant_and_others_unchanged(net):
    index = FilterIndex(net)
    before = _state(net)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen, handle = _capture(net.b1)
    try:
        with torch.no_grad():
            net(x)
        clean = seen["out"]
        pruner = FilterPruner(net, index, x[0])
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


def test_functional_call_matches_a_deepcopy_reference(net):
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
        expected = ref(x)
    got = FilterPruner(net, index, x).logits(x, ids)
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
    assert new["c2.weight"] is params["c2.weight"]  # untouched layers are shared, not copied
    assert float(params["c1.weight"][1].detach().abs().sum()) > 0
    with torch.no_grad():
        torch.testing.assert_close(pruner.logits(x, []), net(x.unsqueeze(0))[0], rtol=0, atol=0)


def test_select_filters_kinds():
    profile = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 3.0])
    np.testing.assert_array_equal(select_filters("salient", profile, 3), [1, 5, 3])
    np.testing.assert_array_equal(select_filters("least", profile, 2), [2, 4])
    a = select_filters("random", profile, 4, seed=7)
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
