"""Input maps are exact for every filter set: the closed-form weights of ∂D_C/∂ŝ (float64, no
cancellation) agree with autograd of the cosine distance in float64, dead filters give an all-zero
map, and the basis path agrees with the direct path for any set, boost and sign."""
from __future__ import annotations

import pytest
import torch

from psal_widgets.kernels.basis import SaliencyBasis
from psal_widgets.kernels.filters import FilterIndex
from psal_widgets.kernels.saliency import InputSaliency, distance_weights, negligible_set
from psal_widgets.kernels.stats import FilterStats

from .conftest import make_tiny


def _autograd_distance_grad(profile: torch.Tensor, filters: list[int], boost: float) -> torch.Tensor:
    """∂D_C/∂ŝ by autograd, everything in float64 (the independent reference)."""
    s = profile.detach().to(torch.float64).clone().requires_grad_(True)
    c = s.detach().clone()
    c[filters] *= boost
    d = 1 - torch.dot(s, c) / (s.norm() * c.norm())
    (g,) = torch.autograd.grad(d, s)
    return g


@pytest.mark.parametrize("boost", [100.0, 2.0, 0.5, 1e4])
@pytest.mark.parametrize("filters", [[0], [3, 7, 11], list(range(13))[::2]])
def test_closed_form_weights_equal_autograd(boost, filters):
    torch.manual_seed(0)
    s = torch.randn(13, dtype=torch.float64)  # negative saliencies included
    a1, a2 = distance_weights(s, torch.tensor(filters), boost=boost)
    mine = a1 * s
    mine[filters] += a2 * s[filters]
    torch.testing.assert_close(mine, _autograd_distance_grad(s, filters, boost), rtol=1e-10, atol=1e-14)


def test_zero_entries_give_zero_weights_exactly():
    s = torch.tensor([1.0, -2.0, 0.0, 0.0, 3.0])
    assert distance_weights(s, torch.tensor([2, 3]), boost=100.0) == (0.0, 0.0)
    assert negligible_set(s, torch.tensor([2]))
    assert not negligible_set(s, torch.tensor([2, 4]))
    # Boosting the whole support scales the profile: same ray, distance 0, map 0.
    assert negligible_set(s, torch.tensor([0, 1, 4]))
    assert distance_weights(s, torch.tensor([0, 1, 4]), boost=100.0) == (0.0, 0.0)
    assert distance_weights(s, torch.tensor([0]), boost=1.0) == (0.0, 0.0)  # no boost, no change


def _kernel(dtype=torch.float32, dead: tuple[int, ...] = ()):
    net = make_tiny(dtype=dtype)
    torch.manual_seed(5)
    x = torch.randn(3, 6, 6, dtype=dtype)
    mean = torch.rand(13, dtype=torch.float64) * 0.01
    std = torch.rand(13, dtype=torch.float64) * 0.01 + 0.001
    stats = FilterStats(mean, std)
    k = InputSaliency(net, x, 1, index=FilterIndex(net), stats=stats)
    for i in dead:  # a filter whose standardized value is 0, as with σ = 0 over the validation set
        k.values[i] = 0.0
    return net, x, stats, k


def test_dead_filter_map_is_exactly_zero():
    _, _, _, k = _kernel(dead=(4,))
    g = k.gradient([4], boost=100.0)
    assert torch.count_nonzero(g) == 0


def test_gradient_matches_float64_autograd_of_the_distance():
    net, x, stats, k = _kernel(dtype=torch.float64)
    for filters, boost in [([2, 9, 11], 100.0), ([0], 3.0), ([5, 6], 0.25)]:
        got = k.gradient(filters, boost=boost)
        xr = x.clone().requires_grad_(True)
        kk = InputSaliency(net, xr.detach(), 1, index=FilterIndex(net), stats=stats)
        target = kk.values.clone()
        target[filters] *= boost
        d = 1 - torch.dot(kk.profile, target) / (kk.profile.norm() * target.norm())
        (want,) = torch.autograd.grad(d, kk._x)
        torch.testing.assert_close(got, want[0], rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_basis_equals_direct_for_sets_boosts_and_signs(dtype):
    _, _, _, k = _kernel(dtype=dtype, dead=(4,))
    assert (k.values < 0).any() and (k.values > 0).any()
    basis = SaliencyBasis(k)
    basis.add(range(13), chunk=5)
    for filters in ([1], [4], [4, 8], [0, 3, 12], list(range(13))):
        for boost in (100.0, 5.0, 0.1):
            direct = k.gradient(filters, boost=boost)
            fast = basis.gradient(filters, boost=boost)
            if torch.count_nonzero(direct) == 0:
                assert torch.count_nonzero(fast) == 0
                continue
            rel = float((fast - direct).norm() / direct.norm())
            assert rel <= 1e-4, (filters, boost, rel)


@pytest.mark.slow
def test_dead_filters_of_the_default_model_give_zero_maps(default_explainer):
    ex = default_explainer
    std = ex.stats.std
    dead = torch.nonzero(std <= 1e-14).flatten()
    assert dead.numel() > 0
    a = ex.analyze("raw_images/chelsea.png")
    grad = a.input_gradient(dead[:3].numpy())
    assert (grad == 0).all()
    live = a.top_filters(3)
    assert abs(a.input_gradient(live)).max() > 0
