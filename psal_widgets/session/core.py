"""The :class:`Session` facade: one model, one image state, the boosted set F, under one lock.

Widgets never import torch; they talk to a Session, which calls the ``Explainer`` / ``Analysis``
API (where all torch compute lives) and returns only NumPy arrays and plain Python values
(see ``docs/session-contract.md``). This module holds the lock, the state and F; the concepts
live beside it: :mod:`.settings` (k, boost, percentile), :mod:`.state`, :mod:`.selection` (F and
its mode), :mod:`.resolve` (image and label), :mod:`.cache`, :mod:`.masks`, :mod:`.prune`,
:mod:`.dataset`, :mod:`.export` and :mod:`.types` (the result types).

Costs, so that clicks stay cheap: the model and its statistics load once; each (image, label,
mask) state runs ONE analysis (forward + differentiable profile, ~0.5 s for the default model
on a CPU) whose graph is kept, so a new filter set costs one more backward pass (~0.45 s) and a
filter set seen before costs nothing (maps are cached). Every public method and property takes
one re-entrant lock: the widget tier may call from a worker thread.

>>> s = Session()                          # default model, first image of raw_images/
>>> s.toggle_filter(17); heat = s.input_map()
>>> s.brush(Stroke(kind="box", points=[(50, 60), (125, 105)]))["after"]["prob_label"]
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .._types import CAM_METHODS, SortedProfile
from ..data import LabeledImages
from ..explainer import Analysis, Explainer
from ..kernels.device import same_device
from ..kernels.interventions import Recipe
from ..kernels.stats import FilterStats
from ..kernels.threads import single_threaded
from ..labels import LabelSet
from ..models import DEFAULT_MODEL, LoadedModel
from ..viz.heatmap import overlay, saliency_heatmap
from ..viz.masks import Fill, Stroke
from . import export as _export
from .basis import BasisPlan, plan_candidates
from .cache import LRUCache
from .classes import class_ref, top_classes
from .dataset import DatasetBrowser, MapMethod, SortKey, no_dataset
from .errors import SessionError
from .masks import compare, paint, top_percent_stroke
from .prune import choose_filters, prune_report
from .resolve import ImageSource, LabelSource, choose_label, first_raw_image, known_label_index, read_image
from .selection import Selection, check_filter_mode, check_ids
from .settings import Settings
from .state import State, frozen
from .types import (
    BasisStatus,
    BrushReport,
    CamTarget,
    CamView,
    ClassProb,
    DatasetRow,
    DatasetSummary,
    FilterInfo,
    FilterMode,
    NeighbourRow,
    OnlyFilter,
    PruneChoice,
    PruneReport,
)

__all__ = ["Session"]

#: Maps, gradients and CAMs kept per session (a few filter sets toggled back and forth).
CACHE_SIZE = 48

_F = TypeVar("_F", bound=Callable[..., Any])


class _Unset:
    """Marks a keyword left out (None is a meaningful value for the CAM view)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _locked(method: _F) -> _F:
    """Run ``method`` under the session's lock; refuse once the session is closed."""

    @functools.wraps(method)
    def wrapper(self: Session, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._closed:
                raise SessionError(
                    "session closed: its model graph and caches were released; create a new Session"
                )
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _explainer_for(
    model: str | LoadedModel | Explainer | None,
    *,
    device: str | None,
    stats: FilterStats | str | os.PathLike[str] | None,
    weights: str | os.PathLike[str] | None,
) -> Explainer:
    """The session's Explainer; a caller's Explainer or LoadedModel is never moved."""
    if isinstance(model, (Explainer, LoadedModel)):
        kind = type(model).__name__
        if weights is not None:
            raise SessionError(
                f"weights= applies to a model name; this {kind} is already loaded with its weights"
            )
        actual = model.device if isinstance(model, LoadedModel) else model.model.device
        if device is not None and not same_device(actual, device):
            raise SessionError(
                f"the {kind} lives on {actual} but device={device!r} was asked for: a Session "
                f"never moves a caller's model; build the {kind} on {device!r} or leave device= out"
            )
        return model if isinstance(model, Explainer) else Explainer(model, stats=stats)
    return Explainer(
        model if model is not None else DEFAULT_MODEL, stats=stats, device=device, weights=weights
    )


class Session:
    """State and computations of the explorer for one model.

    Parameters
    ----------
    model : str, LoadedModel, Explainer or None
        Model name (default: the embedded EfficientNet-Lite0), a loaded model, or a ready
        Explainer (its statistics are used). A given model stays on its device.
    data : path, optional
        A labelled dataset (CSV ``file,label`` or folder, see :func:`open_dataset`): enables the
        dataset browser, the dataset view and neighbours, all read from the dataset's profile
        index (``psal index``). Without ``index=`` the index is looked up in the user cache and,
        when none covers the dataset, BUILT HERE, during construction (one backward pass per
        image: about 1-2 minutes for 800 images with the default model on a laptop CPU; the
        explorer builds its session on its worker thread). Build it ahead with
        ``psal index --data PATH --out DIR`` and pass ``index=DIR`` to start at once.
    image : path, bytes or PIL image, optional
        Default: the first file of ``raw_images/``.
    label : int or str, optional
        Class index, WordNet id or name; default the known label, else the prediction.
    device : str, optional
        Where to load a named model. With a given Explainer or LoadedModel it must name the
        device the model is on (SessionError otherwise: nothing is moved).
    stats : FilterStats, path, "auto" or None
        Validation statistics for the standardized profile (when ``model`` is not an
        Explainer); ``"auto"``: the model's own helper objects.
    index : path, optional
        The profile-index folder of ``data`` (``psal index --out DIR``); default the
        ``PSAL_INDEX`` environment variable, else the user cache (see ``data``). A folder that
        does not exist yet is where the index is built.
    data_stats : None
        Removed: per-sample helper objects (``psal stats --profiles``) are no longer read; a
        value raises :class:`SessionError` naming the replacement (``index=``).
    weights : path, optional
        Weights file of a named model (see :func:`psal_widgets.models.load_model`).
    k, boost, percentile : int, float, float
        Initial top-k, boost factor and map threshold percentile (see :class:`Settings`).
    """

    cam_methods: tuple[str, ...] = CAM_METHODS

    def __init__(
        self,
        model: str | LoadedModel | Explainer | None = DEFAULT_MODEL,
        data: str | os.PathLike[str] | None = None,
        image: ImageSource | None = None,
        label: int | str | None = None,
        device: str | None = None,
        *,
        stats: FilterStats | str | os.PathLike[str] | None = "auto",
        index: str | os.PathLike[str] | None = None,
        data_stats: str | os.PathLike[str] | None = None,
        weights: str | os.PathLike[str] | None = None,
        k: int = 10,
        boost: float = 100.0,
        percentile: float = 90.0,
        basis_k: int = 32,
        basis_per_layer: int = 1,
    ) -> None:
        self._lock = threading.RLock()
        # Candidates of the instant-map basis (see session/basis.py); basis_k=0 and
        # basis_per_layer=0 turn it off (every map is then one backward pass).
        self._basis_k, self._basis_per_layer = int(basis_k), int(basis_per_layer)
        self._basis_plan: BasisPlan | None = None
        self._closed = False
        self.explainer = _explainer_for(model, device=device, stats=stats, weights=weights)
        self._settings = Settings(self.explainer.index.n_filters, k, boost, percentile)
        self._version = 0
        self._generation = 0
        self._selection = Selection()
        self._cam_view = CamView()
        self._cam_layers: list[str] | None = None
        self._dead: list[int] | None = None
        self._cache: LRUCache[np.ndarray] = LRUCache(CACHE_SIZE)
        self._layouts: LRUCache[SortedProfile] = LRUCache(1)
        self._pruner: Any = None  # a kernels FilterPruner, built on the first prune
        self._data: DatasetBrowser | None = None
        if data_stats is not None:
            raise SessionError(
                "data_stats= is no longer read: the dataset view reads a profile index; build it with "
                "`psal index --data DATA --out DIR` and pass index=DIR (or leave it out to find or build one)"
            )
        if data is not None:
            if index is None:
                index = os.environ.get("PSAL_INDEX") or None
            self._data = DatasetBrowser.open(data, index, explainer=self.explainer)
        with self._lock:
            self._state: State | None = None
            self._install(
                self._load(image if image is not None else first_raw_image(), name=None, label=label),
                new_image=True,
            )

    # -- model-level facts ---------------------------------------------------------------
    @property
    def model(self) -> LoadedModel:
        return self.explainer.model

    @property
    def labels(self) -> LabelSet:
        """The model's classes: ``.names``, ``.search(text)`` for the label picker."""
        return self.explainer.model.labels

    @property
    def n_filters(self) -> int:
        return self.explainer.index.n_filters

    @_locked
    def cam_layers(self) -> list[str]:
        """Conv layer names a CAM can attach to (the default, the last one, at the end)."""
        if self._cam_layers is None:
            self._cam_layers = self.explainer.cam_layers()
        return list(self._cam_layers)

    # -- dataset (read-only) ---------------------------------------------------------------
    @property
    def dataset(self) -> LabeledImages | None:
        """The :class:`~psal_widgets.data.LabeledImages` of ``data=``, else None."""
        return None if self._data is None else self._data.dataset

    @property
    def index_dir(self) -> Path | None:
        """The profile-index folder read for ``data=``, else None."""
        return None if self._data is None else self._data.folder

    # -- current state (read-only views) ---------------------------------------------------
    @property
    def _st(self) -> State:
        state = self._state
        if self._closed or state is None:
            raise SessionError("session closed: create a new Session")
        return state

    @property
    @_locked
    def version(self) -> int:
        """Increases on every change of what the explorer shows (map, F, its mode, CAM view)."""
        return self._version

    @property
    @_locked
    def generation(self) -> int:
        """Number of the current image / label / mask state (keys caches; never reused)."""
        return self._st.generation

    @property
    @_locked
    def image_name(self) -> str:
        return self._st.name

    @property
    @_locked
    def image(self) -> np.ndarray:
        """uint8 [H, W, 3]: what the model sees now (masks applied); read-only."""
        return self._st.image

    @property
    @_locked
    def original(self) -> np.ndarray:
        """uint8 [H, W, 3]: the resized and cropped image before masks; read-only."""
        return self._st.original

    @property
    @_locked
    def label(self) -> int:
        return self._st.label

    @property
    @_locked
    def label_name(self) -> str:
        return self.labels.name(self._st.label)

    @property
    @_locked
    def label_source(self) -> LabelSource:
        """``known`` (labels.csv / dataset / ILSVRC file name), ``given`` or ``prediction``."""
        return self._st.label_source

    @property
    @_locked
    def dataset_index(self) -> int | None:
        """Row of ``dataset`` the image came from (``open_dataset_image``), else None."""
        return self._st.dataset_index

    @property
    @_locked
    def masks(self) -> list[Stroke]:
        return list(self._st.masks)

    @property
    @_locked
    def filters(self) -> list[int]:
        """The boosted set F, in the order chosen (a copy; change it with the methods)."""
        return list(self._selection.ids)

    @property
    @_locked
    def filter_mode(self) -> FilterMode:
        """``top-k`` (F follows the profile) or ``custom`` (F picked by hand, kept)."""
        return self._selection.mode

    @property
    @_locked
    def settings(self) -> Settings:
        """k, boost and percentile (immutable; change them with the setters)."""
        return self._settings

    @property
    def k(self) -> int:
        return self.settings.k

    @k.setter
    def k(self, value: int) -> None:
        self.set_k(value)

    @property
    def boost(self) -> float:
        return self.settings.boost

    @boost.setter
    def boost(self, value: float) -> None:
        self.set_boost(value)

    @property
    def percentile(self) -> float:
        return self.settings.percentile

    @percentile.setter
    def percentile(self, value: float) -> None:
        self.set_percentile(value)

    # -- state transitions (callers hold the lock) -----------------------------------------
    def _bump(self) -> None:
        self._version += 1

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _top_k(self, analysis: Analysis) -> list[int]:
        return [int(i) for i in analysis.top_filters(self._settings.k)]

    def _install(self, state: State, *, new_image: bool) -> None:
        """Make ``state`` current, let F follow it (see :meth:`Selection.follow`), release the
        old analysis's graph."""
        old = self._state
        self._state = state
        self._selection = self._selection.follow(self._top_k(state.analysis), new_image=new_image)
        if old is not None and old.analysis is not state.analysis:
            old.analysis.release()
        self._bump()

    def _select(self, selection: Selection) -> list[int]:
        if selection != self._selection:
            self._selection = selection
            self._bump()
        return list(selection.ids)

    def _analyze(self, image: np.ndarray, label: int | None) -> Analysis:
        """One analysis of a display image (uint8 [H, W, 3]) for ``label`` (prediction if None)."""
        return self.explainer.analyze(image, label=label)

    def _load(
        self,
        source: ImageSource,
        *,
        name: str | None,
        label: int | str | None,
        known: int | str | None = None,
        dataset_index: int | None = None,
    ) -> State:
        """Read, preprocess and analyze an image; raises before touching any state."""
        loaded = read_image(source, name=name)
        default = known_label_index(self.labels, path=loaded.path, name=name, known=known)
        choice = choose_label(self.labels, label, default)  # UnknownLabelError propagates
        display = frozen(self.model.preprocess.display(loaded.pil))
        analysis = self._analyze(display, choice.index)
        return State(
            generation=self._next_generation(),
            name=loaded.name,
            original=display,
            image=display,
            label=analysis.label,
            label_source=choice.source,
            default_label=choice.default,
            analysis=analysis,
            dataset_index=dataset_index,
        )

    @_locked
    def set_image(
        self, source: ImageSource, *, name: str | None = None, label: int | str | None = None
    ) -> None:
        """Load a new image (path, encoded bytes or PIL image); masks cleared, F := top-k.

        On :class:`~psal_widgets.data.ImageError` (or an unknown label) the state is unchanged
        and the error is re-raised for the UI to show.
        """
        self._install(self._load(source, name=name, label=label), new_image=True)

    @_locked
    def set_label(self, label: int | str | None) -> None:
        """Study another class (index, WordNet id or name; None: back to the default label).

        The current (masked) image is analyzed again. In ``top-k`` mode F := top-k of the new
        profile; in ``custom`` mode F is kept. Raises
        :class:`~psal_widgets.labels.UnknownLabelError` (with suggestions), state unchanged.
        """
        st = self._st
        choice = choose_label(self.labels, label, st.default_label)
        idx = choice.index
        if idx is None:
            # Back to the prediction of the unmasked image, as when it was loaded.
            idx = int(np.argmax(self.explainer.predict(st.original)))
        analysis = self._analyze(st.image, idx)
        new = dataclasses.replace(
            st,
            generation=self._next_generation(),
            label=analysis.label,
            label_source=choice.source,
            analysis=analysis,
        )
        self._install(new, new_image=False)

    # -- the filter set F --------------------------------------------------------------------
    @_locked
    def set_k(self, k: int) -> None:
        """Set k; F := the top-k filters of the current profile, mode ``top-k``."""
        self._settings = self._settings.replace(k=k)
        self._select(Selection.top_k(self._top_k(self._st.analysis)))

    @_locked
    def reset_filters(self) -> list[int]:
        """F := the top-k filters of the current profile, mode ``top-k``; returns F."""
        return self._select(Selection.top_k(self._top_k(self._st.analysis)))

    @_locked
    def set_filter_mode(self, mode: FilterMode) -> list[int]:
        """``top-k``: F := top-k now and after every change; ``custom``: keep F as it is."""
        if check_filter_mode(mode) == "top-k":
            return self.reset_filters()
        return self._select(self._selection.custom(self._selection.ids))

    @_locked
    def toggle_filter(self, fid: int) -> list[int]:
        """Add ``fid`` to F, or remove it if present (mode ``custom``); returns F."""
        (i,) = check_ids([fid], self.n_filters)
        return self._select(self._selection.toggled(i))

    @_locked
    def add_filters(self, ids: Iterable[int]) -> list[int]:
        """Append filters not yet in F (e.g. a box selection on the chart; mode ``custom``)."""
        return self._select(self._selection.added(check_ids(ids, self.n_filters)))

    @_locked
    def set_filters(self, ids: Iterable[int]) -> list[int]:
        """Replace F (duplicates dropped, order kept; mode ``custom``); returns F."""
        return self._select(self._selection.custom(check_ids(ids, self.n_filters)))

    @_locked
    def set_boost(self, b: float) -> None:
        """Boost factor of the entries of F in the target profile (paper: 100)."""
        new = self._settings.replace(boost=b)
        if new != self._settings:
            self._settings = new
            self._bump()

    @_locked
    def set_percentile(self, p: float) -> None:
        """Lower clipping percentile of the map (paper: 90)."""
        new = self._settings.replace(percentile=p)
        if new != self._settings:
            self._settings = new
            self._bump()

    # -- queries on the current analysis -------------------------------------------------------
    @_locked
    def prediction(self, top: int = 5) -> list[ClassProb]:
        """``[{index, name, prob}]`` of the ``top`` most probable classes, descending."""
        return top_classes(self.labels, self._st.analysis.probs, int(top))

    @_locked
    def probabilities(self) -> np.ndarray:
        """Class probabilities of the current image, shape [C] (a copy)."""
        return self._st.analysis.probs.copy()

    @_locked
    def profile(self) -> np.ndarray:
        """Profile of the current (masked) image in the explainer's mode (standardized by
        default), shape [F] (a copy)."""
        return self._st.analysis.profile.copy()

    @_locked
    def raw_profile(self) -> np.ndarray:
        """Raw profile of the explainer's mode, shape [F] (a copy): mean |dL/dθ| per filter."""
        return self._st.analysis.raw.copy()

    @_locked
    def layout(self) -> SortedProfile:
        """Per-layer sorted arrays for the profile chart, cached for the current analysis."""
        st = self._st
        return self._layouts.get_or_compute(st.generation, st.analysis.sorted_profile)

    def dead_filters(self) -> list[int]:
        """Dead filters (σ = 0 over the validation set: standardized saliency 0 on every image,
        an all-zero map), ascending; the chart draws them apart. Empty without statistics."""
        if self._dead is None:
            self._dead = [int(i) for i in self.explainer.dead_filters()]
        return list(self._dead)

    @_locked
    def filter_info(self, fid: int) -> FilterInfo:
        """``{id, layer, channel, saliency, rank, raw, layer_pos, selected}``.

        ``rank`` is the global rank, 0 = most salient filter of the model (as ``layout().rank``).
        """
        (i,) = check_ids([fid], self.n_filters)
        a = self._st.analysis
        index = self.explainer.index
        layer, channel = index.locate(i)
        values = a.profile
        # Rank with the same tie rule as the layout: a stable sort of the negated values.
        rank = int(np.sum(values > values[i]) + np.sum(values[:i] == values[i]))
        return {
            "id": i,
            "layer": layer,
            "channel": int(channel),
            "saliency": float(values[i]),
            "rank": rank,
            "raw": float(a.raw[i]),
            "layer_pos": int(index.layer_of(i)),
            "selected": i in self._selection.ids,
        }

    # -- maps ------------------------------------------------------------------------------------
    #: A filter set with at most this many filters outside the basis gets them added (one
    #: batched backward pass) and is then answered from the basis; larger ones go direct.
    BASIS_ADD_LIMIT = 2

    def _gradient(self, ids: list[int]) -> np.ndarray:
        st, boost = self._st, self._settings.boost
        key = ("gradient", st.generation, tuple(sorted(ids)), boost)
        return self._cache.get_or_compute(key, lambda: self._compute_gradient(st.analysis, ids, boost))

    def _compute_gradient(self, analysis: Analysis, ids: list[int], boost: float) -> np.ndarray:
        """From the basis when it covers ``ids`` (milliseconds), else one backward pass."""
        if analysis.basis_covers(ids):
            return analysis.basis_gradient(ids, boost=boost)
        if analysis.basis_started():
            missing = [i for i in ids if i not in set(analysis.basis_candidates())]
            if len(missing) <= self.BASIS_ADD_LIMIT:
                analysis.basis_add(missing)  # what this click costs; the next ones are instant
                return analysis.basis_gradient(ids, boost=boost)
        return analysis.input_gradient(np.asarray(ids, dtype=np.int64), boost=boost)

    # -- the instant-map basis, built in the background -------------------------------------------
    def _plan(self) -> BasisPlan:
        st = self._st
        plan = self._basis_plan
        if plan is None or plan.generation != st.generation:
            layer_of = self.explainer.index.layer_of(np.arange(self.n_filters))
            cands = plan_candidates(st.analysis.profile, layer_of, k=self._basis_k, per_layer=self._basis_per_layer)
            plan = self._basis_plan = BasisPlan(st.generation, cands)
        return plan

    @_locked
    def basis_step(self, max_filters: int = 1) -> bool:
        """Build the next ``max_filters`` basis maps of the current analysis (best-ranked first).

        Meant to be called repeatedly in idle time (the explorer's worker does): each call costs
        about one backward pass per filter (the first also builds ``g₀``). A new image, label or
        mask starts a new plan, so old work is never continued.

        Returns
        -------
        bool
            True while candidates remain to be built.
        """
        plan = self._plan()
        if plan.done:
            return False
        analysis = self._st.analysis
        chunk = plan.next_chunk(max_filters)
        analysis.basis_add(chunk, chunk=len(chunk))
        plan.built += len(chunk)
        return not plan.done

    @_locked
    def basis_status(self) -> BasisStatus:
        """``{"built", "planned", "covers_f"}``: progress of the current analysis's basis and
        whether F is answered from it (instantly)."""
        plan = self._plan()
        analysis = self._st.analysis
        ids = list(self._selection.ids)
        return {
            "built": len(analysis.basis_candidates()),
            "planned": len(plan.candidates),
            "covers_f": bool(ids) and analysis.basis_covers(ids),
        }

    @_locked
    def map_is_instant(self, filters: Sequence[int] | None = None) -> bool:
        """Whether the map of F (or ``filters``) costs no backward pass now (cached, or inside
        the basis): the widgets then skip their debounce delay."""
        ids = list(self._selection.ids) if filters is None else check_ids(filters, self.n_filters)
        st, s = self._st, self._settings
        if not ids or ("map", st.generation, tuple(sorted(ids)), s.boost, s.percentile) in self._cache:
            return True
        return st.analysis.basis_covers(ids)

    @_locked
    def map_note(self, filters: Sequence[int] | None = None) -> str | None:
        """Why the map of F (or ``filters``) is all zero, when it is exactly zero by construction
        (a set of dead filters, or the whole profile); None otherwise."""
        ids = list(self._selection.ids) if filters is None else check_ids(filters, self.n_filters)
        if not ids:
            return "F is empty: pick filters on the chart (or press top-k) to see their map"
        return self._st.analysis.zero_map_reason(ids)

    @_locked
    def input_map(self, filters: Sequence[int] | None = None) -> np.ndarray:
        """Input-space saliency of F (or ``filters``), [H, W] float32 in [0, 1].

        Computed once per (image state, filter set, boost, percentile) and cached. An empty
        set gives all zeros: with nothing boosted the target equals the profile, whose
        cosine distance is at its minimum (gradient 0).
        """
        ids = list(self._selection.ids) if filters is None else check_ids(filters, self.n_filters)
        st, s = self._st, self._settings
        if not ids:
            h, w = st.image.shape[:2]
            return np.zeros((h, w), dtype=np.float32)
        key = ("map", st.generation, tuple(sorted(ids)), s.boost, s.percentile)

        def compute() -> np.ndarray:
            with self._one_thread_if_instant(ids):
                return saliency_heatmap(self._gradient(ids), percentile=s.percentile)

        heat = self._cache.get_or_compute(key, compute)
        return heat.copy()

    @_locked
    def input_overlay(
        self, filters: Sequence[int] | None = None, *, alpha: float = 0.5, colormap: str = "jet"
    ) -> np.ndarray:
        """The map over the current image, uint8 [H, W, 3]."""
        ids = list(self._selection.ids) if filters is None else check_ids(filters, self.n_filters)
        with self._one_thread_if_instant(ids):
            return overlay(self._st.image, self.input_map(ids), alpha=alpha, colormap=colormap)

    def _one_thread_if_instant(self, ids: Sequence[int]) -> contextlib.AbstractContextManager[None]:
        """One torch/OpenCV thread for a map the basis answers (milliseconds of work), so a busy
        core (the browser redrawing the chart after the click) cannot stall it at a thread-pool
        barrier; the default threads for a map that needs a backward pass."""
        if ids and self._st.analysis.basis_covers(ids):
            return single_threaded()
        return contextlib.nullcontext()

    # -- CAM ---------------------------------------------------------------------------------------
    @property
    @_locked
    def cam_view(self) -> CamView:
        """What :meth:`cam` shows with no arguments (method, target class or None = the label
        under study, layer or None = the last conv layer)."""
        return self._cam_view

    def _check_method(self, method: str) -> str:
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
        return method

    def _check_layer(self, layer: str) -> str:
        names = self.cam_layers()
        if layer not in names:
            raise ValueError(f"no conv layer named {layer!r}; the last ones are {names[-3:]}")
        return layer

    @_locked
    def set_cam_view(
        self, *, method: str = UNSET, target: int | str | None = UNSET, layer: str | None = UNSET
    ) -> CamView:
        """Change what the CAM panel shows; keywords left out keep their value.

        Parameters
        ----------
        method : str
            One of :attr:`cam_methods`.
        target : int, str or None
            Class index, WordNet id or name; None: the label under study (follows it).
        layer : str or None
            A name of :meth:`cam_layers`; None: the last conv layer.

        Returns
        -------
        CamView
        """
        view = self._cam_view
        if method is not UNSET:
            view = dataclasses.replace(view, method=self._check_method(method))
        if target is not UNSET:
            view = dataclasses.replace(
                view, target=None if target is None else self.labels.resolve(target)
            )
        if layer is not UNSET:
            view = dataclasses.replace(
                view, layer=None if layer is None else self._check_layer(layer)
            )
        if view != self._cam_view:
            self._cam_view = view
            self._bump()
        return view

    @_locked
    def cam_target(self) -> CamTarget:
        """``{index, name, source}``: the class the CAM explains now (``source`` is ``label``
        when it follows the label under study, ``chosen`` when set with :meth:`set_cam_view`)."""
        target = self._cam_view.target
        index = self._st.label if target is None else target
        return {
            "index": index,
            "name": self.labels.name(index),
            "source": "label" if target is None else "chosen",
        }

    @_locked
    def cam(
        self,
        method: str | None = None,
        target: int | str | None = None,
        layer: str | None = None,
    ) -> np.ndarray:
        """A CAM of the current image, [H, W] float32 in [0, 1].

        Arguments left None come from :attr:`cam_view`; its target None is the label under
        study (so the CAM and the input-saliency map explain the same class by default).
        """
        view, st = self._cam_view, self._st
        meth = self._check_method(method if method is not None else view.method)
        if target is not None:
            cls = self.labels.resolve(target)
        else:
            cls = view.target if view.target is not None else st.label
        name = layer if layer is not None else view.layer
        name = self._check_layer(name) if name is not None else self.cam_layers()[-1]
        key = ("cam", st.generation, meth, cls, name)
        heat = self._cache.get_or_compute(
            key, lambda: st.analysis.cam(method=meth, target=cls, layer=name)  # type: ignore[arg-type]
        )
        return heat.copy()

    # -- masks -----------------------------------------------------------------------------------
    def _edit_image(
        self, image: np.ndarray, masks: tuple[Stroke, ...], history: tuple[np.ndarray, ...]
    ) -> BrushReport:
        """Analyze a new version of the current image (same label) and compare (Fig. 7c)."""
        st = self._st
        analysis = self._analyze(image, st.label)
        report = compare(
            st.analysis, analysis, self._selection.ids, label=st.label, labels=self.labels
        )
        new = dataclasses.replace(
            st,
            generation=self._next_generation(),
            image=image,
            analysis=analysis,
            masks=masks,
            history=history,
        )
        self._install(new, new_image=False)
        return report

    @_locked
    def brush(self, stroke: Stroke) -> BrushReport:
        """Mask a region of the current image, recompute, and compare (the label kept; F kept
        in ``custom`` mode, the new top-k in ``top-k`` mode).

        Returns
        -------
        BrushReport
            ``{"before": {top5, prob_label, prob_pred}, "after": {...}, "filters": [{id,
            before, after, change_pct}], "pred": {index, name}, "label": {index, name},
            "masked_pixels": int}``; ``filters`` is F as it was when the stroke was made;
            ``prob_pred`` is the probability of the class predicted before the stroke;
            ``change_pct`` is None where the saliency was 0.
        """
        st = self._st
        masked, n = paint(st.image, stroke, mean=self.model.preprocess.mean)
        report = self._edit_image(masked, (*st.masks, stroke), (*st.history, st.image))
        report["masked_pixels"] = n
        return report

    @_locked
    def mask_top_percent(self, p: float, fill: Fill = "mean") -> BrushReport:
        """Mask the top ``p`` % pixels of the current map (paper A.9); returns as :meth:`brush`."""
        if not self._selection.ids:
            raise SessionError(
                "F is empty, so the map is blank: pick filters before masking the top pixels"
            )
        return self.brush(top_percent_stroke(self.input_map(), p, fill=fill))

    @_locked
    def undo_mask(self) -> BrushReport | None:
        """Remove the last stroke (the previous image comes back exactly); None if no mask."""
        st = self._st
        if not st.masks:
            return None
        return self._edit_image(st.history[-1], st.masks[:-1], st.history[:-1])

    @_locked
    def reset_mask(self) -> BrushReport | None:
        """Remove every stroke; returns the comparison (masked -> original), None if no mask."""
        st = self._st
        if not st.masks:
            return None
        return self._edit_image(st.original, (), ())

    # -- interventions -------------------------------------------------------------------------
    @_locked
    def prune(
        self, kind: PruneChoice = "salient", n: int | None = None, seed: int = 0, *,
        recipe: Recipe = "zero-output",
    ) -> PruneReport:
        """Turn ``n`` filters off (paper §3.1) and compare the prediction.

        "Off" means the filter's channel is exactly zero after its normalization layer
        (``recipe="zero-output"``, the paper's stated intent); ``"paper-literal"`` zeroes the
        weights, conv bias and batch-norm bias as the original code does, which leaves the
        constant ``-γ·μ/√(σ²+ε)`` in the channel (see :mod:`psal_widgets.kernels.interventions`).
        The model is untouched (hooks / a copy of the parameters).

        Parameters
        ----------
        kind : {"salient", "random", "least", "selected"}
            The n most salient filters, n random ones, the n least salient, or exactly F.
        n : int, optional
            Default |F| (ignored for ``selected``).
        seed : int
            ``random`` draws with ``default_rng([seed, image_seed])``: the same image gets the
            same draw, another image another one.

        Returns
        -------
        PruneReport
            ``{kind, n, filters, prediction (top 5 after), prediction_before, prob_label,
            prob_pred, top1 (each (before, after)), pred, label}``; ``prob_pred`` follows the
            class predicted before turning the filters off.
        """
        st = self._st
        a = st.analysis
        ids = choose_filters(
            kind, profile=a.profile, selected=self._selection.ids, n=n, seed=seed, image=st.image
        )
        if self._pruner is None or getattr(self._pruner, "recipe", "zero-output") != recipe:
            self._pruner = a.pruner(recipe=recipe)
        after = a.pruned_probabilities(ids, pruner=self._pruner)
        return prune_report(kind, ids, before=a.probs, after=after, label=st.label, labels=self.labels)

    # -- dataset ---------------------------------------------------------------------------------
    def _need_data(self) -> DatasetBrowser:
        if self._data is None:
            raise no_dataset()
        return self._data

    @_locked
    def dataset_rows(self, only: OnlyFilter | None = None, cls: int | str | None = None) -> list[DatasetRow]:
        """Dataset images with the model's prediction (from the profile index), in dataset order.

        Parameters
        ----------
        only : {None, "correct", "incorrect"}
        cls : int or str, optional
            Keep only images of this true class.
        """
        data = self._need_data()
        want = None if cls is None else self.labels.resolve(cls)
        return data.list_rows(self.labels, explainer=self.explainer, only=only, want=want)

    @_locked
    def dataset_table(
        self,
        sort: SortKey = "loss",
        only: OnlyFilter | None = None,
        cls: int | str | None = None,
        *,
        descending: bool = True,
        limit: int | None = None,
    ) -> list[DatasetRow]:
        """The error table: dataset rows sorted by ``loss`` or ``mean_saliency`` (ties keep
        dataset order), optionally filtered and cut to the first ``limit``.

        Parameters
        ----------
        sort : {"loss", "mean_saliency"}
        only : {None, "correct", "incorrect"}
        cls : int or str, optional
            Keep only images of this true class.
        descending : bool
            Largest first (the worst mistakes, the most salient images).
        limit : int, optional
        """
        data = self._need_data()
        want = None if cls is None else self.labels.resolve(cls)
        return data.list_rows(
            self.labels, explainer=self.explainer, only=only, want=want, sort=sort,
            descending=descending, limit=limit,
        )

    @_locked
    def dataset_summary(self) -> DatasetSummary:
        """Paper Fig. 2 for the dataset: the per-layer-sorted mean standardized profile of the
        correct and of the incorrect images, their counts and mean saliencies (needs statistics)."""
        return self._need_data().summary(self.explainer)

    @_locked
    def dataset_map(self, method: MapMethod = "pca") -> np.ndarray:
        """2-D coordinates of the dataset's standardized profiles, float64 [N, 2] (row ``i`` =
        dataset image ``i``), cached per method.

        ``pca``: the first two principal components (NumPy SVD of the centred matrix; signs fixed
        so that each component's largest loading is positive). ``umap``: cosine UMAP, only when
        ``umap-learn`` is installed (:class:`SessionError` otherwise).
        """
        return self._need_data().map_2d(self.explainer, method)

    @_locked
    def open_dataset_image(self, i: int) -> None:
        """Load dataset image ``i`` with its true label (label_source ``known``), F := top-k."""
        file, name, label = self._need_data().entry(i)
        state = self._load(file, name=name, label=None, known=label, dataset_index=int(i))
        self._install(state, new_image=True)

    @_locked
    def neighbours(self, k: int = 10, layers: tuple[int, int] | None = None) -> list[NeighbourRow]:
        """Dataset images whose standardized profiles are closest (cosine) to the current one.

        Parameters
        ----------
        k : int
        layers : (first, last), optional
            Layer positions (0-based, inclusive) to compare on (paper §3.2: shallow vs deep).

        Returns
        -------
        list of NeighbourRow
            Most similar first; the current image itself is left out when it came from the
            dataset. The dataset side is the profile index standardized with the session's
            statistics.
        """
        data = self._need_data()
        st = self._st
        return data.neighbours(
            st.analysis.standardized(),
            explainer=self.explainer,
            k=k,
            layers=layers,
            exclude=st.dataset_index,
        )

    # -- export ----------------------------------------------------------------------------------
    def _export_files(self, extra: Mapping[str, bytes | str] | None) -> _export.ExportFiles:
        st, s = self._st, self._settings
        a = st.analysis
        view = self._cam_view
        layer = view.layer if view.layer is not None else self.cam_layers()[-1]
        masks = [
            {"kind": m.kind, "points": [list(pt) for pt in m.points], "fill": m.fill, "note": m.note}
            for m in st.masks
        ]
        meta = {
            "model": self.model.name,
            "image": st.name,
            "label": {**class_ref(self.labels, st.label), "source": st.label_source},
            "filters": a.filter_rows(np.asarray(self._selection.ids, dtype=np.int64)),
            "filter_mode": self._selection.mode,
            "k": s.k,
            "boost": s.boost,
            "percentile": s.percentile,
            "cam": {"method": view.method, "target": self.cam_target(), "layer": layer},
            "masks": masks,
            "prediction": self.prediction(5),
            "files": [*_export.EXPORT_FILES, *(extra or {})],
        }
        return _export.render_files(
            index=self.explainer.index,
            profile=a.profile,
            raw=a.raw,
            meta=meta,
            image=st.image,
            input_map=self.input_map(),
            cam=self.cam(),
            extra=extra,
        )

    @_locked
    def export(
        self, folder: str | os.PathLike[str], *, extra: Mapping[str, bytes | str] | None = None
    ) -> list[Path]:
        """Write what is on screen: profile.csv, filters.json, image.png, input_map.png (current
        F, boost, percentile), overlay.png and gradcam.png (the current CAM view).

        Parameters
        ----------
        folder : path
            Created if missing.
        extra : mapping, optional
            More files to write beside them (e.g. ``{"profile.html": html}`` from the widgets).

        Returns
        -------
        list of Path
            ABSOLUTE paths, in the order of ``filters.json``'s ``files``.
        """
        return _export.write_files(folder, self._export_files(extra))

    @_locked
    def export_zip(self, *, extra: Mapping[str, bytes | str] | None = None) -> bytes:
        """The files of :meth:`export` (same bytes) as one zip archive built in memory, for a
        browser download."""
        return _export.zip_files(self._export_files(extra))

    # -- lifetime --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release everything: the kept autograd graph, caches, the pruner, the neighbour bank.

        Idempotent; any later call raises :class:`SessionError`. A caller's Explainer stays
        usable.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._state is not None:
                self._state.analysis.release()
            self._state = None
            self._cache.clear()
            self._layouts.clear()
            self._pruner = None
            if self._data is not None:
                self._data.release()
            self._data = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            if self._closed or self._state is None:
                return f"Session({self.model.name}, closed)"
            st = self._state
            return (
                f"Session({self.model.name}, image={st.name!r}, label={self.labels.name(st.label)!r} "
                f"({st.label_source}), |F|={len(self._selection.ids)} ({self._selection.mode}), "
                f"masks={len(st.masks)}, version={self._version})"
            )
