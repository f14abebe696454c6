"""Visualisation layer: NumPy, OpenCV and matplotlib only (never torch).

The matplotlib figures (:mod:`.static`) load on first use: importing matplotlib costs about
0.3 s, and the widgets' image encoding (which imports this package) does not need it.
"""
from __future__ import annotations

import importlib
from typing import Any

from .heatmap import COLORMAPS, mask_top_percent, overlay, saliency_heatmap
from .masks import FILLS, Stroke, apply_fill, region_mask

_STATIC = ("image_png", "profile_png", "triptych_png")


def __getattr__(name: str) -> Any:
    if name in _STATIC:
        return getattr(importlib.import_module(".static", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "COLORMAPS",
    "FILLS",
    "Stroke",
    "apply_fill",
    "image_png",
    "mask_top_percent",
    "overlay",
    "profile_png",
    "region_mask",
    "saliency_heatmap",
    "triptych_png",
]
