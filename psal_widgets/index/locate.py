"""Finding or building the profile index of a dataset: :func:`index_for`.

An index given by path is opened and checked against the model and the dataset (or built there);
otherwise any index in the user cache (:func:`index_root`) that covers the dataset is used, else
one is built at :func:`default_index_dir`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .builder import build_index
from .common import IndexError_, _files_hash, _root_hash, _safe_name, _short_hash, is_index_folder
from .reader import ProfileIndex

if TYPE_CHECKING:
    from ..data import LabeledImages
    from ..explainer import Explainer
    from ..models import LoadedModel


def index_root(model_name: str) -> Path:
    """The user cache of indexes of one model."""
    from ..store import user_helper_objects

    return user_helper_objects().parent / "index" / _safe_name(model_name)


def default_index_dir(model: LoadedModel, dataset: LabeledImages) -> Path:
    """Where :func:`index_for` builds the index of ``dataset`` in the user cache: a short hash of
    the dataset's root folder, its files and labels, and the weights."""
    files = dataset.relative_files()
    return index_root(model.name) / _short_hash(_root_hash(dataset.root), _files_hash(files, dataset.labels),
                                                model.weights_id)


def index_for(
    explainer: Explainer,
    dataset: LabeledImages,
    *,
    path: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> ProfileIndex:
    """The profile index of ``dataset`` for the explainer's model, row ``i`` = item ``i`` of
    ``index.usable(dataset)`` (the dataset itself unless some images were skipped as unreadable:
    callers that read images by row must use that dataset).

    Parameters
    ----------
    explainer : Explainer
    dataset : LabeledImages
    path : path, optional
        An index folder: opened and checked (same model, weights, preprocessing; holds every file
        of the dataset with the same labels), or built there when it does not exist yet (an
        unfinished build there is resumed).
        Default: any index in the user cache that covers the dataset, else a new one built there
        (see :func:`default_index_dir`).
    batch_size, progress
        For a build.

    Raises
    ------
    IndexError_
        The index at ``path`` belongs to another model or does not cover the dataset.
    """
    model = explainer.model
    if path is not None:
        folder = Path(path)
        if not is_index_folder(folder):
            idx = build_index(model, dataset, folder, batch_size=batch_size, progress=progress)
            return idx.aligned(idx.usable(dataset))
        idx = ProfileIndex.open(folder)
        idx.check_model(model)
        return idx.aligned(idx.usable(dataset))
    root = index_root(model.name)
    if root.is_dir():
        for candidate in sorted(p for p in root.iterdir() if is_index_folder(p)):
            try:
                idx = ProfileIndex.open(candidate)
                idx.check_model(model)
                # Same folder required: two datasets can share relative names and labels.
                return idx.aligned(idx.usable(dataset), same_root=True)
            except IndexError_:
                continue
    idx = build_index(model, dataset, default_index_dir(model, dataset), batch_size=batch_size, progress=progress)
    return idx.aligned(idx.usable(dataset))
