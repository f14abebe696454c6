"""Save, set and restore ``requires_grad`` of a group of parameters (one helper for all kernels)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

__all__ = ["requires_grad"]


@contextlib.contextmanager
def requires_grad(params: Iterable[nn.Parameter], flag: bool) -> Iterator[list[nn.Parameter]]:
    """Set ``requires_grad`` of ``params`` to ``flag`` inside the block; restore each one after.

    The kernels differentiate a caller's model: profiles need the conv weights to require grad,
    the CAM package needs them not to (so that its backward pass leaves no ``.grad`` on them).
    Whatever the caller had set comes back, also when the block raises.

    Parameters
    ----------
    params : iterable of Parameter
    flag : bool

    Yields
    ------
    list of Parameter
        The parameters, in the given order.
    """
    group = list(params)
    saved = [p.requires_grad for p in group]
    for p in group:
        p.requires_grad_(flag)
    try:
        yield group
    finally:
        for p, was in zip(group, saved, strict=True):
            p.requires_grad_(was)
