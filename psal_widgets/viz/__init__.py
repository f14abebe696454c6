"""Visualisation layer: NumPy, OpenCV and matplotlib only (never torch)."""
from __future__ import annotations

from .heatmap import COLORMAPS, mask_top_percent, overlay, saliency_heatmap
from .masks import FILLS, Stroke, apply_fill, region_mask
from .static import image_png, profile_png, triptych_png

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
