"""Turning filters off (paper §3.1) and perturbing them (A.6); the user's model is untouched.

Two recipes say what "off" means:

``"zero-output"`` (the default)
    The pruned channel's output *after its normalization layer* is exactly zero, whatever the
    normalization: BatchNorm (timm's ``BatchNormAct2d`` included), GroupNorm, InstanceNorm, a
    per-channel LayerNorm, none at all (the conv's own output is zero), a fused conv (bias
    folded in). The next layer sees no signal from the filter, which is what the paper states
    as the goal of its recipe ("the corresponding input feature map to the next convolutional
    layer is always zero"). Implemented with forward hooks that replace the channel by 0 at the
    conv's output and at the consuming norm's output; :meth:`FilterPruner.parameters` gives the
    same result as a parameter dict (conv weight rows, conv bias, norm weight γ and bias β of the
    channel set to 0: γ = β = 0 gives exactly 0 after any affine per-channel norm).
``"paper-literal"``
    What the original code does: zero the conv weights, the conv bias and the batch norm's bias.
    With β = 0 and a zero input the batch norm still emits ``-γ·μ/√(σ²+ε)`` (its running mean μ
    and variance σ²), a constant that the next layer keeps receiving. Measured with the default
    model (EfficientNet-Lite0): that constant has median 0.25 over the filters, 13% exceed 1, the
    largest is 45.9; on 500 ImageNet validation images (82 mistakes) it erases the paper's
    Fig. 3 gap at k ≥ 50 (k = 100, wrong-class confidence: salient −28.7 points vs random
    −31.8). With the zero-output recipe the gap is there: −24 / −15 / +4 points for salient /
    random / least salient at k = 100.

The norm that consumes a conv's output is found once, robustly, by one dummy forward pass with
hooks (conv output tensor -> the module whose input is that very tensor), whatever the module
names (torchvision ResNet ``bn1``/``downsample.1``, timm ``BatchNormAct2d`` ...).

Many filter sets are evaluated in ONE forward pass: the image is repeated once per set and each
batch row gets its own channel mask (:meth:`FilterPruner.logits_many`). Parameter edits
(paper-literal, Gaussian perturbation) go through ``torch.func.functional_call`` on new
parameter dicts, one forward per set, or, for the Gaussian perturbation of many sets, as one
batched forward pass with per-row noise added by hooks (:meth:`FilterPruner.perturbed_logits_many`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase

from .filters import FilterIndex

__all__ = [
    "PRUNE_KINDS",
    "RECIPES",
    "FilterPruner",
    "PruneKind",
    "PruneTarget",
    "Recipe",
    "find_conv_batchnorms",
    "find_conv_norms",
    "perturbed_parameters",
    "pruned_parameters",
    "select_filters",
]

#: Which filters to turn off: the most salient, random ones (seeded), or the least salient.
PruneKind = Literal["salient", "random", "least"]
PRUNE_KINDS: tuple[str, ...] = ("salient", "random", "least")

#: What turning a filter off means (see the module docstring).
Recipe = Literal["zero-output", "paper-literal"]
RECIPES: tuple[str, ...] = ("zero-output", "paper-literal")

# Normalization layers by type, plus look-alikes from other libraries by class name
# (torchvision's FrozenBatchNorm2d, timm's LayerNorm2d / GroupNormAct / BatchNormAct2d).
_NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)
_NORM_NAME = re.compile(r"(Norm|Norm2d|NormAct|NormAct2d)$")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


@dataclass(frozen=True)
class PruneTarget:
    """The parameters to edit for the filters of one conv layer.

    Attributes
    ----------
    conv : str
        Module name of the conv layer.
    weight : str
        Parameter name of its weight, shape [C_out, C_in / groups, kh, kw].
    bias : str or None
        Parameter name of its bias, if any.
    batchnorm : str or None
        Module name of the normalization layer (any kind, despite the historical name) that
        consumes the conv's output directly, if any.
    bn_bias : str or None
        Name of that norm's bias β (None without norm or without affine parameters).
    norm_weight : str or None
        Name of that norm's weight γ (None without norm or without affine parameters).
    """

    conv: str
    weight: str
    bias: str | None
    batchnorm: str | None
    bn_bias: str | None
    norm_weight: str | None = None

    @property
    def norm(self) -> str | None:
        """Alias of ``batchnorm``: the consuming norm layer, whatever its kind."""
        return self.batchnorm


def find_conv_norms(model: nn.Module, example: Tensor) -> dict[str, str | None]:
    """Map each ``nn.Conv2d`` to the normalization layer that directly consumes its output.

    One forward pass (no gradients) with hooks: every conv's output tensor is recorded, and a
    norm layer (BatchNorm, GroupNorm, InstanceNorm, LayerNorm, or a class named ``*Norm``,
    ``*Norm2d``, ``*NormAct2d``) whose input is that very tensor object, and whose output keeps
    the conv's channels on dim 1, is its consumer.

    Parameters
    ----------
    model : nn.Module
        Any module; left as found (mode, hooks, parameters).
    example : Tensor, shape [B, C, H, W] or [C, H, W]
        Any valid input (e.g. the image being analyzed).

    Returns
    -------
    dict
        Conv module name -> norm module name, or None when no norm reads the conv's output
        (a conv followed by an activation, a fused conv, a conv whose output is added first).
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

    def norm_hook(name: str):
        def hook(_m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            if not inp or id(inp[0]) not in outputs:
                return
            conv_name, conv_out = outputs[id(inp[0])]
            # Only a norm that keeps the channels on dim 1 can be silenced per channel.
            same_channels = isinstance(out, Tensor) and out.dim() >= 2 and out.shape[1] == conv_out.shape[1]
            if consumer.get(conv_name) is None and same_channels:
                consumer[conv_name] = name

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif _is_norm(module):
            handles.append(module.register_forward_hook(norm_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # Convs never reached by the forward pass (unused branches) keep no norm.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            consumer.setdefault(name, None)
    return consumer


#: The historical name (it finds every kind of norm now).
find_conv_batchnorms = find_conv_norms


def _tensor_name(module: nn.Module, module_name: str, attr: str) -> str | None:
    value = getattr(module, attr, None)
    if not isinstance(value, Tensor):
        return None
    return f"{module_name}.{attr}" if module_name else attr


def _targets(model: nn.Module, index: FilterIndex, pairs: dict[str, str | None]) -> list[PruneTarget]:
    """One :class:`PruneTarget` per layer of ``index``, in index order."""
    modules = dict(model.named_modules())
    out = []
    for layer in index.layers:
        conv = modules[layer.name]
        bias = _tensor_name(conv, layer.name, "bias")
        norm_name = pairs.get(layer.name)
        gamma = beta = None
        if norm_name is not None:
            norm = modules[norm_name]
            gamma = _tensor_name(norm, norm_name, "weight")
            beta = _tensor_name(norm, norm_name, "bias")
        out.append(PruneTarget(layer.name, layer.param_name, bias, norm_name, beta, gamma))
    return out


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPES)}")


def _grouped(index: FilterIndex, filter_ids: Sequence[int] | np.ndarray) -> dict[int, np.ndarray]:
    """Layer position -> channels of the given (deduplicated) filter ids."""
    ids = np.unique(np.asarray(filter_ids, dtype=np.int64).reshape(-1))
    if ids.size == 0:
        return {}
    layers = index.layer_of(ids)
    channels = index.channels(ids)
    return {int(pos): channels[layers == pos] for pos in np.unique(layers)}


def pruned_parameters(
    params: dict[str, Tensor],
    index: FilterIndex,
    targets: Sequence[PruneTarget],
    filter_ids: Sequence[int] | np.ndarray,
    *,
    recipe: Recipe = "zero-output",
) -> dict[str, Tensor]:
    """A new parameter dict with the chosen filters turned off.

    Parameters
    ----------
    params : dict of str -> Tensor
        The model's parameters (``dict(model.named_parameters())``, buffers may be added for
        norms whose γ/β are buffers); not modified.
    index : FilterIndex
    targets : sequence of PruneTarget
        One per layer of ``index`` (see :class:`FilterPruner`).
    filter_ids : sequence of int
        Flat filter ids.
    recipe : {"zero-output", "paper-literal"}
        ``zero-output``: conv weight rows, conv bias, norm weight γ and norm bias β of each
        channel set to 0, so the norm's output is exactly 0. ``paper-literal``: conv weight rows,
        conv bias and norm bias only (the norm then emits ``-γ·μ/√(σ²+ε)``).

    Returns
    -------
    dict of str -> Tensor
        Same keys; edited tensors are fresh detached copies, the others are the originals.

    Raises
    ------
    ValueError
        ``zero-output`` when a consuming norm has no weight γ to zero (``affine=False``): use
        :meth:`FilterPruner.logits`, which silences by hooks.
    """
    _check_recipe(recipe)
    out = dict(params)
    edited: dict[str, Tensor] = {}

    def zero(name: str | None, rows: np.ndarray) -> None:
        if name is None:
            return
        if name not in edited:
            edited[name] = params[name].detach().clone()
        edited[name][torch.as_tensor(rows, device=edited[name].device)] = 0

    for pos, rows in _grouped(index, filter_ids).items():
        t = targets[pos]
        zero(t.weight, rows)
        zero(t.bias, rows)
        zero(t.bn_bias, rows)
        if recipe == "zero-output" and t.batchnorm is not None:
            if t.norm_weight is None or t.norm_weight not in params:
                raise ValueError(
                    f"the norm {t.batchnorm!r} after {t.conv!r} has no weight parameter to zero; "
                    "use FilterPruner.logits (it silences the channel with a hook)"
                )
            zero(t.norm_weight, rows)
    out.update(edited)
    return out


def perturbed_parameters(
    params: dict[str, Tensor],
    index: FilterIndex,
    targets: Sequence[PruneTarget],
    filter_ids: Sequence[int] | np.ndarray,
    noise: dict[str, Tensor],
) -> dict[str, Tensor]:
    """A new parameter dict with Gaussian noise added to the chosen filters' conv weights (A.6).

    Parameters
    ----------
    params : dict of str -> Tensor
    index : FilterIndex
    targets : sequence of PruneTarget
    filter_ids : sequence of int
    noise : dict of str -> Tensor
        Conv weight name -> noise of the weight's shape (drawn once, e.g. ``σ·N(0, 1)``); only
        the rows of the chosen filters are added, so one draw serves nested filter sets.

    Returns
    -------
    dict of str -> Tensor
    """
    out = dict(params)
    for pos, rows in _grouped(index, filter_ids).items():
        name = targets[pos].weight
        w = params[name].detach().clone()
        r = torch.as_tensor(rows, device=w.device)
        w[r] += noise[name][r].to(device=w.device, dtype=w.dtype)
        out[name] = w
    return out


def select_filters(
    kind: PruneKind,
    profile: np.ndarray,
    n: int,
    *,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """The ``n`` filters to turn off: most salient, random (seeded) or least salient.

    Parameters
    ----------
    kind : {"salient", "random", "least"}
    profile : np.ndarray, shape [F]
        Saliency per filter (usually standardized).
    n : int
        Number of filters, in [1, F].
    seed : int or sequence of int
        Seed of ``numpy.random.default_rng`` for ``random``: the draw is the first ``n`` of one
        permutation, so for one seed the sets are nested (the 10 contain the 5). Seed with the
        run's seed and the image's index (``[seed, row]``) for a fresh, repeatable set per image.

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
        return np.random.default_rng(seed).permutation(n_filters)[:n].astype(np.int64)
    raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(PRUNE_KINDS)}")


class FilterPruner:
    """Predict with some filters turned off (or perturbed); the model is never modified.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode (refused in training mode: batch norm would use batch statistics
        and update its running statistics in place).
    index : FilterIndex
    example : Tensor, shape [3, H, W] or [B, 3, H, W]
        A valid input, used once to find each conv's norm layer.
    recipe : {"zero-output", "paper-literal"}
        What "off" means (see the module docstring).

    Examples
    --------
    >>> pruner = FilterPruner(model, FilterIndex(model), x)
    >>> pruner.logits(x, [12, 512])                         # [C]
    >>> pruner.logits_many(x, [[], [12], [12, 512]])        # [3, C], one forward pass
    """

    def __init__(
        self, model: nn.Module, index: FilterIndex, example: Tensor, *, recipe: Recipe = "zero-output"
    ) -> None:
        _check_recipe(recipe)
        self.model = model
        self.index = index
        self.recipe: Recipe = recipe
        self._check_eval()
        #: Conv module name -> consuming norm module name (or None).
        self.norms = find_conv_norms(model, example)
        #: Historical name of :attr:`norms`.
        self.batchnorms = self.norms
        #: One per layer of ``index``.
        self.targets = _targets(model, index, self.norms)

    def _check_eval(self) -> None:
        if self.model.training:
            raise ValueError(
                "FilterPruner needs the model in eval mode (in training mode batch norm uses batch "
                "statistics and updates its running statistics in place): call model.eval() first"
            )

    def _state(self) -> dict[str, Tensor]:
        params = dict(self.model.named_parameters())
        # Norms whose γ/β are buffers (FrozenBatchNorm2d) are edited through functional_call too.
        buffers = dict(self.model.named_buffers())
        for t in self.targets:
            for name in (t.norm_weight, t.bn_bias):
                if name is not None and name not in params and name in buffers:
                    params[name] = buffers[name]
        return params

    def parameters(self, filter_ids: Sequence[int] | np.ndarray) -> dict[str, Tensor]:
        """New parameter dict with ``filter_ids`` off by this pruner's recipe
        (see :func:`pruned_parameters`)."""
        return pruned_parameters(self._state(), self.index, self.targets, filter_ids, recipe=self.recipe)

    # -- zero-output by hooks ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _masks(self, sets: Sequence[np.ndarray], rows: int, device: torch.device) -> Iterator[None]:
        """Forward hooks silencing, in batch row ``i``, the filters of ``sets[i]``.

        ``sets`` has one entry per batch row, or a single entry for every row (``rows`` > 1).
        """
        keep: dict[int, Tensor] = {}
        for i, ids in enumerate(sets):
            for pos, channels in _grouped(self.index, ids).items():
                if pos not in keep:
                    keep[pos] = torch.ones(len(sets), self.index.layers[pos].n_filters, dtype=torch.bool)
                keep[pos][i, torch.as_tensor(channels)] = False
        modules = dict(self.model.named_modules())
        handles = []

        def hook_for(mask: Tensor):
            def hook(_m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
                m = mask.view(mask.shape[0], mask.shape[1], *([1] * (out.dim() - 2)))
                # where() gives exact zeros (no -0.0), whatever the channel's values.
                return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))

            return hook

        try:
            for pos, mask in keep.items():
                t = self.targets[pos]
                m = mask.to(device)
                # prepend: any other hook on these modules (a CAM, a test probe) sees the silenced output.
                handles.append(modules[t.conv].register_forward_hook(hook_for(m), prepend=True))
                if t.batchnorm is not None:
                    handles.append(modules[t.batchnorm].register_forward_hook(hook_for(m), prepend=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def _forward_masked(self, batch: Tensor, sets: Sequence[np.ndarray]) -> Tensor:
        with torch.no_grad(), self._masks(sets, batch.shape[0], batch.device):
            return self.model(batch)

    # -- public -------------------------------------------------------------------------------
    def logits(self, x: Tensor, filter_ids: Sequence[int] | np.ndarray) -> Tensor:
        """Logits with ``filter_ids`` off.

        Parameters
        ----------
        x : Tensor, shape [3, H, W] or [B, 3, H, W]
        filter_ids : sequence of int
            The same set for every image of the batch.

        Returns
        -------
        Tensor, shape [C] or [B, C]
        """
        self._check_eval()
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        ids = np.asarray(filter_ids, dtype=np.int64).reshape(-1)
        if self.recipe == "zero-output":
            out = self._forward_masked(batch, [ids])
        else:
            with torch.no_grad():
                out = functional_call(self.model, self.parameters(ids), (batch,))
        return out if x.dim() == 4 else out[0]

    def logits_many(
        self, x: Tensor, filter_sets: Sequence[Sequence[int] | np.ndarray], *, chunk: int = 32
    ) -> Tensor:
        """Logits for many filter sets, batched: one forward pass per ``chunk`` sets.

        Parameters
        ----------
        x : Tensor, shape [3, H, W] (or [1, 3, H, W]): the same image for every set; or
            [S, 3, H, W]: one image per set.
        filter_sets : sequence of S sequences of int
            Each may be empty (the unpruned model).
        chunk : int
            Sets per forward pass (memory: ``chunk`` images' activations).

        Returns
        -------
        Tensor, shape [S, C]
            Row ``i`` equals ``logits(x, filter_sets[i])`` (up to float rounding of batched
            convolutions).
        """
        self._check_eval()
        sets = [np.asarray(s, dtype=np.int64).reshape(-1) for s in filter_sets]
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        if batch.shape[0] not in (1, len(sets)):
            raise ValueError(f"x holds {batch.shape[0]} images for {len(sets)} filter sets: give 1 or {len(sets)}")
        outs = []
        for start in range(0, len(sets), max(1, int(chunk))):
            part = sets[start : start + max(1, int(chunk))]
            if batch.shape[0] == 1:
                images = batch.expand(len(part), *batch.shape[1:]).contiguous()
            else:
                images = batch[start : start + len(part)]
            if self.recipe == "zero-output":
                outs.append(self._forward_masked(images, part))
            else:
                with torch.no_grad():
                    outs.extend(
                        functional_call(self.model, self.parameters(ids), (images[i : i + 1],))
                        for i, ids in enumerate(part)
                    )
        return torch.cat(outs) if outs else torch.empty(0)

    def noise(
        self, filter_ids: Sequence[int] | np.ndarray, *, sigma: float, seed: int | Sequence[int]
    ) -> dict[str, Tensor]:
        """Gaussian noise ``N(0, sigma²)`` for the conv weights of the layers of ``filter_ids``.

        Drawn in NumPy from ``default_rng(seed)`` layer by layer in index order (every layer of
        the model is drawn, so a filter's noise does not depend on which others are chosen).

        Returns
        -------
        dict of str -> Tensor
            Conv weight name -> noise of the weight's shape (float32, CPU).
        """
        if not (np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0; got {sigma}")
        wanted = {self.targets[pos].weight for pos in _grouped(self.index, filter_ids)}
        rng = np.random.default_rng(seed)
        params = dict(self.model.named_parameters())
        out: dict[str, Tensor] = {}
        for t in self.targets:
            shape = tuple(params[t.weight].shape)
            draw = rng.standard_normal(shape, dtype=np.float32)
            if t.weight in wanted:
                out[t.weight] = torch.from_numpy(draw * np.float32(sigma))
        return out

    def perturbed_logits_many(
        self,
        x: Tensor,
        filter_sets: Sequence[Sequence[int] | np.ndarray],
        *,
        sigma: float,
        seed: int | Sequence[int] = 0,
        chunk: int = 32,
    ) -> Tensor:
        """Logits with Gaussian noise ``N(0, sigma²)`` added to each set's conv weights (A.6), batched.

        One noise draw (see :meth:`noise`) serves every set, so nested sets perturb their common
        filters identically and the strategies are compared on the same noise. The sets run as
        one forward pass per ``chunk`` (see :meth:`_noise_hooks`).

        Parameters
        ----------
        x : Tensor, shape [3, H, W] or [1, 3, H, W]
        filter_sets : sequence of S sequences of int
        sigma : float
        seed : int or sequence of int
        chunk : int
            Sets per forward pass (memory: ``chunk`` images' activations).

        Returns
        -------
        Tensor, shape [S, C]
            Row ``i`` equals a forward pass with ``perturbed_parameters(..., filter_sets[i], noise)``
            (up to float rounding of batched convolutions).
        """
        self._check_eval()
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        sets = [np.asarray(s, dtype=np.int64).reshape(-1) for s in filter_sets]
        everything = np.unique(np.concatenate(sets or [np.zeros(0, dtype=np.int64)]))
        noise = self.noise(everything, sigma=sigma, seed=seed)
        outs = []
        step = max(1, int(chunk))
        for start in range(0, len(sets), step):
            part = sets[start : start + step]
            images = batch.expand(len(part), *batch.shape[1:]).contiguous()
            with torch.no_grad(), self._noise_hooks(part, noise, images.device):
                outs.append(self.model(images))
        return torch.cat(outs) if outs else torch.empty(0)

    @contextlib.contextmanager
    def _noise_hooks(
        self, sets: Sequence[np.ndarray], noise: dict[str, Tensor], device: torch.device
    ) -> Iterator[None]:
        """Forward hooks adding, in batch row ``i``, the noise of the filters of ``sets[i]``.

        A convolution is linear in its weight and output channel ``c`` reads only weight row ``c``:
        ``conv(x, W + N·m) = conv(x, W) + conv_nobias(x, N)·m`` for a 0/1 channel mask ``m``. So one
        extra convolution of the layer's input with the noise, masked per row, gives every set's
        perturbed layer in the same batch. The extra convolution is the module itself called
        through ``functional_call`` (its own padding: timm's SAME, reflect...), with the hook
        disabled during that call.
        """
        masks: dict[int, Tensor] = {}
        for i, ids in enumerate(sets):
            for pos, channels in _grouped(self.index, ids).items():
                if pos not in masks:
                    masks[pos] = torch.zeros(len(sets), self.index.layers[pos].n_filters)
                masks[pos][i, torch.as_tensor(channels)] = 1.0
        modules = dict(self.model.named_modules())
        handles = []
        busy: set[int] = set()

        def hook_for(pos: int, mask: Tensor):
            t = self.targets[pos]
            weight = noise[t.weight]

            def hook(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
                if pos in busy:
                    return None
                busy.add(pos)
                try:
                    extra = {"weight": weight.to(device=out.device, dtype=out.dtype)}
                    if t.bias is not None:
                        extra["bias"] = torch.zeros(out.shape[1], dtype=out.dtype, device=out.device)
                    delta = functional_call(module, extra, inp)
                finally:
                    busy.discard(pos)
                m = mask.to(dtype=out.dtype).view(mask.shape[0], mask.shape[1], *([1] * (out.dim() - 2)))
                return out + delta * m

            return hook

        try:
            for pos, mask in masks.items():
                t = self.targets[pos]
                handles.append(modules[t.conv].register_forward_hook(hook_for(pos, mask.to(device)), prepend=True))
            yield
        finally:
            for h in handles:
                h.remove()
