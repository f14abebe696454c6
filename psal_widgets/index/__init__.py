"""The profile index (``psal index``): every image's raw profile, prediction and features, on disk.

An index folder holds

- ``profiles.npy``: raw profiles (mean |∂L/∂θ| per filter, loss against the TRUE label),
  float16 [N, F], memory-mappable (float16 quantizes at ≈ 2e-4·σ);
- ``features.npy``: the input of the classifier's final linear layer, float16 [N, D] (absent
  when the model has no linear classifier);
- ``table.csv``: one row per image: ``file`` (relative to the dataset root), ``label``,
  ``pred``, ``correct``, ``loss`` (cross-entropy against the label), ``top1..top5`` and
  ``prob1..prob5`` (softmax), ``label_name``, ``pred_name``;
- ``meta.json``: model, weights checksum, preprocessing, filter layout, n, dataset, created,
  package version, the size and sha256 of every file, and ``skipped``: the images that could
  not be read (``{"file", "reason"}``; they have no row, see :meth:`ProfileIndex.usable`).

It is computed WITHOUT statistics, so it can be built on held-out data and standardized later
against any statistics of the same model (:meth:`ProfileIndex.standardized`).

Built by several processes (``torchrun ... -m psal_widgets.cli index``, :mod:`psal_widgets.distributed`),
an index is a folder of shards: ``shard-0000/``, ``shard-0001/``... each an index of the format
above over one rank's contiguous block of the dataset (skipped images of that block in its own
``meta.json``), and ``manifest.json`` (format ``psal-profile-index-shards/1``): the whole
index's metadata under ``"index"`` (the keys of a single ``meta.json``, except ``files``: model,
weights, layout, n, files and root hashes of the whole dataset, accuracy, ``skipped``...),
``world_size``, and ``shards``: for each, its ``folder``, ``rank``, dataset rows ``start``/``stop``,
row count ``n`` and the ``meta_sha256`` of its ``meta.json`` (which holds the checksums of its
files). A block with no readable image has ``folder`` null. :meth:`ProfileIndex.open` reads
such a folder as one index, rows in dataset order (:attr:`ProfileIndex.raw` is then a
:class:`~psal_widgets.sharded_rows.ShardedRows` over the shards' memmaps).

Reliability: the build writes into a hidden temporary folder next to the target
(``.NAME.partial``) and renames it into place at the end, so a half-written index is never read
as complete. Every ``checkpoint_every`` batches it flushes the arrays and records the rows done
in ``progress.json`` (written atomically); the same command run again continues from there and
finishes with files identical, byte for byte, to an uninterrupted run (each image's profile is
computed on its own, so batch boundaries do not matter). A lock file stops two builds of the
same folder from interleaving (:mod:`psal_widgets.atomic`, shared with ``psal stats``). Readers
check that row counts and file sizes agree with the metadata (``verify=True`` also checks the
sha256). An image that cannot be read is skipped with a warning and recorded (``strict=True``
stops instead).

The package, one concept a module: :mod:`~psal_widgets.index.common` (file names, formats,
:class:`IndexError_`, hashing helpers), :mod:`~psal_widgets.index.reader` (:class:`ProfileIndex`),
:mod:`~psal_widgets.index.builder` (:func:`build_index`: checkpoints, shards, the manifest) and
:mod:`~psal_widgets.index.locate` (:func:`index_for`: the index of a dataset, found in the user
cache or built there). Everything public is imported here: import it from ``psal_widgets.index``.

>>> idx = ProfileIndex.open("psal_out/index")
>>> z = idx.standardized(explainer.stats)            # float32 [N, F]
>>> wrong = np.flatnonzero(~idx.correct)
"""
from __future__ import annotations

from .builder import build_index
from .common import INDEX_FORMAT, MANIFEST_FORMAT, IndexError_, is_index_folder
from .common import MANIFEST_FILE as MANIFEST_FILE  # importable from here, as before; not in __all__
from .locate import default_index_dir, index_for
from .reader import ProfileIndex

__all__ = ["INDEX_FORMAT", "MANIFEST_FORMAT", "IndexError_", "ProfileIndex", "build_index", "default_index_dir",
           "index_for", "is_index_folder"]
