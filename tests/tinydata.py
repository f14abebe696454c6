"""A tiny labelled image set and a tiny classifier wrapped as a model, for index and experiment tests."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import make_tiny

CLASSES = ["ant", "bee", "cat"]


def photo(seed: int, size: int = 40) -> Image.Image:
    """A smooth random RGB picture (colour gradients + noise), different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(-1, 1, size=(3, 3))
    base = np.stack([a[0] * xx + a[1] * yy + a[2], b[0] * xx * yy + b[1], c[0] * np.sin(6 * xx * c[1]) + c[2]], axis=-1)
    img = 127 + 80 * base + rng.normal(0, 20, base.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_dataset_csv(folder: Path, n: int = 10, *, seed: int = 0) -> Path:
    """``n`` generated PNG images under ``folder/images`` and ``folder/labels.csv`` (labels cycle)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = [["file", "label"]]
    for i in range(n):
        name = f"images/img_{i:03d}.png"
        photo(seed * 1000 + i).save(folder / name)
        rows.append([name, CLASSES[i % len(CLASSES)]])
    path = folder / "labels.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def tiny_model(seed: int = 0):
    """The conftest TinyNet as a LoadedModel (3 classes, 32-pixel crops)."""
    from psal_widgets.data import Preprocess
    from psal_widgets.models import from_module

    return from_module(make_tiny(seed), name="tiny", preprocess=Preprocess(resize=36, crop=32), labels=CLASSES,
                       device="cpu")


def tiny_setup(folder: Path, n: int = 10, *, seed: int = 0):
    """(explainer with statistics over the data, dataset, csv path): statistics saved in ``folder/stats``."""
    from psal_widgets.data import open_dataset
    from psal_widgets.explainer import Explainer
    from psal_widgets.store import save_stats
    from psal_widgets.validation import compute_stats

    csv_path = make_dataset_csv(folder / "data", n, seed=seed)
    model = tiny_model(seed)
    ds = open_dataset(csv_path, labels=model.labels, preprocess=model.preprocess)
    stats, _ = compute_stats(model, ds, batch_size=4, progress=False)
    save_stats(folder / "stats", stats)
    return Explainer(model, stats=folder / "stats"), ds, csv_path


_VAL_INDEX: dict[int, tuple[object, object]] = {}


def val800_subset(explainer, limit: int = 32):
    """(dataset, index folder) of ``limit`` evenly spaced shared validation images for the default
    model; the index is built once per test process in a temporary folder removed at exit."""
    import atexit
    import shutil
    import tempfile

    from psal_widgets.data import open_dataset
    from psal_widgets.index import build_index

    from .conftest import VAL800

    if limit not in _VAL_INDEX:
        model = explainer.model
        ds = open_dataset(VAL800 / "labels.csv", labels=model.labels, preprocess=model.preprocess, limit=limit)
        folder = Path(tempfile.mkdtemp(prefix="psal-val-index-"))
        atexit.register(shutil.rmtree, folder, True)
        build_index(model, ds, folder / "idx", batch_size=8, progress=False)
        _VAL_INDEX[limit] = (ds, folder / "idx")
    return _VAL_INDEX[limit]
