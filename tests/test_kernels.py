"""Kernels against independent references on a tiny seeded CNN."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from psal_widgets.kernels import (
    FilterIndex,
    FilterStats,
    InputSaliency,
    RunningMoments,
    filter_profiles,
    sorted_profile,
    standardize,
)

from .conftest import make_tiny


def reference_profile(net: nn.Module, x: torch.Tensor, y: int, *, signed: bool = False) -> torch.Tensor:
    """Plain loss.backward() on a copy, then a Python loop over every conv channel."""
    net = copy.deepcopy(net)
    net.zero_grad()
    F.cross_entropy(net(x.unsqueeze(0)), torch.tensor([y])).backward()
    values = []
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            for c in range(module.out_channels):
                g = module.weight.grad[c]
                values.append(g.mean() if signed else g.abs().mean())
    return torch.stack(values)


def test_filter_index_order_and_lookup(tiny):
    index = FilterIndex(tiny)
    assert index.n_filters == 13
    assert [layer.name for layer in index.layers] == ["conv1", "dw", "pw"]
    assert index.sizes == [4, 4, 5] and [la.offset for la in index.layers] == [0, 4, 8]
    assert index.locate(0) == ("conv1", 0)
    assert index.locate(7) == ("dw", 3)  # depthwise: one filter per output channel
    assert index.locate(12) == ("pw", 4)
    assert index.filter_id("pw", 2) == 10
    assert index.layer_names(np.array([3, 4, 8])) == ["conv1", "dw", "pw"]
    np.testing.assert_array_equal(index.channels(np.array([3, 4, 9])), [3, 0, 1])
    with pytest.raises(IndexError):
        index.locate(13)
    with pytest.raises(KeyError, match="psal layers"):
        index.filter_id("nope", 0)
    other = make_tiny()
    other.pw = nn.Conv2d(4, 6, 1)
    assert FilterIndex(other).checksum() != index.checksum()
    assert FilterIndex(make_tiny(seed=5)).checksum() == index.checksum()


def test_no_conv_model_is_refused():
    with pytest.raises(ValueError, match="no trainable nn.Conv2d"):
        FilterIndex(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))


def test_raw_profile_matches_plain_autograd_loop(tiny):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 8)
    y = torch.tensor([0, 2, 1])
    batch = filter_profiles(tiny, x, y, mode="raw")
    assert batch.profiles.shape == (3, 13) and batch.logits.shape == (3, 3)
    for b in range(3):
        torch.testing.assert_close(batch.raw[b], reference_profile(tiny, x[b], int(y[b])), rtol=1e-5, atol=1e-8)
    signed = filter_profiles(tiny, x, y, mode="signed")
    torch.testing.assert_close(signed.profiles[1], reference_profile(tiny, x[1], 2, signed=True), rtol=1e-5, atol=1e-8)


def test_hand_derived_profile():
    # logits = mean_hw(W x): dL/dW[j, i] = (softmax - onehot)_j * mean(x_i), so the profile of
    # filter j is |d_j| * mean_i |m_i|.
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]).view(2, 2, 1, 1))
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0] = 1.0
    x[0, 1] = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # channel means m = (1, 0.5)
    logits = torch.tensor([1.0 - 1.0, 0.5 + 1.5])  # W m
    d = torch.softmax(logits, 0) - torch.tensor([1.0, 0.0])
    expected = d.abs() * (1.0 + 0.5) / 2
    got = filter_profiles(net, x, [0], mode="raw").raw[0]
    torch.testing.assert_close(got, expected)


def test_batch_equals_one_by_one_and_vmap_equals_loop(tiny):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 8, 8)
    y = torch.tensor([1, 1, 0, 2])
    whole = filter_profiles(tiny, x, y, mode="raw", strategy="loop")
    for b in range(4):
        single = filter_profiles(tiny, x[b : b + 1], y[b : b + 1], mode="raw")
        torch.testing.assert_close(whole.raw[b], single.raw[0])
    vm = filter_profiles(tiny, x, y, mode="raw", strategy="vmap")
    torch.testing.assert_close(vm.raw, whole.raw, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(vm.logits, whole.logits, rtol=1e-5, atol=1e-6)


def test_nothing_is_mutated(tiny):
    torch.manual_seed(3)
    tiny.train()  # a user's model left in training mode must come back in training mode
    tiny.dw.weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    x0 = x.clone()
    before = copy.deepcopy(tiny.state_dict())
    std = torch.rand(13, dtype=torch.float64)
    std[[2, 5]] = 0.0
    stats = FilterStats(torch.rand(13, dtype=torch.float64), std)
    std0, mean0 = stats.std.clone(), stats.mean.clone()
    out = filter_profiles(tiny, x, [0, 1], stats=stats, mode="std")
    assert torch.equal(x, x0)
    assert torch.equal(stats.std, std0) and torch.equal(stats.mean, mean0)
    assert tiny.training and not tiny.dw.weight.requires_grad
    assert all(p.grad is None for p in tiny.parameters())
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, before[key]), key
    # Eval mode was used inside: the result equals the eval-mode profile.
    tiny.eval()
    again = filter_profiles(tiny, x, [0, 1], stats=stats, mode="std")
    torch.testing.assert_close(out.profiles, again.profiles)


def test_standardize_modes():
    raw = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    stats = FilterStats(
        torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64), torch.tensor([0.5, 0.0, 1e-15], dtype=torch.float64)
    )
    torch.testing.assert_close(standardize(raw, stats, "std"), torch.tensor([[1.0, 0.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(standardize(raw, stats, "norm"), torch.tensor([[2.0, 1.0, 3.0]], dtype=torch.float64))
    assert torch.equal(standardize(raw, None, "raw"), raw)
    assert stats.std[1] == 0.0  # the floor is applied to a copy
    with pytest.raises(ValueError, match="psal stats"):
        standardize(raw, None, "std")
    with pytest.raises(ValueError, match="another model"):
        standardize(torch.ones(1, 4, dtype=torch.float64), stats, "std")
    with pytest.raises(ValueError, match="unknown mode"):
        standardize(raw, stats, "zscore")  # type: ignore[arg-type]


def test_running_moments_match_torch():
    torch.manual_seed(4)
    data = torch.randn(101, 7, dtype=torch.float64) * torch.arange(1, 8) + 3
    rm = RunningMoments(7)
    for chunk in (data[:1], data[1:40], data[40:41], data[41:]):
        rm.update(chunk)
    assert rm.n == 101
    torch.testing.assert_close(rm.mean, data.mean(0))
    torch.testing.assert_close(rm.std(), data.std(0))
    torch.testing.assert_close(rm.std(ddof=0), data.std(0, correction=0))


def _distance(net, x, y, stats, filters, boost, target=None):
    """Direct formula of the input-saliency objective, written independently of the kernel.

    The boosted target is a constant: pass the one of the unperturbed image to hold it fixed.
    """
    weights = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    loss = F.cross_entropy(net(x.unsqueeze(0)), torch.tensor([y]))
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    raw = torch.cat([g.abs().reshape(g.shape[0], -1).mean(1) for g in grads])
    prof = (raw - stats.mean) / stats.safe_std()
    if target is None:
        target = prof.detach().clone()
        for f in filters:
            target[f] = target[f] * boost
    return 1 - torch.dot(prof, target) / (prof.norm() * target.norm())


def test_input_saliency_matches_autograd_and_finite_differences():
    net = make_tiny(dtype=torch.float64)
    torch.manual_seed(5)
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    stats = FilterStats(torch.rand(13, dtype=torch.float64) * 0.01, torch.rand(13, dtype=torch.float64) * 0.01 + 0.001)
    index = FilterIndex(net)
    kernel = InputSaliency(net, x, 1, index=index, stats=stats)
    filters = [2, 9, 11]
    got = kernel.gradient(filters, boost=100.0)
    assert got.shape == x.shape
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_distance(net, xr, 1, stats, filters, 100.0), xr)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)
    # Central finite differences on a few pixels: an independent check of the double backward.
    target = kernel.values.clone()
    target[filters] *= 100.0
    eps = 1e-5
    for c, i, j in [(0, 0, 0), (1, 3, 2), (2, 5, 5)]:
        e = torch.zeros_like(x)
        e[c, i, j] = eps
        plus = _distance(net, x + e, 1, stats, filters, 100.0, target).item()
        minus = _distance(net, x - e, 1, stats, filters, 100.0, target).item()
        fd = (plus - minus) / (2 * eps)
        assert abs(fd - float(got[c, i, j])) <= 1e-5 * abs(fd) + 1e-9
    # The kept graph answers again, identically, and a different set gives a different map.
    torch.testing.assert_close(kernel.gradient(filters), got)
    other = kernel.gradient([0, 4])
    assert not torch.allclose(other, got)
    assert torch.equal(kernel.top_filters(3), torch.topk(kernel.values, 3).indices)
    kernel.release()
    with pytest.raises(RuntimeError, match="released"):
        kernel.gradient(filters)


def test_input_saliency_validates(tiny):
    index = FilterIndex(tiny)
    x = torch.randn(3, 8, 8)
    x0 = x.clone()
    kernel = InputSaliency(tiny, x, 0, index=index, mode="raw")
    assert torch.equal(x, x0) and all(p.grad is None for p in tiny.parameters())
    with pytest.raises(ValueError, match="empty"):
        kernel.gradient([])
    with pytest.raises(ValueError, match="out of range: this model has 13 filters"):
        kernel.gradient([13])
    with pytest.raises(ValueError, match="must be integers"):
        kernel.gradient([1.5])  # never truncated to filter 1
    tiny.train()
    with pytest.raises(ValueError, match="eval mode"):
        InputSaliency(tiny, x, 0, index=index, mode="raw")


def test_sorted_profile_layout(tiny):
    index = FilterIndex(tiny)
    values = np.array([3.0, 1.0, 2.0, 0.0, -1.0, 5.0, 5.0, 0.5, 9.0, 0.0, 1.0, 2.0, 3.0])
    sp = sorted_profile(values, index)
    np.testing.assert_array_equal(sp.filter_id[:4], [0, 2, 1, 3])
    np.testing.assert_array_equal(sp.filter_id[4:8], [5, 6, 7, 4])  # ties keep channel order
    np.testing.assert_array_equal(np.sort(sp.filter_id), np.arange(13))
    np.testing.assert_array_equal(sp.y, values[sp.filter_id])
    for pos in range(3):
        block = sp.y[sp.layer == pos]
        assert np.all(np.diff(block) <= 0)
        xs = sp.x[sp.layer == pos]
        assert np.all((xs > pos) & (xs < pos + 1))
    assert sp.rank[sp.filter_id == 8][0] == 0  # the largest value has global rank 0
    assert sp.layer_names == ["conv1", "dw", "pw"]


def test_basis_maps_reproduce_the_direct_gradient():
    from psal_widgets.kernels.basis import SaliencyBasis

    net = make_tiny(dtype=torch.float64)
    torch.manual_seed(6)
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    stats = FilterStats(torch.rand(13, dtype=torch.float64) * 0.01, torch.rand(13, dtype=torch.float64) * 0.01 + 0.001)
    kernel = InputSaliency(net, x, 2, index=FilterIndex(net), stats=stats)
    basis = SaliencyBasis(kernel)
    basis.add([5, 1, 12, 3], chunk=3)
    assert basis.candidates == [5, 1, 12, 3] and basis.covers([1, 3]) and not basis.covers([0])
    for filters, boost in (([1, 3], 100.0), ([12], 7.0), ([5, 1, 12, 3], 100.0)):
        torch.testing.assert_close(basis.gradient(filters, boost=boost), kernel.gradient(filters, boost=boost),
                                   rtol=1e-9, atol=1e-14)
    with pytest.raises(KeyError, match="add"):
        basis.gradient([0])


# -- one requires_grad helper, one standardization, a load_model that keeps the global RNG --------
def test_requires_grad_helper_restores_each_flag_even_on_error(tiny):
    from psal_widgets.kernels.grad_mode import requires_grad

    tiny.dw.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in tiny.named_parameters()}
    with requires_grad(tiny.parameters(), True) as params:
        assert all(p.requires_grad for p in params) and len(params) == len(before)
    assert {n: p.requires_grad for n, p in tiny.named_parameters()} == before
    with pytest.raises(RuntimeError, match="boom"), requires_grad(tiny.parameters(), False):
        assert not any(p.requires_grad for p in tiny.parameters())
        raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in tiny.named_parameters()} == before


def test_zscore_is_one_formula_for_numpy_and_torch():
    from psal_widgets.kernels.neighbours import standardize_bank
    from psal_widgets.kernels.standardize import zscore

    rng = np.random.default_rng(5)
    raw = rng.gamma(2.0, 1.0, size=(4, 6))
    mean, std = rng.uniform(1, 2, 6), rng.uniform(0.5, 1.5, 6)
    std[[1, 4]] = [0.0, 1e-15]  # dead filters: divided by 1
    expected = (raw - mean) / np.where(std <= 1e-14, 1.0, std)  # written out here
    copies = raw.copy(), mean.copy(), std.copy()
    np.testing.assert_allclose(zscore(raw, mean, std), expected, rtol=1e-12)
    t = zscore(torch.from_numpy(raw), torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(standardize_bank(raw.astype(np.float16), mean, std),
                               zscore(raw.astype(np.float16), mean, std), rtol=1e-6)
    stats = FilterStats(torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(standardize(torch.from_numpy(raw), stats, "std").numpy(), expected, rtol=1e-12)
    for arr, orig in zip((raw, mean, std), copies, strict=True):
        np.testing.assert_array_equal(arr, orig)  # nothing mutated


def test_standardized_uses_absolute_gradients_in_every_mode(tiny):
    """The statistics describe mean |grad|: a signed analysis must not be standardized with them."""
    from psal_widgets.data import Preprocess
    from psal_widgets.explainer import Explainer
    from psal_widgets.models import from_module

    model = from_module(tiny, labels=["a", "b", "c"], preprocess=Preprocess(resize=12, crop=12), device="cpu")
    mean = torch.rand(13, dtype=torch.float64) * 0.1
    std = torch.rand(13, dtype=torch.float64) + 0.5
    stats = FilterStats(mean, std)
    image = np.random.default_rng(0).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    x = model.preprocess.normalize(image)
    ref = (reference_profile(tiny, x, 1) - mean) / std  # |grad| of a plain loop
    ref_signed = reference_profile(tiny, x, 1, signed=True)
    for mode in ("std", "signed", "raw"):
        a = Explainer(model, stats=stats, mode=mode).analyze(x, label=1)
        np.testing.assert_allclose(a.standardized(), ref.numpy(), rtol=1e-5, atol=1e-8)
        a.release()
    signed = Explainer(model, stats=stats, mode="signed").analyze(x, label=1)
    np.testing.assert_allclose(signed.profile, ref_signed.numpy(), rtol=1e-5, atol=1e-9)
    assert not np.allclose(np.abs(signed.raw), signed.abs_raw)  # signed means differ from |grad| means


def test_load_model_keeps_the_global_rng():
    from psal_widgets.models import load_model

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = load_model(random_weights=True, seed=4, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), state)
    b = load_model(random_weights=True, seed=4, device="cpu")
    c = load_model(random_weights=True, seed=5, device="cpu")
    wa, wb, wc = (next(m.module.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)  # the seed still decides the weights
    assert torch.equal(torch.random.get_rng_state(), state)
