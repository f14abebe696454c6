"""Penultimate features: the input of a classifier's final linear layer (paper A.4).

The layer is found by one forward pass with hooks, whatever its name (``fc``, ``classifier``,
``head.fc`` ...): the ``nn.Linear`` whose output tensor *is* the model's output. The features
are then read by a forward pre-hook on that layer during the passes the caller makes anyway.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["FeatureTap", "find_classifier"]


def find_classifier(model: nn.Module, example: Tensor) -> str | None:
    """Name of the ``nn.Linear`` that produces the logits, or None (e.g. a conv classifier).

    Parameters
    ----------
    model : nn.Module
        Left as found (mode, hooks).
    example : Tensor, shape [B, 3, H, W] or [3, H, W]

    Returns
    -------
    str or None
        The module whose output is the model's output; when a wrapper changes the output after
        the last linear layer, the last linear layer called whose width equals the number of
        classes.
    """
    x = example if example.dim() == 4 else example.unsqueeze(0)
    seen: list[tuple[str, Tensor]] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, out)))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, out in seen:
        if out is logits:
            return name
    width = logits.shape[-1] if isinstance(logits, Tensor) else None
    for name, out in reversed(seen):
        if isinstance(out, Tensor) and out.shape[-1] == width:
            return name
    return None


class FeatureTap:
    """Collects the input of one linear layer over the forward passes run inside :meth:`tap`.

    Parameters
    ----------
    model : nn.Module
    layer : str
        Module name (see :func:`find_classifier`).
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        self.module = dict(model.named_modules())[layer]
        self.layer = layer
        self.rows: list[Tensor] = []

    @contextlib.contextmanager
    def tap(self) -> Iterator[FeatureTap]:
        self.rows = []

        def hook(_m: nn.Module, inp: tuple[Tensor, ...]) -> None:
            self.rows.append(inp[0].detach().reshape(inp[0].shape[0], -1).to("cpu", torch.float32))

        handle = self.module.register_forward_pre_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> Tensor:
        """The rows collected so far, concatenated ([n, D]); the buffer is emptied."""
        out = torch.cat(self.rows) if self.rows else torch.empty(0)
        self.rows = []
        return out
