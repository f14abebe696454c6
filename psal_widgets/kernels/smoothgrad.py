"""SmoothGrad parameter saliency (paper A.1): perturb the INPUT, take the gradient w.r.t. the parameters.

``s̄_SG(x, y) = (1/n) Σ_j s̄(x + ε_j, y)`` with ``ε_j ~ N(0, σ²)`` and ``σ = noise · (max(x) − min(x))``
(SmoothGrad's noise level: a fraction of the input's range, Smilkov et al. 2017). The average is
taken over raw profiles, before standardization (the standardization is affine, so standardizing
the average equals averaging the standardized profiles).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .filters import FilterIndex
from .profiles import filter_profiles

__all__ = ["noisy_copies", "smoothgrad_profile"]


def noisy_copies(x: Tensor, *, n_samples: int, noise: float, generator: torch.Generator | None = None) -> Tensor:
    """``n_samples`` copies of ``x`` [3, H, W] plus Gaussian noise of std ``noise · (max − min)``: [n, 3, H, W]."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1; got {n_samples}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise}")
    sigma = float(noise) * float(x.max() - x.min())
    eps = torch.randn((n_samples, *x.shape), generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return x.unsqueeze(0) + sigma * eps


def smoothgrad_profile(
    model: nn.Module,
    x: Tensor,
    label: int,
    *,
    index: FilterIndex,
    n_samples: int = 10,
    noise: float = 0.1,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """The SmoothGrad raw filter profile of one image.

    Parameters
    ----------
    model : nn.Module
    x : Tensor, shape [3, H, W]
        Preprocessed image (not modified).
    label : int
        Class of the loss.
    index : FilterIndex
    n_samples, noise : int, float
        Noisy copies and their noise level (fraction of the input range; 0 gives the vanilla profile).
    generator : torch.Generator, optional
        Seeds the noise (CPU generator).
    batch_size : int
        Noisy copies per :func:`filter_profiles` call.

    Returns
    -------
    (Tensor [F], Tensor [n_samples, C])
        The averaged raw profile and the logits of every noisy copy.
    """
    copies = noisy_copies(x, n_samples=n_samples, noise=noise, generator=generator)
    total = None
    logits = []
    for s in range(0, n_samples, batch_size):
        part = copies[s : s + batch_size]
        batch = filter_profiles(model, part, [int(label)] * part.shape[0], index=index, mode="raw")
        summed = batch.raw.double().sum(dim=0)
        total = summed if total is None else total + summed
        logits.append(batch.logits)
    assert total is not None
    return total / n_samples, torch.cat(logits)
