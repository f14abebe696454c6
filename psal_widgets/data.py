"""Images and labelled image sets: robust loading, preprocessing, and dataset discovery.

``load_image`` turns any readable photo into an RGB ``PIL.Image`` or raises
:class:`ImageError` with a one-line message naming the problem and the fix.
:class:`Preprocess` maps that image to the normalized tensor a classifier expects, and back
to the uint8 picture the model actually sees (for overlays). :func:`open_dataset` reads a
labelled set from a CSV, an ImageFolder tree, or a flat ILSVRC2012 validation folder.
"""
from __future__ import annotations

import csv
import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .labels import LabelSet, UnknownLabelError, ilsvrc_val_label, imagenet_labels

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_BYTES",
    "MIN_IMAGE_SIDE",
    "DatasetError",
    "ImageError",
    "LabeledImages",
    "Preprocess",
    "load_image",
    "open_dataset",
    "to_rgb",
]

#: File name suffixes treated as images when scanning folders (compared lower-case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
)

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


# -- preprocessing -------------------------------------------------------------------------
_INTERPOLATIONS: dict[str, InterpolationMode] = {
    "nearest": InterpolationMode.NEAREST,
    "nearest-exact": InterpolationMode.NEAREST_EXACT,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
    "lanczos": InterpolationMode.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side, center-crop, scale to [0, 1], normalize per channel.

    Attributes
    ----------
    resize : int
        Length of the shorter side after resizing (aspect ratio kept).
    crop : int
        Side of the square center crop.
    mean, std : tuple of 3 float
        Per-channel normalization applied to [0, 1] values, RGB order.
    interpolation : str
        One of ``nearest``, ``nearest-exact``, ``bilinear``, ``bicubic``, ``box``,
        ``hamming``, ``lanczos``.
    crop_mode : {"center", "squash"}
        ``center``: resize the shorter side to ``resize`` and crop the centre (torchvision,
        most timm models); ``squash``: resize both sides to ``resize`` (aspect ratio not kept),
        then crop the centre (timm's ``crop_mode="squash"``).
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        # JSON gives lists; store tuples so the object stays hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "resize", int(self.resize))
        object.__setattr__(self, "crop", int(self.crop))
        if self.resize < 1 or self.crop < 1:
            raise ValueError(f"resize and crop must be positive, got {self.resize}, {self.crop}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need exactly 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.crop_mode not in ("center", "squash"):
            raise ValueError(f"crop_mode must be 'center' or 'squash', got {self.crop_mode!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; use one of "
                + ", ".join(_INTERPOLATIONS)
            )

    def _geometry(self, img: Image.Image) -> Image.Image:
        """Resize + center crop on the PIL image, shared by ``__call__`` and ``display`` so
        the overlay picture is pixel-for-pixel what the model was given."""
        img = to_rgb(img)
        size = [self.resize] if self.crop_mode == "center" else [self.resize, self.resize]
        img = TF.resize(
            img, size, interpolation=_INTERPOLATIONS[self.interpolation], antialias=True
        )
        return TF.center_crop(img, [self.crop, self.crop])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Model input for one image.

        Parameters
        ----------
        img : PIL.Image.Image
            Any mode; converted with :func:`to_rgb`.

        Returns
        -------
        torch.Tensor, shape [3, crop, crop], float32
            Normalized: ``(pixel / 255 - mean) / std``.
        """
        x = TF.pil_to_tensor(self._geometry(img)).to(torch.float32).div_(255.0)
        return TF.normalize(x, list(self.mean), list(self.std))

    def display(self, img: Image.Image) -> np.ndarray:
        """What the model sees, for overlays: same resize and crop, no normalization.

        Returns
        -------
        np.ndarray, shape [crop, crop, 3], uint8
        """
        return np.array(self._geometry(img), dtype=np.uint8)

    def normalize(self, array: np.ndarray) -> torch.Tensor:
        """Model input for an image that is already resized and cropped (normalization only).

        ``normalize(display(img))`` equals ``self(img)`` exactly: used to send edited display
        images (e.g. with masked regions) back to the model.

        Parameters
        ----------
        array : np.ndarray, shape [H, W, 3], uint8
            RGB pixels, e.g. from :meth:`display`.

        Returns
        -------
        torch.Tensor, shape [3, H, W], float32
            ``(pixel / 255 - mean) / std``.
        """
        arr = np.asarray(array)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"expected a uint8 RGB array of shape [H, W, 3], got {arr.dtype} {arr.shape}"
            )
        # torch.tensor copies: the source may be a read-only view (e.g. a session's image).
        x = torch.tensor(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)
        return TF.normalize(x, list(self.mean), list(self.std))

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Undo the normalization of a preprocessed image.

        Parameters
        ----------
        x : torch.Tensor, shape [3, H, W]
            Normalized image, any device or dtype.

        Returns
        -------
        np.ndarray, shape [H, W, 3], uint8
        """
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a tensor of shape [3, H, W], got {list(x.shape)}")
        x = x.detach().to("cpu", torch.float32)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        pixels = (x * std + mean).mul_(255.0).round_().clamp_(0, 255)
        return pixels.to(torch.uint8).permute(1, 2, 0).numpy().copy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists for mean/std)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["crop_mode"] == "center":
            # The default is left out, so metadata written before crop_mode existed still matches.
            del d["crop_mode"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; missing keys take the defaults.

        Unknown keys raise ``ValueError``: statistics computed under a different
        preprocessing must not be reused silently.
        """
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(
                f"unknown preprocessing keys {extra}; expected some of {sorted(known)}"
            )
        return cls(**d)


# -- datasets ------------------------------------------------------------------------------
class DatasetError(ValueError):
    """A dataset cannot be opened; the message names the file or row and the fix."""


@dataclass
class LabeledImages(Dataset):
    """Image files with class indices, read lazily.

    Attributes
    ----------
    files : list of Path
        Image paths, in dataset order.
    labels : list of int
        Class index of each file (same length as ``files``).
    root : Path
        Folder the files are reported relative to (the CSV's folder or the dataset folder).
    description : str
        Short provenance text without absolute paths, for metadata.
    preprocess : Preprocess, optional
        Applied by ``__getitem__``; the ImageNet default when None.
    """

    files: list[Path]
    labels: list[int]
    root: Path
    description: str = ""
    preprocess: Preprocess | None = field(default=None)

    def __post_init__(self) -> None:
        self.files = [Path(f) for f in self.files]
        self.labels = [int(v) for v in self.labels]
        self.root = Path(self.root)
        if len(self.files) != len(self.labels):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as loaded (RGB, upright, not resized)."""
        return load_image(self.files[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Image ``i`` preprocessed, and its label.

        Returns
        -------
        (torch.Tensor [3, crop, crop] float32, int)
        """
        pre = self.preprocess or Preprocess()
        return pre(self.image(i)), self.labels[i]

    def relative_files(self) -> list[str]:
        """File paths relative to ``root``, with ``/`` separators (portable for metadata)."""
        return [Path(os.path.relpath(f, self.root)).as_posix() for f in self.files]

    def subset(self, indices: Sequence[int]) -> LabeledImages:
        """A new dataset with the items at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return replace(
            self,
            files=[self.files[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            description=f"{self.description}, subset of {len(idx)}",
        )


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _visible(p: Path) -> bool:
    # Skip hidden entries such as .ipynb_checkpoints or macOS ._ resource files.
    return not p.name.startswith(".")


def _read_csv(csv_path: Path, labels: LabelSet) -> tuple[list[Path], list[int]]:
    """Rows of a ``file,label`` table; paths are relative to the CSV's folder."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: tolerate Excel's BOM
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {csv_path.name}: {err}") from err
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    cols = [c.strip().lower() for c in header or []]
    if "file" not in cols or "label" not in cols:
        raise DatasetError(
            f"{csv_path.name} has columns {cols}; it needs at least 'file' and 'label' "
            "(label: class index, WordNet id or class name; extra columns are ignored)"
        )
    fi, li = cols.index("file"), cols.index("label")
    files: list[Path] = []
    out: list[int] = []
    missing: list[str] = []
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(fi, li):
            raise DatasetError(f"{csv_path.name} line {line}: too few columns in {row}")
        name, raw = row[fi].strip(), row[li].strip()
        if not name:
            raise DatasetError(f"{csv_path.name} line {line}: the file column is empty")
        try:
            out.append(labels.resolve(raw))
        except UnknownLabelError as err:
            raise DatasetError(f"{csv_path.name} line {line} ({name}): {err}") from err
        path = csv_path.parent / name
        if not path.is_file():
            missing.append(f"line {line}: {name}")
        files.append(path)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        shown = "; ".join(missing[:3]) + more
        raise DatasetError(
            f"{csv_path.name} lists {len(missing)} missing file(s) ({shown}): paths are "
            "relative to the CSV's folder"
        )
    return files, out


def _read_image_folder(root: Path, labels: LabelSet) -> tuple[list[Path], list[int], int]:
    """One sub-folder per class (name: wnid, index or class name), searched recursively."""
    files: list[Path] = []
    out: list[int] = []
    n_classes = 0
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        images = sorted(
            p
            for p in sub.rglob("*")
            if p.is_file()
            and _is_image(p)
            and not any(part.startswith(".") for part in p.relative_to(sub).parts)
        )
        if not images:
            continue  # an empty or unrelated folder is not a class
        try:
            idx = labels.resolve(sub.name)
        except UnknownLabelError as err:
            raise DatasetError(f"class folder {sub.name!r} in {root.name}: {err}") from err
        n_classes += 1
        files.extend(images)
        out.extend([idx] * len(images))
    return files, out, n_classes


def _read_flat_val(
    root: Path, images: list[Path], labels: LabelSet
) -> tuple[list[Path], list[int]]:
    """A flat folder of ILSVRC2012 validation images, labelled from their file names."""
    known = [(p, ilsvrc_val_label(p.name)) for p in images]
    unknown = [p.name for p, v in known if v is None]
    other = "use one sub-folder per class or a labels.csv with columns file,label"
    if len(unknown) == len(known):
        raise DatasetError(
            f"none of the {len(known)} images in {root.name} has a known label: flat folders are "
            f"only for ILSVRC2012 validation images (ILSVRC2012_val_XXXXXXXX.JPEG); {other}"
        )
    if unknown:
        raise DatasetError(
            f"{len(unknown)} of {len(known)} images in {root.name} have no known label (e.g. "
            f"{', '.join(unknown[:3])}): remove them, or {other}"
        )
    imnet = imagenet_labels()
    out: list[int] = []
    for _, v in known:
        assert v is not None
        # Go through the WordNet id so label sets in another order still line up.
        if labels.wnids is not None:
            out.append(labels.resolve(imnet.wnids[v]))  # type: ignore[index]
        elif len(labels) == len(imnet):
            out.append(v)
        else:
            raise DatasetError(
                f"{root.name} holds ImageNet validation images but the model has {len(labels)} "
                "classes: label them with a labels.csv instead"
            )
    return [p for p, _ in known], out


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, in order (keeps every class in play)."""
    return [i * n // k for i in range(k)]


def open_dataset(
    path: str | os.PathLike[str],
    *,
    labels: LabelSet,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
) -> LabeledImages:
    """Open a labelled image set.

    Accepted layouts, checked in this order:

    (a) a CSV file with at least the columns ``file,label`` (paths relative to the CSV's
        folder; label as index, WordNet id or name; extra columns ignored);
    (d) a folder holding ``labels.csv``: read as (a);
    (c) a folder with image files directly inside: ILSVRC2012 validation images, labelled
        from their file names;
    (b) a folder of class sub-folders (ImageFolder), each named by WordNet id, index or
        class name, taken in sorted order.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file or the folder.
    labels : LabelSet
        Classes of the model; every label is resolved against it.
    preprocess : Preprocess, optional
        Stored on the dataset for ``__getitem__``.
    limit : int, optional
        Keep only this many items, spread evenly over the dataset order (so a class-sorted
        folder still contributes every class).

    Returns
    -------
    LabeledImages

    Raises
    ------
    DatasetError
        Missing path, CSV without ``file``/``label``, unknown label (row or folder named),
        listed file missing, no images, unlabelled flat folder.
    """
    p = Path(os.fspath(path)).expanduser()
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    if not p.exists():
        raise DatasetError(
            f"dataset not found: {p}: give a labels CSV, a folder of class sub-folders, or a "
            "folder of ILSVRC2012 validation images"
        )
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DatasetError(
                f"{p.name} is a single file, not a dataset: give a CSV with columns file,label "
                "or a folder of images"
            )
        files, out = _read_csv(p, labels)
        root, desc = p.parent, f"csv {p.name} in {p.parent.name}"
    elif (p / "labels.csv").is_file():
        files, out = _read_csv(p / "labels.csv", labels)
        root, desc = p, f"csv labels.csv in {p.name}"
    else:
        top = sorted(f for f in p.iterdir() if f.is_file() and _is_image(f))
        if top:
            files, out = _read_flat_val(p, top, labels)
            root, desc = p, f"ILSVRC2012 validation images in {p.name}"
        else:
            files, out, n_classes = _read_image_folder(p, labels)
            root, desc = p, f"image folder {p.name}, {n_classes} classes"
            if not files:
                csvs = sorted(f.name for f in p.glob("*.csv"))
                also = f" (found {', '.join(csvs)}: pass the CSV itself)" if csvs else ""
                raise DatasetError(
                    f"no images found in {p.name}{also}: expected class sub-folders of images, "
                    "ILSVRC2012 validation images, or a labels.csv "
                    f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})"
                )
    if not files:
        raise DatasetError(f"{desc} lists no images: add rows 'file,label' to it")
    total = len(files)
    if limit is not None and limit < total:
        keep = _spread(total, limit)
        files, out = [files[i] for i in keep], [out[i] for i in keep]
        desc += f", {limit} of {total} images (evenly spaced)"
    else:
        desc += f", {total} images"
    return LabeledImages(
        files=files, labels=out, root=root, description=desc, preprocess=preprocess
    )
