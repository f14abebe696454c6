"""psal_widgets: an interactive explorer for parameter-space saliency.

Which convolutional filters malfunction on an image (per-filter mean |dL/dθ|, standardized
against a validation set), and which pixels make them malfunction. Levin et al., "Where do
Models go Wrong? Parameter-Space Saliency Maps for Explainability", NeurIPS 2022.

Names are imported lazily so that ``import psal_widgets.viz`` never pulls in torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Explainer": "psal_widgets.explainer",
    "Analysis": "psal_widgets.explainer",
    "load_model": "psal_widgets.models",
    "from_module": "psal_widgets.models",
    "DEFAULT_MODEL": "psal_widgets.models",
    "compute_stats": "psal_widgets.validation",
    "load_stats": "psal_widgets.store",
    "save_stats": "psal_widgets.store",
    "open_dataset": "psal_widgets.data",
    "load_image": "psal_widgets.data",
    "Preprocess": "psal_widgets.data",
    "imagenet_labels": "psal_widgets.labels",
    "Explorer": "psal_widgets.widgets",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'psal_widgets' has no attribute {name!r}")
    return getattr(import_module(module), name)
