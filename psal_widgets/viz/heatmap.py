"""Input-space saliency post-processing, colour overlays and top-pixel masks (NumPy + OpenCV only)."""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["COLORMAPS", "colormap_stops", "mask_top_percent", "overlay", "saliency_heatmap"]

#: OpenCV colour maps offered by :func:`overlay`, by name.
_CV_COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}
COLORMAPS: tuple[str, ...] = tuple(_CV_COLORMAPS)


def _finite_2d(arr: np.ndarray, what: str) -> np.ndarray:
    """Check a map is 2-D, non-empty and finite; return it as float64."""
    out = np.asarray(arr, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"{what} must have shape [H, W], got {out.shape}")
    if out.size == 0:
        raise ValueError(f"{what} is empty (shape {out.shape})")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} contains NaN or infinite values; check the gradient computation")
    return out


def saliency_heatmap(
    grad: np.ndarray,
    *,
    percentile: float = 90.0,
    upper: float = 99.0,
    blur: int = 3,
) -> np.ndarray:
    """Turn a raw input-space gradient into a displayable saliency map.

    The rule of the paper (appendix B.2): max of ``|grad|`` over colour channels, clip to the
    ``[percentile, upper]`` percentiles of that map, rescale to ``[0, 1]``, then a small
    Gaussian blur.

    Parameters
    ----------
    grad : np.ndarray, shape [C, H, W] or [H, W]
        Input-space gradient, channels first (usually C = 3). A 2-D array is taken as
        already reduced over channels (its absolute value is still used).
    percentile : float, default 90.0
        Lower clipping percentile: pixels at or below it become 0.
    upper : float, default 99.0
        Upper clipping percentile: pixels at or above it become 1. Must exceed ``percentile``.
    blur : int, default 3
        Odd side of the Gaussian kernel (``cv2.GaussianBlur(m, (blur, blur), 0)``); 0 or 1
        disables blurring.

    Returns
    -------
    np.ndarray, shape [H, W], float32 in [0, 1]
        All zeros when the clipped range is empty (e.g. a constant gradient), never NaN.

    Raises
    ------
    ValueError
        For a bad shape, non-finite values or invalid options.
    """
    pct, hi_pct = float(percentile), float(upper)
    if not (0.0 <= pct < hi_pct <= 100.0):
        raise ValueError(f"need 0 <= percentile < upper <= 100, got percentile={percentile}, upper={upper}")
    if isinstance(blur, bool) or not isinstance(blur, (int, np.integer)):
        raise ValueError(f"blur must be an int, got {blur!r}")
    if blur < 0 or (blur > 1 and blur % 2 == 0):
        raise ValueError(f"blur must be 0, 1 or an odd positive kernel size, got {blur}")

    g = np.asarray(grad)
    if g.ndim == 3:
        if g.shape[0] == 0:
            raise ValueError(f"grad has no channels (shape {g.shape})")
        reduced = np.abs(g.astype(np.float64, copy=False)).max(axis=0)
    elif g.ndim == 2:
        reduced = np.abs(g.astype(np.float64, copy=False))
    else:
        raise ValueError(f"grad must have shape [C, H, W] or [H, W], got {g.shape}")
    m = _finite_2d(reduced, "grad")

    # Percentiles and the rescale in float64 so that tiny gradients (often ~1e-8) keep
    # their resolution; float32 only at the end.
    lo, hi = np.percentile(m, [pct, hi_pct])
    if not hi > lo:
        return np.zeros(m.shape, dtype=np.float32)
    out = ((np.clip(m, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if blur > 1:
        out = cv2.GaussianBlur(out, (int(blur), int(blur)), 0)
        # A blur is a convex combination, but float rounding can step just outside [0, 1].
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _resize_map(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float map to [height, width]; area averaging shrinks, bilinear enlarges."""
    if heat.shape == (height, width):
        return heat
    shrinking = heat.shape[0] >= height and heat.shape[1] >= width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(heat, (width, height), interpolation=interp)


def colormap_stops(colormap: str = "jet", n: int = 9) -> list[tuple[float, tuple[int, int, int]]]:
    """``n`` evenly spaced stops ``(t, (r, g, b))`` of an OpenCV colour map, t in [0, 1] (for a colour bar)."""
    if colormap not in _CV_COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if n < 2:
        raise ValueError(f"need at least 2 stops, got {n}")
    ts = np.linspace(0.0, 1.0, int(n))
    rgb = cv2.applyColorMap(np.round(ts * 255).astype(np.uint8)[None, :], _CV_COLORMAPS[colormap])[0, :, ::-1]
    return [(float(t), (int(c[0]), int(c[1]), int(c[2]))) for t, c in zip(ts, rgb, strict=True)]


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    weighted: bool = False,
    ramp: float = 0.25,
) -> np.ndarray:
    """Blend a colour-mapped heat map over a photo; where the heat is 0 the photo shows unchanged.

    A thresholded saliency map is 0 on most pixels (everything below the threshold percentile).
    Painting those with the colour map's low end would cover most of the photo (jet's low end
    is navy), so the colour layer's opacity grows from 0 at heat 0 to ``alpha`` at heat
    ``ramp`` and above (weak values are faint, strong ones fully coloured): the photo stays
    visible wherever the map says "nothing here".

    Parameters
    ----------
    image : np.ndarray, shape [H, W, 3], uint8
        RGB photo.
    heat : np.ndarray, shape [h, w], float in [0, 1]
        Heat map; values outside [0, 1] are clipped. Resized to [H, W] when it differs
        (e.g. a 7 x 7 GradCAM map).
    alpha : float, default 0.5
        Opacity of the colour layer, in [0, 1], for heat at or above ``ramp``.
    colormap : {"jet", "turbo", "inferno", "viridis", "magma", "hot"}
        OpenCV colour map.
    weighted : bool, default False
        If True the opacity is ``alpha * heat`` per pixel (a linear ramp over the whole range).
    ramp : float, default 0.25
        Heat at which the colour layer reaches full opacity ``alpha`` (linear from 0). 0 gives a
        hard edge: opacity ``alpha`` wherever heat > 0, none elsewhere.

    Returns
    -------
    np.ndarray, shape [H, W, 3], uint8
        RGB blend ``(1 - a) * image + a * coloured`` with a per-pixel opacity ``a``; pixels with
        heat 0 equal the photo.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be a uint8 RGB array of shape [H, W, 3], got {img.dtype} {img.shape}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 <= float(ramp) <= 1.0:
        raise ValueError(f"ramp must be in [0, 1], got {ramp}")
    if colormap not in _CV_COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image is empty (shape {img.shape})")
    hm = _finite_2d(heat, "heat").astype(np.float32)
    hm = np.clip(_resize_map(hm, h, w), 0.0, 1.0)

    heat_u8 = np.round(hm * 255.0).astype(np.uint8)
    # applyColorMap returns BGR; flip to RGB to match the photo.
    coloured = cv2.applyColorMap(heat_u8, _CV_COLORMAPS[colormap])[..., ::-1].astype(np.float32)
    if weighted:
        opacity = float(alpha) * hm
    elif ramp > 0:
        opacity = float(alpha) * np.minimum(hm / np.float32(ramp), 1.0)
    else:
        opacity = np.where(hm > 0, np.float32(alpha), np.float32(0.0))
    a = opacity.astype(np.float32)[..., None]
    out = (1.0 - a) * img.astype(np.float32) + a * coloured
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def mask_top_percent(heat: np.ndarray, *, percent: float) -> np.ndarray:
    """Select the most salient ``percent`` of pixels (paper appendix A.9 masking experiment).

    Parameters
    ----------
    heat : np.ndarray, shape [H, W]
        Any finite real map; larger means more salient.
    percent : float
        Share of pixels to select, in [0, 100].

    Returns
    -------
    np.ndarray, shape [H, W], bool
        Exactly ``round(percent / 100 * H * W)`` True pixels (Python's ``round``). Ties at
        the threshold go to the earlier pixels in row-major order, so the count never
        depends on how many pixels share a value.
    """
    p = float(percent)
    if not (math.isfinite(p) and 0.0 <= p <= 100.0):
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    hm = _finite_2d(heat, "heat")
    k = min(int(round(p / 100.0 * hm.size)), hm.size)
    flat = np.zeros(hm.size, dtype=bool)
    # Stable sort on negated values: descending, ties in raster order.
    flat[np.argsort(-hm.reshape(-1), kind="stable")[:k]] = True
    return flat.reshape(hm.shape)
