"""Helper objects on disk: filter statistics as safetensors plus a JSON metadata file.

A helper-objects folder holds ``stats.safetensors`` (``mean``, ``std``: float64 [F]; and, when
computed here, per-sample inference results ``sample_*`` of length n) and ``meta.json``
(model id and weights checksum, preprocessing, filter-layout checksum, n, dataset, created,
``checksums``: the size and sha256 of each tensor file).

The folder is written as a unit (a hidden temporary folder renamed into place,
:mod:`psal_widgets.atomic`): a crash mid-write leaves the previous folder as it was. Readers
check the checksums (a folder written before they existed has none and is accepted) and that
the sample counts of all files agree.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .atomic import check_files, file_records, swap_into_place, temp_dir_beside, write_text_atomic
from .checks import stats_problem
from .kernels.filters import FilterIndex
from .kernels.stats import FilterStats

__all__ = [
    "FORMAT",
    "SampleResults",
    "StatsError",
    "custom_stats_name",
    "default_stats_dir",
    "find_stats_dir",
    "import_legacy",
    "load_stats",
    "save_stats",
]

FORMAT = "psal-helper-objects/1"
STATS_FILE = "stats.safetensors"
PROFILES_FILE = "profiles.safetensors"
META_FILE = "meta.json"


class StatsError(ValueError):
    """Statistics missing, unreadable, or belonging to another model; the message says the fix."""


@dataclass(frozen=True)
class SampleResults:
    """Per-sample inference results over the statistics' dataset, arrays of shape [n]."""

    label: np.ndarray
    pred: np.ndarray
    prob_label: np.ndarray
    prob_pred: np.ndarray
    files: list[str]
    #: Raw profiles of the samples, float16 [n, F], when kept for neighbour search.
    profiles: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        return self.label == self.pred


def repo_helper_objects() -> Path:
    """The project's ``helper_objects/`` folder (next to the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "helper_objects"


def user_helper_objects() -> Path:
    """Per-user folder for statistics that ``psal stats`` writes by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "psal_widgets" / "helper_objects"


def _safe_name(model_name: str) -> str:
    return model_name.replace(":", "_").replace("/", "_")


def custom_stats_name(model_name: str, weights_id: str) -> str:
    """Folder name of statistics for custom weights: the model's name and the weights
    fingerprint (``efficientnet_lite0@579344248a93e230``), so they never replace the model's own."""
    return f"{_safe_name(model_name)}@{_safe_name(weights_id.split(':', 1)[-1])}"


def stats_dirs(model_name: str) -> list[Path]:
    """Every existing statistics folder for a model, in lookup order: $PSAL_HELPER_OBJECTS,
    the repo's ``helper_objects/``, the user's cache; in each, ``<model>`` then the folders of
    custom weights ``<model>@<fingerprint>`` (sorted)."""
    roots = [Path(p) for p in os.environ.get("PSAL_HELPER_OBJECTS", "").split(os.pathsep) if p]
    roots += [repo_helper_objects(), user_helper_objects()]
    name = _safe_name(model_name)
    found: list[Path] = []
    for root in roots:
        candidates = [root / name]
        if root.is_dir():
            candidates += sorted(p for p in root.glob(f"{name}@*") if p.is_dir())
        for candidate in candidates:
            if (candidate / STATS_FILE).is_file() and candidate not in found:
                found.append(candidate)
    return found


def _weights_match(stored: str | None, weights_id: str | None) -> bool:
    """Whether statistics made with ``stored`` weights serve a model with ``weights_id``
    (unknown or random weights on either side: layout alone decides, as in :func:`load_stats`)."""
    if not stored or not weights_id or stored.startswith("random:") or weights_id.startswith("random:"):
        return True
    return stored == weights_id


def find_stats_dir(model_name: str, weights_id: str | None = None) -> Path | None:
    """The statistics folder for a model and its weights, or None when there is none.

    Folders whose recorded weights fingerprint differs from ``weights_id`` are skipped; one
    recorded for exactly these weights wins over one without a fingerprint (legacy imports).

    Raises
    ------
    StatsError
        Statistics of this model exist, but only for other weights: the message names them and
        the command that computes statistics for these weights.
    """
    found = stats_dirs(model_name)
    if weights_id is None:
        return found[0] if found else None
    exact, loose, other = [], [], []
    for folder in found:
        try:
            stored = json.loads((folder / META_FILE).read_text()).get("weights_id")
        except (OSError, ValueError):
            stored = None
        if stored and stored == weights_id:
            exact.append(folder)
        elif _weights_match(stored, weights_id):
            loose.append(folder)
        else:
            other.append(folder)
    if exact or loose:
        return (exact or loose)[0]
    if other:
        raise StatsError(
            f"the statistics of {model_name} found ({', '.join(p.name for p in other)}) were computed with "
            f"other weights than this model's ({weights_id}); compute them for these weights with "
            "`psal stats --data DIR --weights FILE` (they are found automatically afterwards), or pass --stats DIR"
        )
    return None


def default_stats_dir(model_name: str, weights_id: str | None = None) -> Path | None:
    """First existing statistics folder for a model (see :func:`stats_dirs`); with
    ``weights_id``, the first whose weights match (:func:`find_stats_dir`)."""
    return find_stats_dir(model_name, weights_id)


def layout_meta(index: FilterIndex) -> dict[str, Any]:
    return {"checksum": index.checksum(), "n_filters": index.n_filters, "n_layers": len(index.layers)}


def save_stats(
    out_dir: str | os.PathLike[str],
    stats: FilterStats,
    *,
    samples: SampleResults | None = None,
) -> Path:
    """Write ``stats.safetensors`` and ``meta.json`` (and ``profiles.safetensors``) as one unit.

    Everything is written into a hidden temporary folder beside ``out_dir`` and renamed into
    place at the end: a crash before that leaves an existing ``out_dir`` untouched.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    check_replaceable(out)
    tensors = {"mean": stats.mean.to(torch.float64).contiguous(), "std": stats.std.to(torch.float64).contiguous()}
    meta = dict(stats.meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    # One metadata key only: safetensors writes several in an arbitrary order, and the file's
    # bytes must not depend on it (a resumed `psal stats` ends byte-identical to a plain run).
    header = {"format": FORMAT}
    if samples is not None:
        tensors["sample_label"] = torch.as_tensor(samples.label, dtype=torch.int64)
        tensors["sample_pred"] = torch.as_tensor(samples.pred, dtype=torch.int64)
        tensors["sample_prob_label"] = torch.as_tensor(samples.prob_label, dtype=torch.float32)
        tensors["sample_prob_pred"] = torch.as_tensor(samples.prob_pred, dtype=torch.float32)
        meta["files"] = list(samples.files)
        meta["accuracy"] = float(np.mean(samples.correct)) if len(samples.files) else None
    tmp = temp_dir_beside(out)
    try:
        save_file(tensors, str(tmp / STATS_FILE), metadata=header)
        written = [STATS_FILE]
        if samples is not None and samples.profiles is not None:
            # Kept apart: large ([n, F] float16) and only needed for nearest-neighbour search.
            save_file({"raw": torch.as_tensor(samples.profiles).contiguous()}, str(tmp / PROFILES_FILE))
            meta["profiles"] = PROFILES_FILE
            written.append(PROFILES_FILE)
        meta["checksums"] = file_records(tmp, written)
        _write_meta(tmp / META_FILE, meta)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_replaceable(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a folder holding anything but helper objects: the
    unit write replaces the whole folder, and must never delete a user's other files."""
    if out.exists() and not out.is_dir():
        raise StatsError(f"--out {out} is a file, not a folder: choose a folder for the statistics")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in (STATS_FILE, PROFILES_FILE, META_FILE))
        if other:
            raise StatsError(
                f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                "statistics replace the whole folder; choose a new or empty folder"
            )


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    # Its own function: tests simulate a crash between the two writes by replacing it.
    write_text_atomic(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _damaged(folder: Path, problem: str) -> StatsError:
    return StatsError(
        f"the statistics in {folder} are damaged or mixed from two runs: {problem}; recompute them with "
        f"`psal stats --data DIR --out {folder.name}` (or restore the folder from a copy)"
    )


def _check_consistent(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Raise :class:`StatsError` unless checksums (when recorded) and sample counts agree."""
    problem = check_files(folder, meta.get("checksums", {}))
    if problem is not None:
        raise _damaged(folder, problem)
    counts: dict[str, int] = {}
    if meta.get("n") is not None and "sample_label" in tensors:
        counts["meta.json n"] = int(meta["n"])
    if "files" in meta and "sample_label" in tensors:
        counts["meta.json files"] = len(meta["files"])
    for name in ("sample_label", "sample_pred", "sample_prob_label", "sample_prob_pred"):
        if name in tensors:
            counts[f"{STATS_FILE} {name}"] = int(tensors[name].shape[0])
    if len(set(counts.values())) > 1:
        raise _damaged(folder, "sample counts disagree (" + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")


def load_stats(
    stats_dir: str | os.PathLike[str],
    *,
    index: FilterIndex | None = None,
    weights_id: str | None = None,
) -> FilterStats:
    """Read statistics and check that they belong to the model.

    Parameters
    ----------
    stats_dir : path
        A helper-objects folder (or its ``stats.safetensors``).
    index : FilterIndex, optional
        The model's filter index; the stored layout must match it.
    weights_id : str, optional
        The model's weights checksum; refused when both are known and differ.

    Raises
    ------
    StatsError
    """
    path = Path(stats_dir)
    folder = path.parent if path.suffix == ".safetensors" else path
    tensor_file = folder / STATS_FILE
    if not tensor_file.is_file():
        raise StatsError(
            f"no statistics at {folder} (expected {STATS_FILE} and {META_FILE}); "
            "compute them with `psal stats --data DIR --out DIR`"
        )
    try:
        tensors = load_file(str(tensor_file))
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    except Exception as err:  # noqa: BLE001 - any reader failure means unusable statistics
        raise StatsError(f"cannot read statistics in {folder}: {err}") from err
    if "mean" not in tensors or "std" not in tensors:
        raise StatsError(f"{tensor_file} has no 'mean'/'std' tensors: not a psal statistics file")
    problem = stats_problem(tensors["mean"], tensors["std"])
    if problem:
        raise StatsError(f"the statistics in {folder} are unusable: {problem}; recompute them with "
                         "`psal stats --data DIR --out DIR`")
    _check_consistent(folder, tensors, meta)
    stats = FilterStats(tensors["mean"].to(torch.float64), tensors["std"].to(torch.float64), meta)
    if index is not None:
        stored = meta.get("layout", {})
        if stats.n_filters != index.n_filters or (
            stored.get("checksum") not in (None, index.checksum())
        ):
            raise StatsError(
                f"the statistics in {folder} were made for {meta.get('model', 'another model')} "
                f"({stats.n_filters} filters, layout {stored.get('checksum', '?')}); this model has "
                f"{index.n_filters} filters (layout {index.checksum()}). Use the statistics of this "
                "model, or compute them with `psal stats --data DIR`"
            )
    stored_weights = meta.get("weights_id")
    if (
        weights_id
        and stored_weights
        and not weights_id.startswith("random:")
        and not stored_weights.startswith("random:")
        and stored_weights != weights_id
    ):
        raise StatsError(
            f"the statistics in {folder} were computed with other weights ({stored_weights}) than "
            f"this model's ({weights_id}); recompute them with `psal stats --data DIR` for these weights"
        )
    return stats


def load_samples(stats_dir: str | os.PathLike[str]) -> SampleResults | None:
    """Per-sample results stored with the statistics, or ``None`` when there are none.

    Raises
    ------
    StatsError
        Files that fail their checksums or whose sample counts disagree.
    """
    folder = Path(stats_dir)
    tensors = load_file(str(folder / STATS_FILE))
    if "sample_label" not in tensors:
        return None
    meta = json.loads((folder / META_FILE).read_text())
    _check_consistent(folder, tensors, meta)
    profiles_path = folder / PROFILES_FILE
    profiles = load_file(str(profiles_path))["raw"].numpy() if profiles_path.is_file() else None
    if profiles is not None and profiles.shape[0] != tensors["sample_label"].shape[0]:
        raise _damaged(folder, f"{PROFILES_FILE} has {profiles.shape[0]} rows for "
                               f"{tensors['sample_label'].shape[0]} samples")
    return SampleResults(
        profiles=profiles,
        label=tensors["sample_label"].numpy(),
        pred=tensors["sample_pred"].numpy(),
        prob_label=tensors["sample_prob_label"].numpy(),
        prob_pred=tensors["sample_prob_pred"].numpy(),
        files=list(meta.get("files", [])),
    )


def import_legacy(
    path: str | os.PathLike[str],
    *,
    index: FilterIndex,
    model_name: str,
    out_dir: str | os.PathLike[str],
) -> Path:
    """Convert an original-code statistics file (``{'mean', 'std'}`` tensors) to our format.

    The file is read with ``weights_only=True`` (no code is unpickled) and its length checked
    against the model's filter layout before anything is written.
    """
    src = Path(path)
    if not src.is_file():
        raise StatsError(f"legacy statistics file not found: {src}")
    try:
        data = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        from .models import torch_load_problem  # the same words as for a weights file

        raise StatsError(f"cannot read {src} as a torch file of tensors: {torch_load_problem(err)}") from err
    if not isinstance(data, dict) or not {"mean", "std"} <= set(data):
        raise StatsError(f"{src} is not a legacy statistics file: expected a dict with 'mean' and 'std'")
    mean = torch.as_tensor(data["mean"]).detach().to(torch.float64).reshape(-1).clone()
    std = torch.as_tensor(data["std"]).detach().to(torch.float64).reshape(-1).clone()
    if mean.numel() != index.n_filters or std.numel() != index.n_filters:
        raise StatsError(
            f"{src} holds {mean.numel()} filters but {model_name} has {index.n_filters}: "
            "it belongs to another architecture"
        )
    problem = stats_problem(mean, std)
    if problem:  # checked before anything is written
        raise StatsError(f"{src} is not usable as statistics: {problem}")
    meta = {
        "model": model_name,
        "weights_id": None,
        "layout": layout_meta(index),
        "n": None,
        "dataset": "ImageNet validation set (original code's statistics)",
        "source": f"imported from {src.name}",
        "dead_filters": int((std <= 1e-14).sum()),
    }
    return save_stats(out_dir, FilterStats(mean, std, meta))
