"""One image file in, an upright RGB ``PIL.Image`` out, or :class:`ImageError` with the reason.

``load_image`` is the single door for every image (command line, ``Session.set_image`` and so the
dashboard's uploads, datasets, ``Explainer.analyze``). Its limits are checked on the file's size
and header before anything is decoded, so memory is bounded by what preprocessing makes of the
image, not by what the file claims: regular files only (a FIFO or ``/dev/zero`` is refused before
reading), a size cap, Pillow's pixel limit, an aspect-ratio limit; a JPEG whose body is damaged is
refused rather than decoded into grey garbage. Re-exported by :mod:`psal_widgets.data`.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_BYTES",
    "MIN_IMAGE_SIDE",
    "ImageError",
    "load_image",
    "to_rgb",
]

#: Smallest accepted side in pixels: below this an image carries no usable content.
MIN_IMAGE_SIDE = 8

#: Largest accepted long side / short side. Preprocessing resizes the short side (to 256 px for
#: most models), so the pixels it makes grow with this ratio: 32:1 keeps that under ~2 MP while
#: admitting stitched panoramas (typically 2:1 to 12:1).
MAX_ASPECT_RATIO = 32.0

#: Largest accepted file, checked before reading (a 100-megapixel TIFF is ~300 MB uncompressed).
MAX_IMAGE_BYTES = 512 * 2**20


# -- single images -------------------------------------------------------------------------
class ImageError(ValueError):
    """An image cannot be used; the message names the file, the problem and the fix."""


def _looks_like_text(head: bytes, *, renamed: bool) -> str | None:
    """A hint for the common 'renamed text/HTML file' mistake, from the first bytes."""
    probe = head.lstrip().lower()
    if probe.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "it looks like an HTML/XML page (a saved web page or an SVG), not a photo"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "it looks like a text file renamed with an image extension" if renamed else "it is text"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the way a viewer would show it.

    Transparency is composited on white (a transparent background renders as black
    otherwise, which classifiers read as content); 16-bit and float gray are scaled,
    not clipped, to 8 bits.

    Parameters
    ----------
    img : PIL.Image.Image
        Any mode (``1``, ``L``, ``P``, ``LA``, ``RGBA``, ``CMYK``, ``I;16``, ``I``, ``F`` ...).

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, same size.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        # A 65536-entry lookup table: exact, and 1 byte per pixel where float maths costs 4-8.
        lut = np.clip(np.rint(np.arange(65536) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        gray = lut[np.asarray(img).astype(np.uint16, copy=False)]
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("I", "F"):
        # float32 and in place: 4 bytes per pixel, not the 8 x 4 of chained float64 temporaries.
        arr = np.array(img, dtype=np.float32)
        top = float(arr.max()) if arr.size else 0.0
        if mode == "I" and top > 255:
            scale = 255.0 / 65535.0  # 16-bit sample range (PNG/TIFF) -> 8 bits
        elif mode == "F" and top <= 1.0:
            scale = 255.0  # float images are usually in [0, 1]
        else:
            scale = 1.0
        arr *= np.float32(scale)
        np.rint(arr, out=arr)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info
    ) or (mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        # White pasted through the inverted alpha band: the same pixels as alpha_composite on
        # an opaque white RGBA, with one RGB canvas instead of three RGBA copies in memory.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        out = rgba.convert("RGB")
        out.paste((255, 255, 255), mask=rgba.getchannel("A").point(lambda a: 255 - a))
        return out
    return img.convert("RGB")


def _read_regular_file(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, checked before reading.

    Opened non-blocking and checked with ``fstat`` on the open descriptor (no race between the
    check and the read): a FIFO named ``.jpg`` would block ``open`` forever, and ``/dev/zero``
    would be read until memory runs out.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ImageError(f"cannot read {what}: {err.strerror or err}") from err
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else (
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a special file")
            raise ImageError(f"{what} is {kind}, not a regular file: save the image to a file and pass that")
        if st.st_size > max_bytes:
            raise ImageError(
                f"{what} is {st.st_size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit for "
                "one image: downscale or re-compress it first"
            )
        data = fh.read(max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise ImageError(f"{what} grew past the {max_bytes / 2**20:.0f} MB limit while being read")
    return data


def _check_jpeg_body(data: bytes, what: str) -> None:
    """Refuse a JPEG whose entropy-coded data is damaged.

    libjpeg recovers from a corrupt scan (bytes overwritten, a segment cut short) by filling the
    rest with grey and only *warns*; Pillow drops those warnings, so the garbage would be
    analysed silently. simplejpeg (libjpeg-turbo) turns the same warnings into errors with
    ``strict=True``; decoding at 1/8 scale still reads every coefficient, at a fraction of the
    cost and memory of a full decode.
    """
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as err:
        reason = str(err)
        if "corrupt" in reason.lower() or "premature" in reason.lower():
            raise ImageError(
                f"{what} is a damaged JPEG (libjpeg: {reason.rstrip('.')}): part of it would be "
                "decoded as grey garbage; copy it again or re-save it from the original"
            ) from err
        # Anything else (an exotic colour space libjpeg-turbo cannot convert): Pillow decoded
        # it without an error, and its warnings are what this check is about.


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = None,
    min_side: int = MIN_IMAGE_SIDE,
    max_aspect: float = MAX_ASPECT_RATIO,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> Image.Image:
    """Read an image file (or its encoded bytes) into an upright RGB image.

    The whole file is decoded here, so truncated or corrupt data fails now with a clear
    message rather than later inside a model. EXIF orientation is applied. Every limit is
    checked on the file's size and header, before anything is decoded: memory stays bounded
    by what preprocessing makes of the image, not by what the file claims.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        A path (``~`` is expanded; regular files only) or the encoded file content.
    max_pixels : int, optional
        Refuse images with more pixels (decompression-bomb guard); defaults to Pillow's
        ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels). Pillow's own limit still applies
        when this is larger.
    min_side : int
        Refuse images whose width or height is smaller.
    max_aspect : float
        Refuse images whose long side exceeds ``max_aspect`` times the short side: resizing
        the short side to the model's input (256 px) multiplies the pixels by the aspect
        ratio (a 4.7 KB PNG of 200000x8 would become 6.4 gigapixels).
    max_bytes : int
        Refuse larger files (or byte strings) before reading them.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, size (W, H) after orientation.

    Raises
    ------
    ImageError
        Missing file, a folder, a FIFO or device, empty or too large a file, not an image,
        truncated or corrupt data (a damaged JPEG body too), too many pixels, too elongated,
        too small, or an unsupported colour mode.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        what = "the image data"
        data = bytes(source)
        if len(data) > max_bytes:
            raise ImageError(
                f"{what} is {len(data) / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit for "
                "one image: downscale or re-compress it first"
            )
    else:
        path = Path(os.fspath(source)).expanduser()
        what = str(path)
        if not path.exists():
            raise ImageError(f"image not found: {what}: check the path and the current folder")
        if path.is_dir():
            raise ImageError(
                f"{what} is a folder, not an image: pass one image file "
                "(use open_dataset for a folder of images)"
            )
        data = _read_regular_file(path, what, max_bytes)
    if not data:
        raise ImageError(f"{what} is empty (0 bytes): copy the image again")

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; a warning here must stop us too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size  # from the header: nothing decoded yet
            if limit is not None and w * h > limit:
                raise ImageError(
                    f"{what} is {w}x{h} pixels, over the {limit:,} pixel limit (a decompression "
                    "bomb or a huge scan): downscale it first"
                )
            if min(w, h) < min_side:
                raise ImageError(
                    f"{what} is only {w}x{h} pixels: need at least {min_side} px per side (is it a "
                    "thumbnail or an icon?)"
                )
            if max(w, h) > max_aspect * min(w, h):
                raise ImageError(
                    f"{what} is {w}x{h} pixels, an aspect ratio of {max(w, h) / min(w, h):,.0f}:1, over "
                    f"the {max_aspect:g}:1 limit (resizing its short side for the model would multiply "
                    "its pixels by that ratio): crop it into pieces first"
                )
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                # A caller (or another library) switched Pillow's global leniency on: truncated
                # files would then decode as grey without an error. Refuse rather than guess.
                raise ImageError(
                    "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on, so damaged images would load "
                    "silently: set it back to False"
                )
            img.load()
            if img.format == "JPEG":
                _check_jpeg_body(data, what)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(
            f"{what} is too large to decode safely ({str(err).rstrip('.')}): downscale it first"
        ) from err
    except UnidentifiedImageError as err:
        hint = _looks_like_text(data[:512], renamed=what != "the image data")
        hint = hint or "its content is not a known image format"
        raise ImageError(
            f"{what} is not an image Pillow can read: {hint}; use a JPEG, PNG, BMP, WebP or "
            "TIFF file"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        # Pillow reports truncated/corrupt payloads as OSError (and older codecs SyntaxError).
        raise ImageError(
            f"{what} is truncated or corrupt ({err}): copy it again or re-save it with an "
            "image editor"
        ) from err
    try:
        # exif_transpose copies the image even when there is nothing to turn: only call it when
        # the orientation tag asks for a turn (a full-size copy is the largest allocation here).
        if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a broken EXIF block should not hide a good picture
        pass
    try:
        return to_rgb(img)
    except (OSError, ValueError) as err:
        raise ImageError(
            f"{what} uses colour mode {img.mode!r}, which cannot be converted to RGB: "
            "re-save it as an 8-bit RGB JPEG or PNG"
        ) from err
