"""Which image and which label: resolution shared by :class:`Session` and ``Explainer.analyze``.

An image comes as a path, encoded bytes, a PIL image or (inside the session) an already
displayed uint8 array. Its label is, in this order: the one the caller gives (index, WordNet id
or name; a typo raises :class:`~psal_widgets.labels.UnknownLabelError` with suggestions), the
known one (a dataset row, a ``labels.csv`` beside the file, an ILSVRC2012 validation file
name), else the model's prediction. A known label of another label set is ignored rather than
refused: the prediction is studied instead. Torch-free.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..data import load_image, to_rgb
from ..labels import LabelSet, UnknownLabelError, ilsvrc_val_label
from .errors import SessionError

__all__ = [
    "RAW_IMAGES",
    "ImageInput",
    "ImageSource",
    "LabelChoice",
    "LabelSource",
    "choose_label",
    "first_raw_image",
    "known_label",
    "known_label_index",
    "read_image",
]

#: An image as callers pass it: a path, the encoded file content, or a PIL image.
ImageSource = str | os.PathLike[str] | bytes | Image.Image
#: Where the label under study comes from.
LabelSource = Literal["known", "given", "prediction"]

#: The project's sample photographs (the default image).
RAW_IMAGES = Path(__file__).resolve().parents[2] / "raw_images"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageInput:
    """A decoded image and where it came from.

    Attributes
    ----------
    pil : PIL.Image.Image
        Mode RGB (transparency composited on white, as :func:`~psal_widgets.data.to_rgb`).
    name : str
        File name to show: the given name, else the file's name, ``upload`` or ``image``.
    path : Path or None
        The file it was read from (where a ``labels.csv`` may sit); None for bytes and PIL.
    """

    pil: Image.Image
    name: str
    path: Path | None


@dataclass(frozen=True)
class LabelChoice:
    """The label to study.

    Attributes
    ----------
    index : int or None
        Class index; None: the model's prediction (known only after a forward pass).
    source : {"known", "given", "prediction"}
    default : int or None
        The image's known label, what "back to the default label" returns to (None: its
        prediction).
    """

    index: int | None
    source: LabelSource
    default: int | None


def first_raw_image() -> Path:
    """The first sample photograph of ``raw_images/`` (the default image of a session)."""
    files = sorted(p for p in RAW_IMAGES.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise SessionError(
            f"no sample images in {RAW_IMAGES.name}/ (not a source checkout?): pass image=PATH"
        )
    return files[0]


def read_image(source: ImageSource, *, name: str | None = None) -> ImageInput:
    """Decode an image; raises :class:`~psal_widgets.data.ImageError` with the reason.

    Parameters
    ----------
    source : path, bytes or PIL image
    name : str, optional
        Name to show instead of the file's.
    """
    if isinstance(source, Image.Image):
        return ImageInput(to_rgb(source), name or "image", None)
    pil = load_image(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ImageInput(pil, name or "upload", None)
    path = Path(os.fspath(source)).expanduser()
    return ImageInput(pil, name or path.name, path)


def known_label(path: str | os.PathLike[str]) -> str | int | None:
    """The label of an image file, if known: a ``labels.csv`` beside it (``file,label``),
    else its ILSVRC2012 validation file name; None otherwise (unresolved)."""
    p = Path(path)
    table = p.parent / "labels.csv"
    if table.is_file():
        with table.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if Path(row.get("file", "")).name == p.name and row.get("label"):
                    return row["label"]
    return ilsvrc_val_label(p.name)


def known_label_index(
    labels: LabelSet,
    *,
    path: Path | None = None,
    name: str | None = None,
    known: int | str | None = None,
) -> int | None:
    """The known label of an image as a class index, or None.

    Parameters
    ----------
    labels : LabelSet
        The model's classes.
    path : Path, optional
        The image file (``labels.csv`` beside it, ILSVRC file name).
    name : str, optional
        The shown name (an ILSVRC file name survives an upload under its name).
    known : int or str, optional
        A label the caller already knows (e.g. a dataset row); wins over the others.
    """
    if known is None and path is not None:
        known = known_label(path)
    if known is None and name:
        known = ilsvrc_val_label(Path(name).name)
    if known is None:
        return None
    try:
        return labels.resolve(known)
    except UnknownLabelError:
        # A labels.csv made for another label set: study the prediction instead.
        return None


def choose_label(labels: LabelSet, label: int | str | None, default: int | None) -> LabelChoice:
    """The given label, else the known one, else the prediction.

    Raises
    ------
    UnknownLabelError
        ``label`` names no class (with suggestions).
    """
    if label is not None:
        if isinstance(label, np.integer):  # e.g. a row of a NumPy label array
            label = int(label)
        return LabelChoice(labels.resolve(label), "given", default)
    if default is not None:
        return LabelChoice(default, "known", default)
    return LabelChoice(None, "prediction", None)
