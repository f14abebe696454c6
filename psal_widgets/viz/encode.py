"""uint8 images -> PNG bytes for ``ipywidgets.Image`` (OpenCV only, no torch)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["encode_png", "png_bytes", "thumbnail"]


def _check_uint8_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 (0-255), got {arr.dtype}; scale a [0, 1] float map with "
            "np.round(m * 255).astype(np.uint8) first"
        )
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise ValueError(f"image must have shape [H, W], [H, W, 3] or [H, W, 4], got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    return arr


def png_bytes(image: np.ndarray, *, compression: int = 1) -> bytes:
    """Encode an RGB(A) or grey uint8 image as PNG.

    Parameters
    ----------
    image : np.ndarray, shape [H, W], [H, W, 3] (RGB) or [H, W, 4] (RGBA), uint8
    compression : int, default 1
        zlib level 0-9; low levels are several times faster and the images are small
        (a 224 x 224 overlay is re-encoded on every filter click).

    Returns
    -------
    bytes
        A PNG file.
    """
    arr = _check_uint8_image(image)
    if not 0 <= int(compression) <= 9:
        raise ValueError(f"compression must be 0-9, got {compression}")
    # OpenCV writes BGR(A); flip the colour channels of RGB(A) input.
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(
        ".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    )
    if not ok:  # pragma: no cover - OpenCV only fails on invalid input, checked above
        raise ValueError(f"OpenCV could not encode an image of shape {arr.shape} as PNG")
    return buf.tobytes()


def thumbnail(image: np.ndarray, *, max_side: int = 96) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_side`` (never enlarges).

    Parameters
    ----------
    image : np.ndarray, shape [H, W] or [H, W, C], uint8
    max_side : int, default 96

    Returns
    -------
    np.ndarray, shape [h, w] or [h, w, C], uint8
        ``max(h, w) <= max_side``, aspect ratio kept (area averaging).
    """
    arr = _check_uint8_image(image)
    if int(max_side) < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side}")
    h, w = arr.shape[:2]
    scale = int(max_side) / max(h, w)
    if scale >= 1.0:
        return arr
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 passes through; floats are taken as [0, 1] intensities (clipped)."""
    arr = np.asarray(array)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """Encode an image as PNG bytes (what :func:`image_png` writes).

    Parameters
    ----------
    array : np.ndarray, shape [H, W, 3] or [H, W]
        RGB (uint8, or float in [0, 1]) or grayscale (uint8, or float in [0, 1]).

    Returns
    -------
    bytes
    """
    arr = _to_uint8(array)
    if arr.ndim == 3 and arr.shape[2] == 3:
        # OpenCV stores BGR.
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    elif arr.ndim != 2:
        raise ValueError(f"image must have shape [H, W, 3] or [H, W], got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise OSError(f"OpenCV could not encode a PNG of shape {arr.shape}")
    return buf.tobytes()
