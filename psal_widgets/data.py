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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .imageio import MAX_ASPECT_RATIO, MAX_IMAGE_BYTES, MIN_IMAGE_SIDE, ImageError, load_image, to_rgb
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
