"""Cascading model randomization (Adebayo et al. 2018; paper A.11) on deep copies of a model.

A model is cut into *stages* in forward order: its top-level children that hold parameters, with
any child named in ``expand`` (timm's ``blocks``) split into its own children, and a child that
holds only normalization parameters (a batch norm after the stem or the head) merged into the
stage before it. For timm's ``tf_efficientnet_lite0`` this gives: ``conv_stem`` (+ ``bn1``),
``blocks.0`` .. ``blocks.6``, ``conv_head`` (+ ``bn2``), ``classifier``; for torchvision's ResNet:
``conv1`` (+ ``bn1``), ``layer1`` .. ``layer4``, ``fc``.

Randomizing a stage re-initializes every submodule with the module's own ``reset_parameters``
(batch norms also reset their running statistics), seeded, without touching the global RNG.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["Stage", "cascade", "model_stages", "randomize_stages"]

_NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class Stage:
    """One stage: its display name and the module names it covers (as in ``named_modules()``)."""

    name: str
    modules: tuple[str, ...]


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _norm_only(m: nn.Module) -> bool:
    """True when every parameter of ``m`` belongs to a normalization layer."""
    owners = [sub for sub in m.modules() if any(True for _ in sub.parameters(recurse=False))]
    return bool(owners) and all(isinstance(sub, _NORMS) for sub in owners)


def model_stages(model: nn.Module, *, expand: Sequence[str] = ("blocks",)) -> list[Stage]:
    """The model's stages in forward (registration) order; see the module docstring."""
    stages: list[Stage] = []
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        if name in expand and isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages.extend(
                Stage(f"{name}.{sub}", (f"{name}.{sub}",)) for sub, m in child.named_children() if _has_params(m)
            )
        elif _norm_only(child) and stages:
            prev = stages[-1]
            stages[-1] = Stage(prev.name, (*prev.modules, name))
        else:
            stages.append(Stage(name, (name,)))
    if not stages:
        raise ValueError("the model has no child module with parameters: nothing to randomize")
    return stages


def randomize_stages(model: nn.Module, stages: Sequence[Stage], *, seed: int = 0) -> nn.Module:
    """Re-initialize ``stages`` of ``model`` IN PLACE with each module's ``reset_parameters`` (seeded).

    Call it on a deep copy (:func:`cascade` does). Returns ``model``.
    """
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for stage in stages:
            for name in stage.modules:
                for sub in model.get_submodule(name).modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset):
                        reset()
    return model


def cascade(
    model: nn.Module, stages: Sequence[Stage] | None = None, *, seed: int = 0
) -> Iterator[tuple[int, nn.Module]]:
    """The cascading randomization: yields ``(n, copy)`` for n = 0 (the model itself, untouched)
    and then with the last 1, 2, ... stages randomized (from the logits down), each copy in eval mode.

    The copies are successive states of ONE deep copy (each step randomizes one more stage); use
    each before advancing the iterator, or deep-copy it.
    """
    stages = list(model_stages(model) if stages is None else stages)
    yield 0, model
    work = copy.deepcopy(model).eval()
    for n, stage in enumerate(reversed(stages), start=1):
        randomize_stages(work, [stage], seed=seed + n)
        yield n, work
