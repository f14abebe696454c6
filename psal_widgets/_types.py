"""Option aliases and plain result containers shared by every layer (NumPy only, no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

#: How a raw profile is turned into the ranked one. ``std``: (s - mu) / sigma (default);
#: ``raw``: mean |grad| per filter; ``norm``: s / mu; ``signed``: mean grad per filter, no abs.
Mode = Literal["std", "raw", "norm", "signed"]
MODES: tuple[str, ...] = ("std", "raw", "norm", "signed")

#: Per-sample strategy for profiles of a batch: a plain per-image loop, ``torch.func.vmap``, or
#: ``hooks`` (one batched forward + backward, per-sample conv weight gradients from module hooks);
#: ``auto`` picks the fastest exact one for the device (hooks where the model's convs allow it).
Strategy = Literal["auto", "loop", "vmap", "hooks"]

#: CAM methods offered through the ``grad-cam`` package.
CamMethod = Literal["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"]
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam")


@dataclass(frozen=True)
class SortedProfile:
    """The paper's Fig. 1/2 layout of one profile: each layer sorted descending, layers left to right.

    Every layer gets the same width (1.0) on the x axis whatever its number of filters.

    Attributes
    ----------
    x : np.ndarray, shape [F]
        Horizontal position; layer ``i`` spans ``[i, i + 1)``.
    y : np.ndarray, shape [F]
        Saliency values, sorted descending inside each layer.
    filter_id : np.ndarray, shape [F]
        Flat filter id of each point.
    layer : np.ndarray, shape [F]
        Layer position (0-based) of each point.
    rank : np.ndarray, shape [F]
        Global rank of each point's value (0 = most salient filter of the model).
    layer_names : list[str]
        Name of each layer, length L.
    """

    x: np.ndarray
    y: np.ndarray
    filter_id: np.ndarray
    layer: np.ndarray
    rank: np.ndarray
    layer_names: list[str] = field(default_factory=list)
