"""Adversarial parameter saliency (paper A.7): an L2-bounded perturbation of the conv filters that
maximizes (or minimizes) the loss on one image, found on a copy of the parameters.

``max_δ L_{θ0+δ}(x, y)  s.t.  ‖δ‖₂ ≤ ε`` over every conv weight (the parameters the filter profile
is made of), by projected gradient ascent: ``δ ← Π_ε(δ ± α · g/‖g‖)``, ``α = 2.5 ε / steps``
(Madry et al.'s rule, so that the boundary is reachable from any start). The adversarial profile
is ``|δ|`` averaged per filter. One step of size ε gives ``δ = ε g/‖g‖``, i.e. exactly the vanilla
raw profile times ``ε/‖g‖``: the paper's remark that its method "results in the exact same
saliency profile as a single-step adversary".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .filters import FilterIndex
from .profiles import per_filter

__all__ = ["AdversarialResult", "Direction", "adversarial_perturbation"]

#: Maximize the loss (the attack of A.7) or minimize it.
Direction = Literal["max", "min"]


@dataclass(frozen=True)
class AdversarialResult:
    """One image's adversarial perturbation.

    Attributes
    ----------
    delta : dict name -> Tensor
        The perturbation of each conv weight (same shapes), ``‖δ‖₂ ≤ eps`` over all of them.
    profile : Tensor, shape [F]
        ``|δ|`` averaged per filter (the adversarial raw profile).
    loss_before, loss_after : float
        Cross-entropy at ``θ0`` and at ``θ0 + δ``.
    norm : float
        ``‖δ‖₂``.
    grad_norm : float
        ``‖∇_θ L‖₂`` over the conv weights at ``θ0`` (``profile · grad_norm / eps`` is in the units of
        the raw gradient profile, exactly so for one step).
    """

    delta: dict[str, Tensor]
    profile: Tensor
    loss_before: float
    loss_after: float
    norm: float
    grad_norm: float


def adversarial_perturbation(
    model: nn.Module,
    x: Tensor,
    y: int | Sequence[int],
    *,
    index: FilterIndex,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    direction: Direction = "max",
) -> AdversarialResult:
    """Projected normalized-gradient ascent (or descent) on the conv weights within an L2 ball.

    Parameters
    ----------
    model : nn.Module
        Evaluated in eval mode through ``functional_call``; never modified.
    x : Tensor, shape [3, H, W] or [B, 3, H, W]
    y : int or sequence of int
    index : FilterIndex
    eps : float
        Radius of the L2 ball (over all conv weights together).
    steps : int
    step_size : float, optional
        Default ``2.5 · eps / steps``.
    direction : {"max", "min"}

    Returns
    -------
    AdversarialResult
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1; got eps={eps}, steps={steps}")
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min'; got {direction!r}")
    xb = x if x.dim() == 4 else x.unsqueeze(0)
    target = torch.as_tensor(y, dtype=torch.long, device=xb.device).reshape(-1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(index.param_names)
    delta = {n: torch.zeros_like(params[n]) for n in names}
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    sign = 1.0 if direction == "max" else -1.0
    was_training = model.training
    model.eval()

    def loss_at(d: dict[str, Tensor]) -> Tensor:
        state = {**params, **{n: params[n] + d[n] for n in names}}
        return F.cross_entropy(functional_call(model, state, (xb,)), target)

    grad_norm = 0.0
    try:
        with torch.no_grad():
            loss_before = float(loss_at(delta))
        for it in range(steps):
            leaves = {n: d.clone().requires_grad_(True) for n, d in delta.items()}
            grads = torch.autograd.grad(loss_at(leaves), [leaves[n] for n in names])
            gnorm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
            if it == 0:
                grad_norm = float(gnorm)
            if float(gnorm) == 0.0:
                break
            new = {n: delta[n] + (sign * alpha / gnorm).to(g.dtype) * g for n, g in zip(names, grads, strict=True)}
            norm = torch.sqrt(sum((v.double() ** 2).sum() for v in new.values()))
            shrink = min(1.0, eps / float(norm)) if float(norm) > 0 else 1.0
            delta = {n: v * shrink for n, v in new.items()}
        with torch.no_grad():
            loss_after = float(loss_at(delta))
    finally:
        model.train(was_training)
    norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in delta.values())))
    profile = per_filter([delta[n] for n in names])
    return AdversarialResult(delta=delta, profile=profile, loss_before=loss_before, loss_after=loss_after, norm=norm,
                             grad_norm=grad_norm)
