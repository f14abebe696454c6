"""Export of what the explorer shows: files in a folder, or the same bytes as one zip.

The session renders every file once into bytes (:class:`ExportFiles`); :func:`write_files`
writes them to a folder and :func:`zip_files` packs the very same bytes for a browser download
(a collaborator in a dashboard has no access to the server's disk).
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..viz.encode import encode_png
from ..viz.heatmap import overlay

if TYPE_CHECKING:
    from ..kernels.filters import FilterIndex

__all__ = ["EXPORT_FILES", "ExportFiles", "profile_csv", "render_files", "write_files", "zip_files"]

#: The files of an export, in order (``profile.html`` comes from the widget tier, as an extra).
EXPORT_FILES: tuple[str, ...] = (
    "profile.csv",
    "filters.json",
    "image.png",
    "input_map.png",
    "overlay.png",
    "gradcam.png",
)

#: File name -> content.
ExportFiles = dict[str, bytes]


def profile_csv(index: FilterIndex, profile: np.ndarray, raw: np.ndarray) -> bytes:
    """``id,layer,channel,saliency,raw`` for every filter; values in full precision (repr)."""
    ids = np.arange(index.n_filters)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["id", "layer", "channel", "saliency", "raw"])
    for i, layer, ch in zip(
        ids.tolist(), index.layer_names(ids), index.channels(ids).tolist(), strict=True
    ):
        writer.writerow([i, layer, ch, repr(float(profile[i])), repr(float(raw[i]))])
    return buf.getvalue().encode()


def render_files(
    *,
    index: FilterIndex,
    profile: np.ndarray,
    raw: np.ndarray,
    meta: Mapping[str, Any],
    image: np.ndarray,
    input_map: np.ndarray,
    cam: np.ndarray,
    extra: Mapping[str, bytes | str] | None = None,
) -> ExportFiles:
    """Every export file as bytes.

    Parameters
    ----------
    index : FilterIndex
    profile, raw : np.ndarray, shape [F]
        The profile shown and the raw one.
    meta : mapping
        Written as ``filters.json``.
    image : np.ndarray, uint8 [H, W, 3]
        The image the model sees (masks applied).
    input_map, cam : np.ndarray, float [H, W] in [0, 1]
        The maps on screen (current F / boost / percentile; current CAM view).
    extra : mapping, optional
        More files (e.g. ``profile.html`` from the widget tier); str is UTF-8 encoded.
    """
    files: ExportFiles = {
        "profile.csv": profile_csv(index, profile, raw),
        "filters.json": (json.dumps(meta, indent=2) + "\n").encode(),
        "image.png": encode_png(image),
        "input_map.png": encode_png(input_map),
        "overlay.png": encode_png(overlay(image, input_map)),
        "gradcam.png": encode_png(overlay(image, cam)),
    }
    for name, data in (extra or {}).items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"export file names must be plain names, got {name!r}")
        files[name] = data.encode() if isinstance(data, str) else bytes(data)
    return files


def write_files(folder: str | os.PathLike[str], files: Mapping[str, bytes]) -> list[Path]:
    """Write ``files`` into ``folder`` (created); returns their ABSOLUTE paths, in order.

    A file name that is a symbolic link in ``folder`` is refused, never written through
    (``O_NOFOLLOW``): a link planted there must not redirect the export to another file.
    """
    out = Path(folder).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    paths = []
    for name, data in files.items():
        path = out / name
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as err:
            if path.is_symlink():
                raise PermissionError(f"{path} is a symbolic link; refusing to export through it "
                                      "(remove it or choose another folder)") from err
            raise
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        paths.append(path)
    return paths


def zip_files(files: Mapping[str, bytes]) -> bytes:
    """A zip archive (deflated, built in memory) holding ``files`` at its top level."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
