"""What a visitor may upload: an image file of bounded size, checked before anything decodes it.

The dashboard receives an upload as bytes in memory (ipywidgets' ``FileUpload``; nothing is
written to disk). :func:`check_upload` runs first, on the bytes alone: the size against the
limit, then the file's signature against the image formats the explorer reads (Pillow
identifies the format from the header without decoding pixels, and only the plugins named in
:data:`IMAGE_FORMATS` are tried, so no exotic parser ever sees visitor data). The full decode,
with its own checks (truncation, decompression bombs), is :func:`psal_widgets.data.load_image`'s.
No torch here.
"""

from __future__ import annotations

import io
import re
from pathlib import PurePosixPath, PureWindowsPath

__all__ = ["DEFAULT_UPLOAD_LIMIT", "IMAGE_FORMATS", "UploadError", "check_upload", "clean_name"]

#: Largest upload by default, in bytes (``psal dashboard --upload-limit MB``).
DEFAULT_UPLOAD_LIMIT = 20 * 1000 * 1000

#: Pillow format names an upload may have (what ``raw_images/`` and datasets use).
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


class UploadError(ValueError):
    """An upload is refused: the message names the file, the problem and the fix."""


def clean_name(name: object, *, default: str = "upload") -> str:
    """The file name a browser sent, reduced to a plain, short, printable base name.

    The name is only shown and used as a label hint (an ILSVRC file name); it is never a path.
    """
    text = str(name or "")
    text = PureWindowsPath(PurePosixPath(text).name).name  # no folders, whichever separator
    text = re.sub(r"[\x00-\x1f\x7f]", "", text).strip()
    if text in ("", ".", ".."):
        return default
    return text[-100:]


def check_upload(data: bytes | bytearray | memoryview, name: str, *, limit: int = DEFAULT_UPLOAD_LIMIT) -> str:
    """Refuse an upload that is too large, empty or not an image; return its format.

    Parameters
    ----------
    data : bytes
        The file's content.
    name : str
        Its (cleaned) name, for the message.
    limit : int
        Largest size in bytes.

    Returns
    -------
    str
        The Pillow format name (one of :data:`IMAGE_FORMATS`).

    Raises
    ------
    UploadError
    """
    size = len(data)
    if size > limit:
        raise UploadError(
            f"{name}: {size / 1e6:.1f} MB is over the upload limit of {limit / 1e6:g} MB; "
            "upload a smaller image (the dashboard's owner can raise it with --upload-limit)"
        )
    if size == 0:
        raise UploadError(f"{name}: the file is empty; upload an image (JPEG, PNG, ...)")
    from PIL import Image, UnidentifiedImageError

    try:
        # Header only: Image.open is lazy, and verify() checks the structure without decoding.
        with Image.open(io.BytesIO(bytes(data)), formats=list(IMAGE_FORMATS)) as img:
            fmt = str(img.format)
            img.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, Image.DecompressionBombError):
            raise UploadError(f"{name}: too many pixels to analyze safely ({err}); upload a smaller image") from err
        kinds = ", ".join(IMAGE_FORMATS)
        raise UploadError(f"{name} is not an image ({kinds}); upload a photo") from err
    return fmt
