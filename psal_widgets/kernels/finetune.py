"""One normalized gradient step on chosen filters (paper §3.3, B.1), on a copy of the parameters.

The step descends the cross-entropy of the TRUE label on one image. Only the conv weights of the
chosen filters move (the slices ``weight[channel]`` that make up each filter: the parameters its
saliency is computed from), or every parameter of the network for the ``whole network`` reference.
The update is ``Δ = -step · g_S / ‖g_S‖``: the gradient restricted to the updated parameters,
normalized to unit L2 norm, times the step size (0.001 for ResNet-50 in the paper, its last
training learning rate). Because every filter set gets a step of the same L2 norm, the random and
least-salient baselines are "re-normalized to the same magnitude" as the salient filters (B.1)
by construction. Batch norm stays in eval mode (running statistics, nothing adapts).

Parameters are a dict ``name -> Tensor`` for :func:`torch.func.functional_call`; the user's
model is never modified, and unchanged tensors are shared with the input dict (no copies).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .filters import FilterIndex
from .profiles import per_filter

__all__ = ["batched_probs", "detached_parameters", "filter_step", "loss_gradients", "raw_profile", "step_norm"]


def detached_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters as detached tensors (sharing storage: never write into them)."""
    return {k: v.detach() for k, v in model.named_parameters()}


def loss_gradients(
    model: nn.Module, x: Tensor, y: Tensor | Sequence[int], *, params: dict[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Gradient of the mean cross-entropy w.r.t. every parameter, in eval mode.

    Parameters
    ----------
    model : nn.Module
        Used through ``functional_call``; its mode is set to eval and restored.
    x : Tensor, shape [B, 3, H, W]
    y : Tensor or sequence of int, shape [B]
    params : dict, optional
        Parameters to evaluate at (default: the model's own).

    Returns
    -------
    (dict name -> Tensor, Tensor [B, C])
        Gradients (same shapes as the parameters) and the logits of the same forward pass.
    """
    p = detached_parameters(model) if params is None else params
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
    target = torch.as_tensor(y, dtype=torch.long, device=x.device).reshape(-1)
    was_training = model.training
    model.eval()
    try:
        logits = functional_call(model, leaves, (x,))
        loss = F.cross_entropy(logits, target)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    finally:
        model.train(was_training)
    out = {k: (torch.zeros_like(v) if g is None else g) for (k, v), g in zip(leaves.items(), grads, strict=True)}
    return out, logits.detach()


def _selection(index: FilterIndex, filters: np.ndarray) -> dict[str, Tensor]:
    """Conv weight name -> channels to update (int64), for the filter ids ``filters``."""
    ids = np.unique(np.asarray(filters, dtype=np.int64).reshape(-1))
    if ids.size == 0:
        return {}
    layers = index.layer_of(ids)
    channels = index.channels(ids)
    out: dict[str, Tensor] = {}
    for pos in np.unique(layers):
        out[index.layers[int(pos)].param_name] = torch.as_tensor(channels[layers == pos])
    return out


def step_norm(grads: dict[str, Tensor], index: FilterIndex, filters: np.ndarray | None) -> float:
    """L2 norm of the gradient restricted to ``filters`` (every parameter when None)."""
    if filters is None:
        return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())))
    sel = _selection(index, filters)
    total = sum((grads[name][ch.to(grads[name].device)].double() ** 2).sum() for name, ch in sel.items())
    return float(torch.sqrt(torch.as_tensor(total, dtype=torch.float64)))


def filter_step(
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    index: FilterIndex,
    filters: np.ndarray | None,
    *,
    step: float,
) -> dict[str, Tensor]:
    """Parameters after one normalized descent step on ``filters``.

    Parameters
    ----------
    params : dict name -> Tensor
        Current parameters (not modified).
    grads : dict name -> Tensor
        Loss gradients at ``params`` (from :func:`loss_gradients`).
    index : FilterIndex
    filters : np.ndarray of int, shape [k], or None
        Filter ids whose conv weights move; None moves every parameter (the whole network).
    step : float
        L2 norm of the update: ``Δ = -step · g_S / ‖g_S‖``.

    Returns
    -------
    dict name -> Tensor
        New tensors for the updated parameters; the others are the input tensors themselves.
        A selected gradient that is exactly zero gives no update.
    """
    own = step_norm(grads, index, filters)
    factor = 0.0 if own == 0.0 else step / own
    out = dict(params)
    if filters is None:
        for name, g in grads.items():
            out[name] = params[name] - factor * g
        return out
    for name, ch in _selection(index, filters).items():
        ch = ch.to(params[name].device)
        new = params[name].clone()
        new[ch] = new[ch] - factor * grads[name][ch]
        out[name] = new
    return out


def batched_probs(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, *, buffers: dict[str, Tensor] | None = None
) -> Tensor:
    """Softmax probabilities of ``x`` [B, 3, H, W] under ``params``, eval mode, no grad: [B, C]."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            state = params if buffers is None else {**params, **buffers}
            return torch.softmax(functional_call(model, state, (x,)).float(), dim=1)
    finally:
        model.train(was_training)


def raw_profile(grads: dict[str, Tensor], index: FilterIndex) -> Tensor:
    """The raw filter profile (mean |grad| per filter) from a full gradient dict, shape [F]."""
    return per_filter([grads[name] for name in index.param_names])
