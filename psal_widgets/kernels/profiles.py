"""Filter-wise parameter saliency profiles (paper §2, GUIDE §2).

``s̄(x, y)_k = mean_{i in filter k} |∂L(x, y)/∂θ_i|`` with ``L`` the cross-entropy of the
logits against label ``y``; standardized against validation statistics by default.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._types import Mode, Strategy
from .filters import FilterIndex
from .grad_mode import requires_grad
from .persample import HooksUnsupported, hooks_supported, profiles_hooks
from .standardize import profile_mode
from .stats import FilterStats

__all__ = [
    "CPU_HOOKS_MAX_CONV_WEIGHTS", "ProfileBatch", "auto_strategy", "conv_weights", "eval_mode", "filter_profiles",
    "per_filter", "standardize", "tap_in_profile_pass",
]


@dataclass(frozen=True)
class ProfileBatch:
    """Profiles of a batch and the logits of the same forward pass.

    Attributes
    ----------
    profiles : Tensor, shape [B, F]
        The profiles in the requested mode.
    raw : Tensor, shape [B, F]
        Mean |grad| per filter (the signed mean for mode ``signed``).
    logits : Tensor, shape [B, C]
    """

    profiles: Tensor
    raw: Tensor
    logits: Tensor


@contextlib.contextmanager
def eval_mode(model: nn.Module, index: FilterIndex) -> Iterator[list[nn.Parameter]]:
    """Put ``model`` in eval mode with its conv weights requiring grad; restore both afterwards.

    Eval mode matters: batch norm must use its running statistics so that each sample's
    gradient does not depend on the rest of the batch. Yields the conv weights in index order.
    """
    was_training = model.training
    model.eval()
    try:
        with requires_grad(conv_weights(model, index), True) as weights:
            yield weights
    finally:
        model.train(was_training)


def conv_weights(model: nn.Module, index: FilterIndex) -> list[nn.Parameter]:
    """The conv weights of ``model`` in filter-index order."""
    params = dict(model.named_parameters())
    return [params[name] for name in index.param_names]


def per_filter(grads: Sequence[Tensor], *, signed: bool = False) -> Tensor:
    """Reduce per-layer weight gradients to one value per filter.

    Parameters
    ----------
    grads : sequence of Tensor, each [..., C_out, C_in/groups, kH, kW]
        Gradients of the conv weights, in index order; leading batch dims are kept.
    signed : bool
        Mean of the signed gradient instead of its absolute value.

    Returns
    -------
    Tensor, shape [..., F]
    """
    parts = []
    for g in grads:
        g = g if signed else g.abs()
        parts.append(g.flatten(start_dim=g.dim() - 3).mean(dim=-1))
    return torch.cat(parts, dim=-1)


def standardize(raw: Tensor, stats: FilterStats | None, mode: Mode) -> Tensor:
    """Turn a raw profile into the profile of ``mode`` (see :func:`.standardize.profile_mode`).

    Kept under this name for existing callers; the formula lives in :mod:`.standardize`.
    """
    return profile_mode(raw, stats, mode)


#: On a CPU, the hook path writes every sample's whole conv weight gradient before reducing it
#: (``B x`` the conv weights); past this many conv weights that costs more than it saves, and
#: ``auto`` takes the per-image loop. Measured with ``psal bench stats`` on this project's 2-core
#: CPU, idle, per image against a batched training step of the same model: EfficientNet-Lite0
#: (3.4 M conv weights) hooks 0.87x, loop 1.0x; ResNet-50 (23.5 M) hooks 1.38x, loop 1.11x.
CPU_HOOKS_MAX_CONV_WEIGHTS = 10_000_000


def _resolve_strategy(strategy: Strategy, device: torch.device) -> str:
    if strategy == "auto":
        return "hooks"  # refined per model by auto_strategy
    if strategy not in ("loop", "vmap", "hooks"):
        raise ValueError(f"unknown strategy {strategy!r}; choose auto, loop, vmap or hooks")
    return strategy


def auto_strategy(model: nn.Module, index: FilterIndex, device: torch.device) -> str:
    """The exact path ``strategy="auto"`` takes for ``model`` on ``device``.

    On accelerators: ``hooks`` (one batched forward and backward of large kernels, without vmap's
    ``[B, *all conv weights]`` gradients in memory) when every conv allows it, else ``vmap``. On
    a CPU: ``hooks`` for models up to :data:`CPU_HOOKS_MAX_CONV_WEIGHTS` conv weights, else (or
    when a conv does not allow hooks) the per-image ``loop``.
    """
    fallback = "loop" if device.type == "cpu" else "vmap"
    if not hooks_supported(model, index):
        return fallback
    if device.type == "cpu":
        params = dict(model.named_parameters())
        weights = sum(params[name].numel() for name in index.param_names)
        if weights > CPU_HOOKS_MAX_CONV_WEIGHTS:
            return "loop"
    return "hooks"


def tap_in_profile_pass(model: nn.Module, index: FilterIndex, device: torch.device) -> bool:
    """Whether ``filter_profiles(..., strategy="auto")`` runs the model as plain module calls
    (hooks or the per-image loop), so forward hooks see each image exactly once, in order."""
    return auto_strategy(model, index, device) in ("hooks", "loop")


def filter_profiles(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | Sequence[int],
    *,
    index: FilterIndex | None = None,
    stats: FilterStats | None = None,
    mode: Mode = "std",
    strategy: Strategy = "auto",
) -> ProfileBatch:
    """Parameter-saliency profiles of a batch, one per image.

    Parameters
    ----------
    model : nn.Module
        A classifier returning logits [B, C]; used in eval mode, restored afterwards.
    images : Tensor, shape [B, 3, H, W]
        Preprocessed (normalized) images on the model's device. Not modified.
    labels : Tensor or sequence of int, shape [B]
        Class used in the loss for each image (the true label or any class of interest).
    index : FilterIndex, optional
        Built from ``model`` when omitted.
    stats : FilterStats, optional
        Validation statistics, needed for ``std`` and ``norm``. Not modified.
    mode : {"std", "raw", "norm", "signed"}
    strategy : {"auto", "loop", "vmap", "hooks"}
        ``hooks``: one batched forward + backward, per-sample conv weight gradients from module
        hooks (:mod:`.persample`); ``auto`` takes it when every conv is supported, else the loop
        (CPU) or vmap.

    Returns
    -------
    ProfileBatch
        ``profiles`` and ``raw`` of shape [B, F], ``logits`` [B, C], all detached.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, 3, H, W]; got {tuple(images.shape)}")
    index = index or FilterIndex(model)
    y = torch.as_tensor(labels, dtype=torch.long, device=images.device).reshape(-1)
    if y.numel() != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {y.numel()} labels")
    signed = mode == "signed"
    fallback = "loop" if images.device.type == "cpu" else "vmap"
    if strategy == "auto":
        how = auto_strategy(model, index, images.device)
    else:
        how = _resolve_strategy(strategy, images.device)
    with eval_mode(model, index) as weights:
        if how == "hooks":
            try:
                raw, logits = profiles_hooks(model, images, y, index, signed=signed)
            except HooksUnsupported:
                if strategy != "auto":
                    raise
                how = fallback  # found only while running (a conv called twice): the exact general path
        if how == "vmap":
            raw, logits = _profiles_vmap(model, images, y, index, signed)
        elif how == "loop":
            raws, outs = [], []
            for b in range(images.shape[0]):
                logit = model(images[b : b + 1])
                loss = F.cross_entropy(logit, y[b : b + 1])
                grads = torch.autograd.grad(loss, weights)
                raws.append(per_filter(grads, signed=signed))
                outs.append(logit.detach())
            raw, logits = torch.stack(raws), torch.cat(outs)
    return ProfileBatch(profiles=standardize(raw, stats, mode), raw=raw, logits=logits)


def _profiles_vmap(
    model: nn.Module, images: Tensor, y: Tensor, index: FilterIndex, signed: bool
) -> tuple[Tensor, Tensor]:
    """Per-sample gradients with ``torch.func``: one vectorized call for the whole batch."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    wanted = {name: params[name] for name in index.param_names}

    def loss_one(w: dict[str, Tensor], x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        logit = functional_call(model, ({**params, **w}, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logit, t.unsqueeze(0)), logit.squeeze(0)

    grads, logits = vmap(grad(loss_one, has_aux=True), in_dims=(None, 0, 0))(wanted, images, y)
    raw = per_filter([grads[name] for name in index.param_names], signed=signed)
    return raw.detach(), logits.detach()
