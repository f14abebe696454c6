"""Helpers shared by the index-based experiments (profiles, pruning, neighbors): statistics checks,
the shallow/middle/deep split of the layers, option parsing, thumbnails.

NumPy only at import time (the CLI imports every experiment module to build its parser).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import float_arg, int_arg

if TYPE_CHECKING:
    from ..kernels.filters import FilterIndex
    from ..kernels.stats import FilterStats
    from .base import ExperimentContext

__all__ = ["DEPTHS", "boot_rng", "depth_ranges", "float_list", "int_list", "parse_ints", "require_stats", "thumbnail"]

#: The three depth groups of the layers (first, middle and last third of the conv layers).
DEPTHS: tuple[str, ...] = ("shallow", "middle", "deep")

# Bootstrap streams are keyed apart from the per-image streams (ctx.rng(row)).
_BOOT_KEY = 2**31


def boot_rng(ctx: ExperimentContext, *keys: int) -> np.random.Generator:
    """A generator for bootstrap resampling, independent of the per-image random choices."""
    return ctx.rng(_BOOT_KEY, *keys)


def require_stats(ctx: ExperimentContext) -> FilterStats:
    """The explainer's statistics, or a clear error saying how to get them."""
    stats = ctx.explainer.stats
    if stats is None:
        raise ValueError(
            f"experiment {ctx.name!r} standardizes profiles and needs validation statistics for "
            f"{ctx.explainer.model.name}: pass --stats DIR or compute them with `psal stats --data DIR`"
        )
    return stats


def depth_ranges(index: FilterIndex) -> dict[str, tuple[int, int]]:
    """Layer positions ``(first, last)`` (inclusive) of the first, middle and last third of the
    conv layers (``numpy.array_split`` sizes: the first groups take the remainder)."""
    parts = np.array_split(np.arange(len(index.layers)), 3)
    return {name: (int(p[0]), int(p[-1])) for name, p in zip(DEPTHS, parts, strict=True) if p.size}


def float_list(text: str) -> list[float]:
    """argparse ``type=`` for ``"1e-4,1e-2"`` -> ``[0.0001, 0.01]``: finite, non-negative values
    (the lists are magnitudes: perturbation sizes, noise levels), at least one."""
    parse = float_arg(low=0.0)
    out = [parse(v) for v in str(text).split(",") if v.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 1e-4,1e-2; got {text!r}")
    return out


def int_list(text: str) -> list[int]:
    """argparse ``type=`` for ``"10,100"`` -> ``[10, 100]``: integers >= 1 (set sizes), at least one."""
    parse = int_arg(low=1)
    out = [parse(v) for v in str(text).split(",") if v.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 10,100; got {text!r}")
    return out


def parse_ints(value: Any, *, name: str) -> list[int]:
    """``"1,5,10"`` or a sequence of ints -> ``[1, 5, 10]`` (sorted, unique)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            out = [int(p) for p in parts]
        except ValueError as err:
            raise ValueError(f"--{name} takes comma-separated integers like 1,5,10; got {value!r}") from err
    elif isinstance(value, (int, np.integer)):
        out = [int(value)]
    elif isinstance(value, Sequence):
        out = [int(v) for v in value]
    else:
        raise ValueError(f"{name} must be integers; got {value!r}")
    if not out:
        raise ValueError(f"--{name} is empty")
    return sorted(set(out))


def thumbnail(ctx: ExperimentContext, row: int, *, size: int = 96) -> np.ndarray:
    """Image ``row`` of the dataset as the model sees it (resize + crop), uint8 [size, size, 3]."""
    from PIL import Image

    shown = ctx.explainer.model.preprocess.display(ctx.dataset.image(int(row)))
    return np.asarray(Image.fromarray(shown).resize((size, size), Image.BILINEAR))
