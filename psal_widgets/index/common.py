"""Shared pieces of the profile index: file names, formats, errors and hashing helpers.

The constants name the files of an index folder and its formats (described in
:mod:`psal_widgets.index`); :class:`IndexError_` is what every part of the index raises; the
helpers hash a dataset and a model into the keys that say whether an index, or an unfinished
build, belongs to them. Used by :mod:`~psal_widgets.index.reader`,
:mod:`~psal_widgets.index.builder` and :mod:`~psal_widgets.index.locate`; imports none of them.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..data import LabeledImages
    from ..models import LoadedModel

INDEX_FORMAT = "psal-profile-index/1"
PROFILES_FILE = "profiles.npy"
FEATURES_FILE = "features.npy"
TABLE_FILE = "table.csv"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "psal-profile-index-shards/1"
#: Shard folders of a sharded index: ``shard-0000`` ... (the rank, four digits or more).
SHARD_PREFIX = "shard-"
# Working columns of a build in progress; turned into table.csv at the end.
_COLUMNS = {"top5": (np.int64, 5), "top5_prob": (np.float32, 5), "loss": (np.float32, None)}
_TABLE_FIELDS = ["file", "label", "pred", "correct", "loss", *(f"top{i}" for i in range(1, 6)),
                 *(f"prob{i}" for i in range(1, 6)), "label_name", "pred_name"]


class IndexError_(ValueError):
    """A profile index is missing, damaged, or belongs to another model or dataset; the message
    says the fix. (Named with a trailing underscore so it never shadows the builtin.)"""


class _NothingReadable(IndexError_):
    """No image of the data could be read; ``skipped`` lists them (a shard may be left empty)."""

    def __init__(self, message: str, skipped: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.skipped = skipped


def is_index_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a complete profile index, single (``meta.json``) or sharded
    (``manifest.json``); its files are not checked here (:meth:`ProfileIndex.open` does)."""
    f = Path(folder)
    return (f / META_FILE).is_file() or (f / MANIFEST_FILE).is_file()


# -- helpers -----------------------------------------------------------------------------------
def _short_hash(*parts: str) -> str:
    digest = hashlib.sha256()
    for p in parts:
        digest.update(p.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _files_hash(files: Sequence[str], labels: Sequence[int]) -> str:
    return _short_hash(*(f"{f}\t{int(v)}" for f, v in zip(files, labels, strict=True)))


def _root_hash(root: Path) -> str:
    # A hash, not the path: metadata carries no absolute path of this machine.
    return _short_hash(str(Path(root).resolve()))


def _safe_name(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def _first_readable(ds: LabeledImages) -> Any:
    """The first image of ``ds`` that can be read (preprocessed), to probe the model's classifier."""
    from ..tolerant import TolerantImages

    items = TolerantImages(ds)
    skipped = []
    for i in range(len(ds)):
        image, _, reason = items[i]
        if not reason:
            return image
        skipped.append({"file": items.relative[i], "reason": reason})
    raise _NothingReadable(f"none of the {len(ds)} images of {ds.description} could be read", skipped)


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so that keys compare equal."""
    return json.loads(json.dumps(value))


def _model_key(model: LoadedModel, layout_checksum: str) -> dict[str, Any]:
    return _json({
        "model": model.name,
        "weights_id": model.weights_id,
        "layout_checksum": layout_checksum,
        "preprocess": model.preprocess.to_dict(),
    })
