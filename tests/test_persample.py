"""Per-sample profiles from hooks (and vmap) against the per-image autograd loop, on every conv variant."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psal_widgets.kernels.filters import FilterIndex
from psal_widgets.kernels.persample import HooksUnsupported, conv_filter_grads, hooks_supported, profiles_hooks
from psal_widgets.kernels.profiles import filter_profiles

from .conftest import ROOT, make_tiny

PATHS = ("loop", "vmap", "hooks")


def _rel_err(ref: torch.Tensor, got: torch.Tensor, index: FilterIndex) -> float:
    """Largest error per image and layer, relative to that layer's largest value for the image."""
    worst = 0.0
    for layer in index.layers:
        a = ref[:, layer.offset : layer.offset + layer.n_filters].double()
        b = got[:, layer.offset : layer.offset + layer.n_filters].double()
        scale = a.abs().amax(dim=1).clamp_min(1e-300)
        worst = max(worst, float(((a - b).abs().amax(dim=1) / scale).max()))
    return worst


def _reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, signed: bool = False) -> torch.Tensor:
    """Independent of the code under test: one autograd call per image on the conv weights."""
    index = FilterIndex(net)
    params = dict(net.named_parameters())
    weights = [params[n] for n in index.param_names]
    rows = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, weights)
        rows.append(torch.cat([(g if signed else g.abs()).flatten(1).mean(1) for g in grads]))
    return torch.stack(rows)


class VariantNet(nn.Module):
    """Every conv shape the hook path must reproduce: stride 2, dilation, odd and asymmetric kernels and
    padding, string padding, reflect padding, groups, depthwise with a channel multiplier, no bias, an
    in-place ReLU straight on a conv output, and timm's TF-"SAME" conv (asymmetric padding)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.conv2d_same import Conv2dSame

        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2, bias=False)
        self.c3 = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6)  # depthwise, multiplier 2
        self.c4 = nn.Conv2d(12, 8, (3, 1), padding=(1, 0), padding_mode="reflect")
        self.c5 = nn.Conv2d(8, 8, 5, padding="same", dilation=(1, 2))
        self.c6 = nn.Conv2d(8, 6, 1, stride=2)
        self.c7 = Conv2dSame(6, 6, 3, stride=2, groups=6)
        self.c8 = nn.Conv2d(6, 5, 2, stride=(1, 2), padding=1, dilation=(2, 1))
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.bn(self.c1(x)))
        x = torch.tanh(self.c2(x)) + x
        x = torch.tanh(self.c3(x))
        x = self.c4(x).relu_()
        x = torch.tanh(self.c6(torch.tanh(self.c5(x))))
        x = torch.tanh(self.c8(torch.tanh(self.c7(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make_variant(dtype: torch.dtype) -> VariantNet:
    torch.manual_seed(1)
    net = VariantNet()
    net.bn.running_mean.uniform_(-0.5, 0.5)
    net.bn.running_var.uniform_(0.5, 2.0)
    return net.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("strategy", PATHS)
@pytest.mark.parametrize("signed", [False, True])
def test_every_path_matches_the_loop_tiny(dtype, strategy, signed):
    net = make_tiny(dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 12, 12, generator=gen, dtype=dtype)
    y = torch.tensor([0, 1, 2, 0, 1])
    ref = _reference(net, x, y, signed=signed)
    got = filter_profiles(net, x, y, mode="signed" if signed else "raw", strategy=strategy)
    assert got.raw.dtype == dtype
    assert _rel_err(ref, got.raw, FilterIndex(net)) <= (1e-10 if dtype == torch.float64 else 1e-4)
    torch.testing.assert_close(got.logits, net(x).detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("strategy", PATHS)
def test_every_path_matches_the_loop_on_conv_variants(dtype, strategy):
    net = make_variant(dtype)
    assert hooks_supported(net)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 27, 23, generator=gen, dtype=dtype)  # odd sizes: stride-2 and SAME padding are uneven
    y = torch.tensor([3, 0, 2])
    ref = _reference(net, x, y)
    got = filter_profiles(net, x, y, mode="raw", strategy=strategy)
    assert _rel_err(ref, got.raw, FilterIndex(net)) <= (1e-10 if dtype == torch.float64 else 1e-4)


def test_chunked_layers_give_the_same_profiles():
    net = make_variant(torch.float64)
    index = FilterIndex(net)
    x = torch.randn(4, 3, 20, 20, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    whole, _ = profiles_hooks(net, x, y, index)
    one_by_one, _ = profiles_hooks(net, x, y, index, chunk_bytes=1)  # every layer in chunks of one image
    torch.testing.assert_close(one_by_one, whole, rtol=1e-12, atol=0)


def test_conv_filter_grads_against_autograd_on_one_layer():
    """The identity itself, on a lone strided, dilated, grouped conv: sum over samples = weight.grad."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    x = torch.randn(3, 4, 11, 9, dtype=torch.float64)
    out = conv(x)
    grad_out = torch.randn_like(out)
    per_sample = torch.stack([torch.autograd.grad(conv(x[i : i + 1]), conv.weight, grad_out[i : i + 1])[0]
                              for i in range(3)])
    expected = per_sample.abs().flatten(2).mean(2)
    torch.testing.assert_close(conv_filter_grads(conv, x, grad_out), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 3, "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"kernel_size": (5, 3), "stride": 2, "padding": 2, "dilation": 1},
    {"kernel_size": 3, "stride": 1, "padding": 0, "dilation": 3, "padding_mode": "reflect"},
], ids=["strided-dilated", "5x3-stride2", "reflect-dilated"])
def test_depthwise_filter_grads_against_autograd(kwargs):
    """The depthwise path (one grouped convolution, stride and dilation swapped) on its own."""
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 5, groups=5, **kwargs).double()
    x = torch.randn(4, 5, 13, 12, dtype=torch.float64)
    out = conv(x)
    grad_out = torch.randn_like(out)
    per_sample = torch.stack([torch.autograd.grad(conv(x[i : i + 1]), conv.weight, grad_out[i : i + 1])[0]
                              for i in range(4)])
    expected = per_sample.abs().flatten(2).mean(2)
    torch.testing.assert_close(conv_filter_grads(conv, x, grad_out), expected, rtol=1e-10, atol=0)
    signed = per_sample.flatten(2).mean(2)
    torch.testing.assert_close(conv_filter_grads(conv, x, grad_out, signed=True), signed, rtol=1e-10, atol=1e-14)


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in net.modules())


@pytest.mark.parametrize("strategy", PATHS + ("auto",))
def test_flags_and_hooks_left_as_found(strategy):
    net = make_variant(torch.float32)
    net.c3.weight.requires_grad_(False)  # a frozen conv still gets its filters profiled
    net.fc.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in net.named_parameters()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()  # filter_profiles evaluates in eval mode and restores the mode
    x = torch.randn(2, 3, 16, 16)
    filter_profiles(net, x, [0, 1], mode="raw", strategy=strategy)
    assert net.training
    assert {name: p.requires_grad for name, p in net.named_parameters()} == flags
    assert _hook_count(net) == 0
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():  # running statistics untouched (eval mode inside)
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_training_mode_is_refused():
    net = make_tiny()
    index = FilterIndex(net)
    x = torch.randn(2, 3, 8, 8)
    y = torch.tensor([0, 1])
    net.train()
    with pytest.raises(ValueError, match="eval mode"):
        profiles_hooks(net, x, y, index)
    net.eval()
    net.bn1.train()  # a single batch-norm left in training mode mixes the batch just as well
    with pytest.raises(ValueError, match="eval mode"):
        profiles_hooks(net, x, y, index)
    assert _hook_count(net) == 0


class _OwnForward(nn.Conv2d):
    """A conv subclass with its own forward: the hook path cannot know what it convolves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 0, 1, 0)))


class _Twice(nn.Module):
    """One conv run twice per forward: its weight gradient is a sum over the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(torch.tanh(self.conv(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("net", [
    nn.Sequential(_OwnForward(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
    _Twice(),
], ids=["own-forward", "called-twice"])
def test_unsupported_convs_fall_back_under_auto(net):
    net = net.double().eval()
    x = torch.randn(3, 3, 9, 9, dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    with pytest.raises(HooksUnsupported):
        filter_profiles(net, x, y, mode="raw", strategy="hooks")
    assert _hook_count(net) == 0
    got = filter_profiles(net, x, y, mode="raw", strategy="auto")
    assert _rel_err(_reference(net, x, y), got.raw, FilterIndex(net)) <= 1e-10


def test_auto_takes_hooks_for_small_models_and_the_loop_past_the_cpu_threshold(monkeypatch):
    from psal_widgets.kernels import profiles as prof

    net = make_variant(torch.float32)
    index = FilterIndex(net)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert prof.auto_strategy(net, index, cpu) == "hooks"
    weights = sum(dict(net.named_parameters())[n].numel() for n in index.param_names)
    monkeypatch.setattr(prof, "CPU_HOOKS_MAX_CONV_WEIGHTS", weights - 1)
    assert prof.auto_strategy(net, index, cpu) == "loop"
    assert prof.auto_strategy(net, index, cuda) == "hooks"  # the threshold is for CPUs only
    twice = _Twice()
    assert prof.auto_strategy(twice, FilterIndex(twice), cuda) in ("hooks", "vmap")
    own = nn.Sequential(_OwnForward(3, 4, 3), nn.Flatten())
    assert prof.auto_strategy(own, FilterIndex(own), cuda) == "vmap"
    assert prof.auto_strategy(own, FilterIndex(own), cpu) == "loop"


@pytest.mark.slow
def test_every_path_matches_the_loop_on_the_default_model(default_explainer):
    """Forced paths on 4 real photos. In float64 all agree with the loop to 1e-4 (in fact ~1e-12). In float32
    every path, the loop included, is ~2e-3 per layer off the float64 profile (rounding in a 49-layer
    forward), so there each path must be as close to the float64 truth as the float32 loop is."""
    import copy

    from psal_widgets.data import load_image

    model = default_explainer.model
    files = sorted(p for p in (ROOT / "raw_images").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:4]
    assert len(files) == 4
    x = torch.stack([model.preprocess(load_image(p)) for p in files]).to(model.device)
    y = torch.tensor([281, 967, 652, 657])  # tabby, espresso, military uniform, missile (sorted file names)
    index = FilterIndex(model.module)
    net64 = copy.deepcopy(model.module).double()
    truth = filter_profiles(net64, x.double(), y, index=index, mode="raw", strategy="loop").raw
    assert truth.shape == (4, 21008)
    loop32 = _rel_err(truth, filter_profiles(model.module, x, y, index=index, mode="raw", strategy="loop").raw, index)
    for strategy in ("vmap", "hooks", "auto"):
        got64 = filter_profiles(net64, x.double(), y, index=index, mode="raw", strategy=strategy).raw
        assert _rel_err(truth, got64, index) <= 1e-4, strategy
        got32 = filter_profiles(model.module, x, y, index=index, mode="raw", strategy=strategy).raw
        assert _rel_err(truth, got32, index) <= 1.5 * loop32 + 1e-5, strategy
