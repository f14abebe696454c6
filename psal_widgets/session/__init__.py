"""The explorer's middle tier: one model, one image, one label, its masks and the boosted set F.

Widgets never import torch; they talk to a :class:`Session` (``core.py``), which calls the
``Explainer`` / ``Analysis`` API and returns NumPy arrays and the typed results of
:mod:`.types` (see ``docs/session-contract.md``). No module of this package imports torch.

Modules, one concept each: ``core`` (the facade: lock, state, F), ``settings`` (k, boost,
percentile), ``state`` (the immutable per-analysis state), ``selection`` (F and its mode),
``resolve`` (image and label, shared with ``Explainer.analyze``), ``cache`` (one LRU cache for
maps, gradients and CAMs), ``masks`` (strokes and the Fig. 7c report), ``prune``, ``dataset``
(the profile index: browser rows, error table, neighbours, Fig. 2, the 2-D map), ``export``
(files and zip), ``classes`` and ``types``.

``Session`` is imported lazily: ``explainer.py`` uses :mod:`.resolve`, and the facade imports
the explainer, so loading the facade eagerly here would make the two modules import each other.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..viz.masks import Stroke
from .errors import SessionError
from .settings import Settings
from .types import (
    BrushReport,
    CamTarget,
    CamView,
    ClassProb,
    ClassRef,
    DatasetRow,
    DatasetSummary,
    FilterChange,
    FilterInfo,
    FilterMode,
    NeighbourRow,
    OnlyFilter,
    PredictionSummary,
    PruneChoice,
    PruneReport,
)

if TYPE_CHECKING:
    from .core import Session

__all__ = [
    "BrushReport",
    "CamTarget",
    "CamView",
    "ClassProb",
    "ClassRef",
    "DatasetRow",
    "DatasetSummary",
    "FilterChange",
    "FilterInfo",
    "FilterMode",
    "NeighbourRow",
    "OnlyFilter",
    "PredictionSummary",
    "PruneChoice",
    "PruneReport",
    "Session",
    "SessionError",
    "Settings",
    "Stroke",
]


def __getattr__(name: str) -> Any:
    if name == "Session":
        return import_module(".core", __name__).Session
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
