"""Turning filters off (paper §3.1) on a copy of the parameters; the user's model is untouched.

To remove a filter's influence the paper zeroes "the filter weights and also the biases of the
associated batch normalization layers". The batch norm that consumes a conv's output is found
once, robustly, by one dummy forward pass with hooks (conv output tensor -> batch-norm input
tensor), so it works whatever the module names (torchvision ResNet ``bn1``/``downsample.1``,
timm ``BatchNormAct2d`` ...). Pruning returns a NEW parameter dict and predictions go through
``torch.func.functional_call``.

Note: with zeroed weights, conv bias and BN bias, the BN output of a pruned channel is the
constant ``-gamma * running_mean / sqrt(running_var + eps)`` (0 when the running mean is 0):
it no longer depends on the input, which is what removes the filter's information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from .filters import FilterIndex

__all__ = [
    "PRUNE_KINDS",
    "FilterPruner",
    "PruneKind",
    "PruneTarget",
    "find_conv_batchnorms",
    "pruned_parameters",
    "select_filters",
]

#: Which filters to turn off: the most salient, random ones (seeded), or the least salient.
PruneKind = Literal["salient", "random", "least"]
PRUNE_KINDS: tuple[str, ...] = ("salient", "random", "least")


@dataclass(frozen=True)
class PruneTarget:
    """The parameters to zero for the filters of one conv layer.

    Attributes
    ----------
    conv : str
        Module name of the conv layer.
    weight : str
        Parameter name of its weight, shape [C_out, C_in / groups, kh, kw].
    bias : str or None
        Parameter name of its bias, if any.
    batchnorm : str or None
        Module name of the batch norm that consumes the conv's output directly, if any.
    bn_bias : str or None
        Parameter name of that batch norm's bias (None without BN or with ``affine=False``).
    """

    conv: str
    weight: str
    bias: str | None
    batchnorm: str | None
    bn_bias: str | None


def find_conv_batchnorms(model: nn.Module, example: Tensor) -> dict[str, str | None]:
    """Map each ``nn.Conv2d`` to the batch norm that directly consumes its output.

    One forward pass (no gradients) with hooks: every conv's output tensor is recorded, and a
    batch norm whose input is that very tensor object is its consumer.

    Parameters
    ----------
    model : nn.Module
        Any module; left as found (mode, hooks, parameters).
    example : Tensor, shape [B, C, H, W] or [C, H, W]
        Any valid input (e.g. the image being analyzed).

    Returns
    -------
    dict
        Conv module name -> batch-norm module name, or None when no batch norm reads the
        conv's output (e.g. a conv followed by an activation, or the last conv of a block
        whose output is added before normalization).
    """
    x = example if example.dim() == 4 else example.unsqueeze(0)
    outputs: dict[int, tuple[str, Tensor]] = {}
    consumer: dict[str, str | None] = {}
    handles = []

    def conv_hook(name: str):
        def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
            # Keep the tensor alive so that its id() cannot be reused during this pass.
            outputs[id(out)] = (name, out)
            consumer.setdefault(name, None)

        return hook

    def bn_hook(name: str):
        def hook(_m: nn.Module, inp: tuple[Tensor, ...]) -> None:
            if inp and id(inp[0]) in outputs:
                conv_name, _ = outputs[id(inp[0])]
                if consumer.get(conv_name) is None:
                    consumer[conv_name] = name

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, _BatchNorm):
            handles.append(module.register_forward_pre_hook(bn_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # Convs never reached by the forward pass (unused branches) keep no batch norm.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            consumer.setdefault(name, None)
    return consumer


def _targets(
    model: nn.Module, index: FilterIndex, pairs: dict[str, str | None]
) -> list[PruneTarget]:
    """One :class:`PruneTarget` per layer of ``index``, in index order."""
    modules = dict(model.named_modules())
    out = []
    for layer in index.layers:
        conv = modules[layer.name]
        prefix = f"{layer.name}." if layer.name else ""
        bias = f"{prefix}bias" if getattr(conv, "bias", None) is not None else None
        bn_name = pairs.get(layer.name)
        bn_bias = None
        if bn_name is not None and getattr(modules[bn_name], "bias", None) is not None:
            bn_bias = f"{bn_name}.bias"
        out.append(PruneTarget(layer.name, layer.param_name, bias, bn_name, bn_bias))
    return out


def pruned_parameters(
    params: dict[str, Tensor],
    index: FilterIndex,
    targets: Sequence[PruneTarget],
    filter_ids: Sequence[int] | np.ndarray,
) -> dict[str, Tensor]:
    """A new parameter dict with the chosen filters turned off.

    Parameters
    ----------
    params : dict of str -> Tensor
        The model's parameters (``dict(model.named_parameters())``); not modified.
    index : FilterIndex
    targets : sequence of PruneTarget
        One per layer of ``index`` (see :class:`FilterPruner`).
    filter_ids : sequence of int
        Flat filter ids; for each, the conv weight (and conv bias) of that output channel
        and the bias of the consuming batch norm's channel are set to 0.

    Returns
    -------
    dict of str -> Tensor
        Same keys; edited tensors are fresh detached copies, the others are the originals.
    """
    ids = np.unique(np.asarray(filter_ids, dtype=np.int64).reshape(-1))
    out = dict(params)
    if ids.size == 0:
        return out
    layers = index.layer_of(ids)
    channels = index.channels(ids)
    edited: dict[str, Tensor] = {}

    def zero(name: str | None, rows: np.ndarray) -> None:
        if name is None:
            return
        if name not in edited:
            edited[name] = params[name].detach().clone()
        edited[name][torch.as_tensor(rows, device=edited[name].device)] = 0

    for pos in np.unique(layers):
        rows = channels[layers == pos]
        t = targets[int(pos)]
        zero(t.weight, rows)
        zero(t.bias, rows)
        zero(t.bn_bias, rows)
    out.update(edited)
    return out


def select_filters(
    kind: PruneKind,
    profile: np.ndarray,
    n: int,
    *,
    seed: int = 0,
) -> np.ndarray:
    """The ``n`` filters to turn off: most salient, random (seeded) or least salient.

    Parameters
    ----------
    kind : {"salient", "random", "least"}
    profile : np.ndarray, shape [F]
        Saliency per filter (usually standardized).
    n : int
        Number of filters, in [1, F].
    seed : int
        Seed of ``numpy.random.default_rng`` for ``random`` (same seed, same filters).

    Returns
    -------
    np.ndarray of int64, shape [n]
        Salient: descending saliency; least: ascending; random: draw order.
    """
    values = np.asarray(profile, dtype=np.float64).reshape(-1)
    n_filters = values.shape[0]
    if isinstance(n, bool) or not 1 <= int(n) <= n_filters:
        raise ValueError(f"n must lie in [1, {n_filters}]; got {n}")
    n = int(n)
    if kind == "salient":
        return np.argsort(-values, kind="stable")[:n].astype(np.int64)
    if kind == "least":
        return np.argsort(values, kind="stable")[:n].astype(np.int64)
    if kind == "random":
        rng = np.random.default_rng(seed)
        return rng.choice(n_filters, size=n, replace=False).astype(np.int64)
    raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(PRUNE_KINDS)}")


class FilterPruner:
    """Predict with some filters turned off, on a copy of the parameters.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode; never modified.
    index : FilterIndex
    example : Tensor, shape [3, H, W] or [B, 3, H, W]
        A valid input, used once to find each conv's batch norm.
    """

    def __init__(self, model: nn.Module, index: FilterIndex, example: Tensor) -> None:
        self.model = model
        self.index = index
        #: Conv module name -> consuming batch-norm module name (or None).
        self.batchnorms = find_conv_batchnorms(model, example)
        #: One per layer of ``index``.
        self.targets = _targets(model, index, self.batchnorms)

    def parameters(self, filter_ids: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """New parameter dict with ``filter_ids`` off (see :func:`pruned_parameters`)."""
        return pruned_parameters(
            dict(self.model.named_parameters()), self.index, self.targets, filter_ids
        )

    def logits(self, x: Tensor, filter_ids: Sequence[int] | np.ndarray) -> Tensor:
        """Logits with ``filter_ids`` off.

        Parameters
        ----------
        x : Tensor, shape [3, H, W] or [B, 3, H, W]

        Returns
        -------
        Tensor, shape [C] or [B, C]
        """
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        with torch.no_grad():
            out = functional_call(self.model, self.parameters(filter_ids), (batch,))
        return out if x.dim() == 4 else out[0]
