"""A tiny seeded model wrapped as an Explainer, with statistics and a small generated dataset,
for fast experiment tests (no real model, no shared data)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from psal_widgets.data import Preprocess, open_dataset
from psal_widgets.experiments import run_experiment
from psal_widgets.explainer import Explainer
from psal_widgets.kernels.profiles import filter_profiles
from psal_widgets.kernels.stats import FilterStats
from psal_widgets.labels import LabelSet
from psal_widgets.models import LoadedModel

from .conftest import make_tiny

SMALL = Preprocess(resize=20, crop=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def write_images(folder: Path, n: int = 8, *, seed: int = 0) -> Path:
    """``n`` smooth random RGB pictures with labels 0..2 cycling; returns the CSV path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [["file", "label"]]
    yy, xx = np.mgrid[0:24, 0:24]
    for i in range(n):
        base = np.stack([xx * rng.uniform(2, 10), yy * rng.uniform(2, 10), (xx + yy) * rng.uniform(1, 5)], axis=-1)
        img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img, "RGB").save(folder / f"img{i}.png")
        rows.append([f"img{i}.png", str(i % 3)])
    path = folder / "labels.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def tiny_explainer(csv_path: Path, *, seed: int = 0) -> Explainer:
    """The conftest's TinyNet as an Explainer, statistics computed over the images of ``csv_path``."""
    labels = LabelSet(("a", "b", "c"))
    model = LoadedModel(name="tiny", module=make_tiny(seed), preprocess=SMALL, labels=labels,
                        weights_id=f"random:seed={seed}", device=torch.device("cpu"))
    ds = open_dataset(csv_path, labels=labels, preprocess=SMALL)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    raw = filter_profiles(model.module, x, ds.labels, mode="raw").raw.double()
    stats = FilterStats(raw.mean(0), raw.std(0), meta={"dataset": "generated", "n": len(ds)})
    return Explainer(model, stats=stats)


def run_tiny(name: str, tmp_path: Path, *, n: int = 8, **options):
    """Run experiment ``name`` on the tiny model and ``n`` generated images; returns (result, out, explainer)."""
    csv_path = write_images(tmp_path / "data", n)
    ex = tiny_explainer(csv_path)
    out = tmp_path / "out"
    res = run_experiment(name, data=csv_path, explainer=ex, out=out, progress=False, **options)
    assert json.loads((out / "result.json").read_text())["experiment"] == name
    return res, out, ex
