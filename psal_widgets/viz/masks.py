"""Brush masks on the image the model sees: rasterize boxes and lasso polygons, fill regions.

NumPy + OpenCV only (no torch). Coordinates are pixel coordinates of the displayed image,
``(x, y)`` = (column, row), as mouse events report them (``dataX``, ``dataY``). Points outside
the image are clipped to its border, so a drag that leaves the picture still masks up to the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

__all__ = ["FILLS", "Fill", "Stroke", "apply_fill", "box_mask", "lasso_mask", "region_mask"]

#: How a masked region is filled. ``mean``: the model's normalization mean colour (the
#: normalized input is then 0 there, the usual "no information" baseline); ``black``: 0;
#: ``blur``: a strong Gaussian blur of the image itself (removes detail, keeps colours).
Fill = Literal["mean", "black", "blur"]
FILLS: tuple[str, ...] = ("mean", "black", "blur")


def _points(points: Sequence[Sequence[float]] | np.ndarray, what: str) -> np.ndarray:
    """Points as a finite float64 array of shape [N, 2]."""
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} points must be (x, y) number pairs; got {points!r}") from err
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{what} points must be a list of (x, y) pairs, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{what} points contain NaN or infinite coordinates: {pts.tolist()}")
    return pts


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) < 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f"shape must be (H, W) with positive sides, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def box_mask(points: Sequence[Sequence[float]] | np.ndarray, *, shape: Sequence[int]) -> np.ndarray:
    """Rasterize the axis-aligned box spanned by two corner points.

    Parameters
    ----------
    points : sequence of 2 (x, y) pairs
        Opposite corners in any order (the drag's start and end), in pixel coordinates;
        clipped to the image. Extra points are allowed: the box is their bounding box.
    shape : (H, W)
        Image size.

    Returns
    -------
    np.ndarray, shape [H, W], bool
        True on pixels ``x0 <= col < x1``, ``y0 <= row < y1`` where ``x0, y0`` are the rounded
        minima and ``x1, y1`` the rounded maxima: a drag from (50, 60) to (125, 105) masks
        75 x 45 pixels.

    Raises
    ------
    ValueError
        Fewer than 2 points, non-finite coordinates, or a box with no area after clipping
        (a click without a drag, or a box entirely outside the image).
    """
    h, w = _shape(shape)
    pts = _points(points, "box")
    if pts.shape[0] < 2:
        raise ValueError(f"a box needs 2 corner points (drag start and end), got {pts.shape[0]}")
    xs = np.clip(pts[:, 0], 0.0, float(w))
    ys = np.clip(pts[:, 1], 0.0, float(h))
    x0, x1 = int(round(xs.min())), int(round(xs.max()))
    y0, y1 = int(round(ys.min())), int(round(ys.max()))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"the box from {pts[0].tolist()} to {pts[-1].tolist()} covers no pixel of the "
            f"{w}x{h} image: drag a larger box inside the image"
        )
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def lasso_mask(
    points: Sequence[Sequence[float]] | np.ndarray, *, shape: Sequence[int]
) -> np.ndarray:
    """Rasterize a closed polygon (lasso path) with ``cv2.fillPoly``.

    Parameters
    ----------
    points : sequence of (x, y) pairs, at least 3
        The path in pixel coordinates; it is closed from the last point back to the first.
        Points are clipped to the image and rounded to pixel centres.
    shape : (H, W)

    Returns
    -------
    np.ndarray, shape [H, W], bool
        The polygon's interior and boundary pixels.

    Raises
    ------
    ValueError
        Fewer than 3 points, non-finite coordinates, or a path that encloses no area
        (all points on one line after clipping).
    """
    h, w = _shape(shape)
    pts = _points(points, "lasso")
    if pts.shape[0] < 3:
        raise ValueError(
            f"a lasso needs at least 3 points to enclose a region, got {pts.shape[0]}: "
            "draw a closed shape (or use a box)"
        )
    poly = np.stack(
        [np.clip(np.rint(pts[:, 0]), 0, w - 1), np.clip(np.rint(pts[:, 1]), 0, h - 1)], axis=1
    ).astype(np.int32)
    if cv2.contourArea(poly.reshape(-1, 1, 2)) <= 0.0:
        raise ValueError(
            "the lasso encloses no area (its points lie on one line, or outside the image): "
            "draw a closed shape around the region to mask"
        )
    canvas = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(canvas, [poly.reshape(-1, 1, 2)], 1)
    return canvas.astype(bool)


def region_mask(
    kind: str, points: Sequence[Sequence[float]] | np.ndarray, *, shape: Sequence[int]
) -> np.ndarray:
    """:func:`box_mask` or :func:`lasso_mask` by name (``"box"``, ``"lasso"``); bool [H, W]."""
    if kind == "box":
        return box_mask(points, shape=shape)
    if kind == "lasso":
        return lasso_mask(points, shape=shape)
    raise ValueError(f"unknown region kind {kind!r}; use 'box' or 'lasso'")


def _blur_sigma(h: int, w: int) -> float:
    # "Strong": about a twentieth of the image side (11 px on a 224 crop) wipes out texture
    # and edges the size of object parts while keeping the average colour of the region.
    return max(2.0, 0.05 * max(h, w))


def apply_fill(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    fill: Fill = "mean",
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    sigma: float | None = None,
) -> np.ndarray:
    """Fill the masked pixels of an image; the input is not modified.

    Parameters
    ----------
    image : np.ndarray, shape [H, W, 3], uint8
        RGB image as the model sees it (resized and cropped).
    mask : np.ndarray, shape [H, W], bool
        Pixels to fill.
    fill : {"mean", "black", "blur"}
        ``mean``: ``round(mean * 255)`` per channel, the colour whose normalized value is 0;
        ``black``: 0; ``blur``: the Gaussian-blurred image (``sigma``) inside the mask.
    mean : 3 floats in [0, 1]
        The model's normalization mean (``Preprocess.mean``), RGB; used by ``fill="mean"``.
    sigma : float, optional
        Gaussian sigma in pixels for ``fill="blur"``; default ``max(2, 0.05 * max(H, W))``.

    Returns
    -------
    np.ndarray, shape [H, W, 3], uint8
        A new array.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"image must be a uint8 RGB array of shape [H, W, 3], got {img.dtype} {img.shape}"
        )
    m = np.asarray(mask)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the image's {img.shape[:2]}")
    if m.dtype != bool:
        raise ValueError(f"mask must be a bool array, got {m.dtype}")
    out = img.copy()
    if fill == "mean":
        colour = np.asarray(mean, dtype=np.float64).reshape(-1)
        if colour.shape != (3,) or not np.all((colour >= 0.0) & (colour <= 1.0)):
            raise ValueError(f"mean must be 3 values in [0, 1] (RGB), got {list(mean)}")
        out[m] = np.rint(colour * 255.0).astype(np.uint8)
    elif fill == "black":
        out[m] = 0
    elif fill == "blur":
        s = _blur_sigma(*img.shape[:2]) if sigma is None else float(sigma)
        if not s > 0.0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        # ksize (0, 0): OpenCV derives the kernel from sigma (about 6 sigma wide).
        blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT)
        out[m] = blurred[m]
    else:
        raise ValueError(f"unknown fill {fill!r}; use one of {', '.join(FILLS)}")
    return out


@dataclass(frozen=True)
class Stroke:
    """One brush stroke on the image the model sees.

    Attributes
    ----------
    kind : {"box", "lasso", "pixels"}
        ``box``: two opposite corners; ``lasso``: a closed polygon of at least 3 points;
        ``pixels``: an explicit bool mask in ``region`` (e.g. the top-p% pixels of a map).
    points : tuple of (x, y)
        Pixel coordinates of ``Session.image`` (column, row), as mouse events report them.
    fill : {"mean", "black", "blur"}
        How the region is filled (see :func:`psal_widgets.viz.masks.apply_fill`).
    region : np.ndarray, shape [H, W], bool, optional
        The mask for ``kind="pixels"``.
    note : str
        Free text for the UI's mask list (e.g. ``"top 5%"``).
    """

    kind: Literal["box", "lasso", "pixels"] = "box"
    points: tuple[tuple[float, float], ...] = ()
    fill: Fill = "mean"
    region: np.ndarray | None = field(default=None, compare=False, repr=False)
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("box", "lasso", "pixels"):
            raise ValueError(f"unknown stroke kind {self.kind!r}; use 'box', 'lasso' or 'pixels'")
        if self.fill not in FILLS:
            raise ValueError(f"unknown fill {self.fill!r}; use one of {', '.join(FILLS)}")
        try:
            pts = tuple((float(p[0]), float(p[1])) for p in self.points)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(
                f"stroke points must be (x, y) number pairs; got {self.points!r}"
            ) from err
        object.__setattr__(self, "points", pts)
        if self.kind == "pixels":
            if self.region is None:
                raise ValueError("a 'pixels' stroke needs region=<bool array [H, W]>")
            region = np.asarray(self.region)
            if region.dtype != bool or region.ndim != 2:
                raise ValueError(
                    f"region must be a bool array [H, W], got {region.dtype} {region.shape}"
                )
            object.__setattr__(self, "region", region)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The stroke's pixels on an image of ``shape`` (H, W), bool [H, W]."""
        if self.kind == "pixels":
            assert self.region is not None
            if self.region.shape != tuple(shape):
                raise ValueError(f"region has shape {self.region.shape}, the image {tuple(shape)}")
            return self.region
        return region_mask(self.kind, self.points, shape=shape)
