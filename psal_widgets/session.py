"""The explorer's middle tier: one model, one image, one label, its masks and the boosted set F.

Widgets never import torch; they talk to a :class:`Session`, which calls the kernels and
returns only NumPy arrays and plain Python values (see ``docs/session-contract.md``).

Costs, so that clicks stay cheap: the model and its statistics load once; each (image, label,
mask) state runs ONE analysis (forward + differentiable profile, ~0.5 s for the default model
on a CPU) whose graph is kept, so a new filter set costs one more backward pass (~0.45 s) and a
filter set seen before costs nothing (maps are cached). Every public method takes one
re-entrant lock: the widget tier may call from a worker thread.

>>> s = Session()                          # default model, first image of raw_images/
>>> s.toggle_filter(17); heat = s.input_map()
>>> s.brush(Stroke(kind="box", points=[(50, 60), (125, 105)]))["after"]["prob_label"]
"""

from __future__ import annotations

import csv
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from ._types import CAM_METHODS, CamMethod, SortedProfile
from .data import LabeledImages, load_image, open_dataset, to_rgb
from .explainer import Analysis, Explainer, known_label
from .kernels.cam import conv_layer_names
from .kernels.interventions import FilterPruner, select_filters
from .kernels.neighbours import cosine_neighbours, layer_columns, standardize_bank
from .kernels.stats import FilterStats
from .labels import LabelSet, UnknownLabelError, ilsvrc_val_label
from .models import DEFAULT_MODEL, LoadedModel
from .store import PROFILES_FILE, SampleResults, StatsError, load_samples, load_stats, stats_dirs
from .viz.heatmap import mask_top_percent as _top_percent_mask
from .viz.heatmap import overlay, saliency_heatmap
from .viz.masks import Fill, Stroke, apply_fill

__all__ = ["Session", "SessionError", "Stroke"]

ImageSource = str | os.PathLike[str] | bytes | Image.Image
LabelSource = Literal["known", "given", "prediction"]

#: Where the default image comes from (the project's sample photographs).
RAW_IMAGES = Path(__file__).resolve().parent.parent / "raw_images"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: How many maps / gradients to keep per session (a few filter sets toggled back and forth).
_CACHE_SIZE = 16


class SessionError(ValueError):
    """A request the session cannot serve in its current state; the message says the fix."""


@dataclass
class _State:
    """What one analysis belongs to; replaced as a whole so a failure leaves the old one."""

    name: str
    original: np.ndarray
    image: np.ndarray
    label: int
    label_source: str
    default_label: int | None
    analysis: Analysis
    generation: int
    dataset_index: int | None = None
    masks: list[Stroke] = field(default_factory=list)
    history: list[np.ndarray] = field(default_factory=list)


def _frozen(arr: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(arr)
    out.flags.writeable = False
    return out


def _first_raw_image() -> Path:
    files = sorted(p for p in RAW_IMAGES.glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise SessionError(
            f"no sample images in {RAW_IMAGES.name}/ (not a source checkout?): pass image=PATH"
        )
    return files[0]


class Session:
    """State and computations of the explorer for one model.

    Parameters
    ----------
    model : str, LoadedModel, Explainer or None
        Model name (default: the embedded EfficientNet-Lite0), a loaded model, or a ready
        Explainer (its statistics are used).
    data : path, optional
        A labelled dataset (CSV ``file,label`` or folder, see :func:`open_dataset`) whose
        helper objects (``psal stats --data PATH``) exist: enables the dataset browser and,
        with ``--profiles``, neighbours.
    image : path, bytes or PIL image, optional
        Default: the first file of ``raw_images/``.
    label : int or str, optional
        Class index, WordNet id or name; default the known label, else the prediction.
    device : str, optional
    stats : FilterStats, path, "auto" or None
        Validation statistics for the standardized profile (when ``model`` is not an
        Explainer); ``"auto"``: the model's own helper objects.
    data_stats : path, optional
        Helper-objects folder computed over ``data`` (default: the model's own folder).
    k, boost, percentile : int, float, float
        Initial top-k, boost factor and map threshold percentile.
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
        data_stats: str | os.PathLike[str] | None = None,
        k: int = 10,
        boost: float = 100.0,
        percentile: float = 90.0,
    ) -> None:
        self._lock = threading.RLock()
        if isinstance(model, Explainer):
            if device is not None:
                model.model.to(device)
            self.explainer = model
        else:
            if isinstance(model, LoadedModel) and device is not None:
                model.to(device)
            self.explainer = Explainer(
                model if model is not None else DEFAULT_MODEL, stats=stats, device=device
            )
        self._k = self._check_k(k)
        self._boost = self._check_boost(boost)
        self._percentile = self._check_percentile(percentile)
        self.version = 0
        self._generation = 0
        self._filters: list[int] = []
        self._maps: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._grads: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._cams: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._layout: tuple[int, SortedProfile] | None = None
        self._pruner: FilterPruner | None = None
        self._bank: np.ndarray | None = None
        self.dataset: LabeledImages | None = None
        self._samples: SampleResults | None = None
        self._sample_rows: np.ndarray | None = None
        self.data_stats_dir: Path | None = None
        if data is not None:
            self._open_data(data, data_stats)
        self._state: _State = self._load(
            image if image is not None else _first_raw_image(), name=None, label=label
        )
        self._filters = self._top_k()

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

    def cam_layers(self) -> list[str]:
        """Conv layer names a CAM can attach to (the default, the last one, at the end)."""
        return conv_layer_names(self.model.module)

    # -- current state (read-only views) ---------------------------------------------------
    @property
    def image_name(self) -> str:
        return self._state.name

    @property
    def image(self) -> np.ndarray:
        """uint8 [H, W, 3]: what the model sees now (masks applied); read-only."""
        return self._state.image

    @property
    def original(self) -> np.ndarray:
        """uint8 [H, W, 3]: the resized and cropped image before masks; read-only."""
        return self._state.original

    @property
    def label(self) -> int:
        return self._state.label

    @property
    def label_name(self) -> str:
        return self.labels.name(self._state.label)

    @property
    def label_source(self) -> str:
        """``known`` (labels.csv / dataset / ILSVRC file name), ``given`` or ``prediction``."""
        return self._state.label_source

    @property
    def dataset_index(self) -> int | None:
        """Row of ``dataset`` the image came from (``open_dataset_image``), else None."""
        return self._state.dataset_index

    @property
    def masks(self) -> list[Stroke]:
        return list(self._state.masks)

    @property
    def filters(self) -> list[int]:
        """The boosted set F, in the order chosen (a copy; change it with the methods)."""
        return list(self._filters)

    @property
    def k(self) -> int:
        return self._k

    @k.setter
    def k(self, value: int) -> None:
        self.set_k(value)

    @property
    def boost(self) -> float:
        return self._boost

    @boost.setter
    def boost(self, value: float) -> None:
        self.set_boost(value)

    @property
    def percentile(self) -> float:
        return self._percentile

    @percentile.setter
    def percentile(self, value: float) -> None:
        self.set_percentile(value)

    # -- validation helpers --------------------------------------------------------------------
    def _check_k(self, k: int) -> int:
        n = self.explainer.index.n_filters
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= n:
            raise ValueError(f"k must be an integer in [1, {n}]; got {k!r}")
        return int(k)

    @staticmethod
    def _check_boost(b: float) -> float:
        b = float(b)
        if not (np.isfinite(b) and b > 0.0):
            raise ValueError(
                f"boost must be a positive finite number (the paper uses 100); got {b}"
            )
        return b

    @staticmethod
    def _check_percentile(p: float) -> float:
        p = float(p)
        if not (np.isfinite(p) and 0.0 <= p < 99.0):
            raise ValueError(
                f"percentile must be in [0, 99) (values are clipped at the 99th); got {p}"
            )
        return p

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        out: list[int] = []
        n = self.n_filters
        for v in ids:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"filter ids must be integers; got {v!r}")
            i = int(v)
            if not 0 <= i < n:
                raise ValueError(
                    f"filter id {i} is out of range: the model has {n} filters (0..{n - 1})"
                )
            if i not in out:
                out.append(i)
        return out

    # -- analysis ------------------------------------------------------------------------------
    def _run(self, image: np.ndarray, label: int | None) -> Analysis:
        """One analysis of a display image (uint8 [H, W, 3]) for ``label`` (prediction if None)."""
        x = self.model.preprocess.normalize(image).to(self.model.device)
        return self.explainer.analyze(x, label=label)

    def _bump(self) -> None:
        self.version += 1

    def _replace(self, state: _State) -> None:
        """Install a new state, releasing the old analysis's graph."""
        old = getattr(self, "_state", None)
        self._state = state
        self._layout = None
        if old is not None and old.analysis is not state.analysis:
            old.analysis.release()
        self._bump()

    def _new_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _load(
        self,
        source: ImageSource,
        *,
        name: str | None,
        label: int | str | None,
        known: int | str | None = None,
        dataset_index: int | None = None,
    ) -> _State:
        """Read, preprocess and analyze an image; raises before touching any state."""
        if isinstance(source, Image.Image):
            pil = to_rgb(source)  # as load_image does: transparency composited on white
            shown_name = name or "image"
        else:
            pil = load_image(source)
            if isinstance(source, (bytes, bytearray, memoryview)):
                shown_name = name or "upload"
            else:
                shown_name = name or Path(os.fspath(source)).name
        labels = self.labels
        if known is None and not isinstance(source, (Image.Image, bytes, bytearray, memoryview)):
            known = known_label(os.fspath(source))
        if known is None and name:
            known = ilsvrc_val_label(Path(name).name)
        known_idx = None
        if known is not None:
            try:
                known_idx = labels.resolve(known)
            except UnknownLabelError:
                # A labels.csv made for another label set: study the prediction instead.
                known_idx = None
        if label is not None:
            label_idx: int | None = labels.resolve(label)  # UnknownLabelError propagates
            source_kind = "given"
        elif known_idx is not None:
            label_idx, source_kind = known_idx, "known"
        else:
            label_idx, source_kind = None, "prediction"
        display = _frozen(self.model.preprocess.display(pil))
        analysis = self._run(display, label_idx)
        return _State(
            name=shown_name,
            original=display,
            image=display,
            label=analysis.label,
            label_source=source_kind,
            default_label=known_idx,
            analysis=analysis,
            generation=self._new_generation(),
            dataset_index=dataset_index,
        )

    def set_image(
        self, source: ImageSource, *, name: str | None = None, label: int | str | None = None
    ) -> None:
        """Load a new image (path, encoded bytes or PIL image); F := top-k, masks cleared.

        On :class:`~psal_widgets.data.ImageError` (or an unknown label) the state is unchanged
        and the error is re-raised for the UI to show.
        """
        with self._lock:
            state = self._load(source, name=name, label=label)
            self._replace(state)
            self._filters = self._top_k()

    def set_label(self, label: int | str | None) -> None:
        """Study another class (index, WordNet id or name; None: back to the default label).

        The current (masked) image is analyzed again and F := top-k of the new profile.
        Raises :class:`~psal_widgets.labels.UnknownLabelError` (with suggestions) unchanged.
        """
        with self._lock:
            st = self._state
            if label is None:
                idx, kind = st.default_label, "known"
                if idx is None:
                    idx, kind = None, "prediction"
            else:
                idx, kind = self.labels.resolve(label), "given"
            if idx is None:
                # Back to the prediction of the unmasked image, as when it was loaded.
                with torch.no_grad():
                    x = self.model.preprocess.normalize(st.original).to(self.model.device)
                    idx = int(self.model.module(x.unsqueeze(0)).argmax(dim=1))
            analysis = self._run(st.image, idx)
            new = _State(
                name=st.name,
                original=st.original,
                image=st.image,
                label=analysis.label,
                label_source=kind,
                default_label=st.default_label,
                analysis=analysis,
                generation=self._new_generation(),
                dataset_index=st.dataset_index,
                masks=list(st.masks),
                history=list(st.history),
            )
            self._replace(new)
            self._filters = self._top_k()

    # -- filter set ----------------------------------------------------------------------------
    def _top_k(self) -> list[int]:
        return [int(i) for i in self._state.analysis.top_filters(self._k)]

    def _set_filters(self, ids: list[int]) -> list[int]:
        if ids != self._filters:
            self._filters = ids
            self._bump()
        return list(self._filters)

    def set_k(self, k: int) -> None:
        """Set k and reset F to the top-k filters of the current profile."""
        with self._lock:
            self._k = self._check_k(k)
            self._set_filters(self._top_k())

    def reset_filters(self) -> list[int]:
        """F := the top-k filters of the current profile; returns F."""
        with self._lock:
            return self._set_filters(self._top_k())

    def toggle_filter(self, fid: int) -> list[int]:
        """Add ``fid`` to F, or remove it if present; returns F."""
        with self._lock:
            (i,) = self._check_ids([fid])
            ids = (
                [f for f in self._filters if f != i] if i in self._filters else [*self._filters, i]
            )
            return self._set_filters(ids)

    def add_filters(self, ids: Iterable[int]) -> list[int]:
        """Append filters not yet in F (e.g. a box selection on the chart); returns F."""
        with self._lock:
            new = self._check_ids(ids)
            return self._set_filters(self._filters + [i for i in new if i not in self._filters])

    def set_filters(self, ids: Iterable[int]) -> list[int]:
        """Replace F (duplicates dropped, order kept); returns F."""
        with self._lock:
            return self._set_filters(self._check_ids(ids))

    def set_boost(self, b: float) -> None:
        """Boost factor of the entries of F in the target profile (paper: 100)."""
        with self._lock:
            b = self._check_boost(b)
            if b != self._boost:
                self._boost = b
                self._bump()

    def set_percentile(self, p: float) -> None:
        """Lower clipping percentile of the map (paper: 90)."""
        with self._lock:
            p = self._check_percentile(p)
            if p != self._percentile:
                self._percentile = p
                self._bump()

    # -- queries on the current analysis -------------------------------------------------------
    def _predictions(self, probs: np.ndarray, top: int) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[:top]
        return [
            {"index": int(i), "name": self.labels.name(int(i)), "prob": float(probs[i])}
            for i in order
        ]

    def prediction(self, top: int = 5) -> list[dict[str, Any]]:
        """``[{index, name, prob}]`` of the ``top`` most probable classes, descending."""
        with self._lock:
            return self._predictions(self._state.analysis.probs, int(top))

    def probabilities(self) -> np.ndarray:
        """Class probabilities of the current image, shape [C] (a copy)."""
        with self._lock:
            return self._state.analysis.probs.copy()

    def profile(self) -> np.ndarray:
        """Profile of the current (masked) image in the explainer's mode (standardized by
        default), shape [F] (a copy)."""
        with self._lock:
            return self._state.analysis.profile.copy()

    def raw_profile(self) -> np.ndarray:
        """Mean |dL/dθ| per filter, shape [F] (a copy)."""
        with self._lock:
            return self._state.analysis.raw.copy()

    def layout(self) -> SortedProfile:
        """Per-layer sorted arrays for the profile chart, cached for the current analysis."""
        with self._lock:
            gen = self._state.generation
            if self._layout is None or self._layout[0] != gen:
                self._layout = (gen, self._state.analysis.sorted_profile())
            return self._layout[1]

    def filter_info(self, fid: int) -> dict[str, Any]:
        """``{id, layer, channel, saliency, rank, raw, layer_pos, selected}``.

        ``rank`` is the global rank, 0 = most salient filter of the model (as ``layout().rank``).
        """
        with self._lock:
            (i,) = self._check_ids([fid])
            a = self._state.analysis
            layer, channel = self.explainer.index.locate(i)
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
                "layer_pos": int(self.explainer.index.layer_of(i)),
                "selected": i in self._filters,
            }

    # -- maps ------------------------------------------------------------------------------------
    @staticmethod
    def _remember(
        cache: OrderedDict[tuple[Any, ...], np.ndarray], key: tuple[Any, ...], value: np.ndarray
    ) -> np.ndarray:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        return value

    def _gradient(self, ids: list[int]) -> np.ndarray:
        key = (self._state.generation, tuple(sorted(ids)), self._boost)
        hit = self._grads.get(key)
        if hit is not None:
            self._grads.move_to_end(key)
            return hit
        grad = self._state.analysis.input_gradient(
            np.asarray(ids, dtype=np.int64), boost=self._boost
        )
        return self._remember(self._grads, key, grad)

    def input_map(self, filters: Sequence[int] | None = None) -> np.ndarray:
        """Input-space saliency of F (or ``filters``), [H, W] float32 in [0, 1].

        Computed once per (image state, filter set, boost, percentile) and cached. An empty
        set gives all zeros: with nothing boosted the target equals the profile, whose
        cosine distance is at its minimum (gradient 0).
        """
        with self._lock:
            ids = self._filters if filters is None else self._check_ids(filters)
            h, w = self._state.image.shape[:2]
            if not ids:
                return np.zeros((h, w), dtype=np.float32)
            key = (self._state.generation, tuple(sorted(ids)), self._boost, self._percentile)
            hit = self._maps.get(key)
            if hit is not None:
                self._maps.move_to_end(key)
                return hit.copy()
            heat = saliency_heatmap(self._gradient(ids), percentile=self._percentile)
            return self._remember(self._maps, key, heat).copy()

    def input_overlay(
        self, filters: Sequence[int] | None = None, *, alpha: float = 0.5, colormap: str = "jet"
    ) -> np.ndarray:
        """The map over the current image, uint8 [H, W, 3]."""
        with self._lock:
            return overlay(
                self._state.image, self.input_map(filters), alpha=alpha, colormap=colormap
            )

    def cam(
        self,
        method: CamMethod = "gradcam",
        target: int | str | None = None,
        layer: str | None = None,
    ) -> np.ndarray:
        """A CAM of the current image for ``target`` (default: the prediction), [H, W] in [0, 1]."""
        with self._lock:
            tgt = None if target is None else self.labels.resolve(target)
            key = (self._state.generation, method, tgt, layer)
            hit = self._cams.get(key)
            if hit is None:
                hit = self._remember(
                    self._cams,
                    key,
                    self._state.analysis.cam(method=method, target=tgt, layer=layer),
                )
            return hit.copy()

    # -- masks -----------------------------------------------------------------------------------
    def _summary(self, analysis: Analysis, pred: int) -> dict[str, Any]:
        probs = analysis.probs
        return {
            "top5": self._predictions(probs, 5),
            "prob_label": float(probs[self._state.label]),
            "prob_pred": float(probs[pred]),
        }

    def _compare(self, before: Analysis, after: Analysis) -> dict[str, Any]:
        """Paper Fig. 7c: probabilities and the % change of each F filter's saliency."""
        pred = int(np.argmax(before.probs))
        rows = []
        for i in self._filters:
            b, a = float(before.profile[i]), float(after.profile[i])
            change = (a - b) / abs(b) * 100.0 if abs(b) > 1e-12 else None
            rows.append({"id": i, "before": b, "after": a, "change_pct": change})
        return {
            "before": self._summary(before, pred),
            "after": self._summary(after, pred),
            "pred": {"index": pred, "name": self.labels.name(pred)},
            "label": {"index": self._state.label, "name": self.label_name},
            "filters": rows,
        }

    def _set_image_array(
        self, image: np.ndarray, masks: list[Stroke], history: list[np.ndarray]
    ) -> dict[str, Any]:
        """Analyze a new version of the current image (same label, same F) and compare."""
        st = self._state
        analysis = self._run(image, st.label)
        report = self._compare(st.analysis, analysis)
        new = _State(
            name=st.name,
            original=st.original,
            image=image,
            label=st.label,
            label_source=st.label_source,
            default_label=st.default_label,
            analysis=analysis,
            generation=self._new_generation(),
            dataset_index=st.dataset_index,
            masks=masks,
            history=history,
        )
        self._replace(new)
        return report

    def brush(self, stroke: Stroke) -> dict[str, Any]:
        """Mask a region of the current image, recompute, and compare (F and the label kept).

        Returns
        -------
        dict
            ``{"before": {top5, prob_label, prob_pred}, "after": {...}, "filters": [{id,
            before, after, change_pct}], "pred": {index, name}, "label": {index, name},
            "masked_pixels": int}``; ``prob_pred`` is the probability of the class predicted
            before the stroke; ``change_pct`` is None where the saliency was 0.
        """
        with self._lock:
            if not isinstance(stroke, Stroke):
                raise TypeError(f"brush takes a Stroke, got {type(stroke).__name__}")
            st = self._state
            mask = stroke.mask(st.image.shape[:2])
            n = int(mask.sum())
            if n == 0:
                raise ValueError("the stroke covers no pixel: draw a larger region")
            masked = _frozen(
                apply_fill(st.image, mask, fill=stroke.fill, mean=self.model.preprocess.mean)
            )
            report = self._set_image_array(masked, [*st.masks, stroke], [*st.history, st.image])
            report["masked_pixels"] = n
            return report

    def mask_top_percent(self, p: float, fill: Fill = "mean") -> dict[str, Any]:
        """Mask the top ``p`` % pixels of the current map (paper A.9); returns as :meth:`brush`."""
        with self._lock:
            if not self._filters:
                raise SessionError(
                    "F is empty, so the map is blank: pick filters before masking the top pixels"
                )
            region = _top_percent_mask(self.input_map(), percent=p)
            return self.brush(
                Stroke(kind="pixels", fill=fill, region=region, note=f"top {float(p):g}%")
            )

    def undo_mask(self) -> dict[str, Any] | None:
        """Remove the last stroke (the previous image comes back exactly); None if no mask."""
        with self._lock:
            st = self._state
            if not st.masks:
                return None
            return self._set_image_array(st.history[-1], st.masks[:-1], st.history[:-1])

    def reset_mask(self) -> dict[str, Any] | None:
        """Remove every stroke; returns the comparison (masked -> original), None if no mask."""
        with self._lock:
            st = self._state
            if not st.masks:
                return None
            return self._set_image_array(st.original, [], [])

    # -- interventions -------------------------------------------------------------------------
    def prune(self, kind: str = "salient", n: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Turn ``n`` filters off (weights and their batch norm's bias zeroed, paper §3.1).

        Works on a copy of the parameters through ``torch.func.functional_call``: the model is
        untouched.

        Parameters
        ----------
        kind : {"salient", "random", "least", "selected"}
            The n most salient filters, n random ones (``seed``), the n least salient, or F.
        n : int, optional
            Default |F| (ignored for ``selected``).
        seed : int

        Returns
        -------
        dict
            ``{"kind", "filters", "n", "prediction": top5 after, "prediction_before": top5,
            "prob_label": (before, after), "top1": (before, after)}``; top-1 entries are
            ``{index, name, prob}``.
        """
        with self._lock:
            a = self._state.analysis
            if kind == "selected":
                if not self._filters:
                    raise SessionError("F is empty: select filters to turn off")
                ids = np.asarray(self._filters, dtype=np.int64)
            else:
                count = len(self._filters) if n is None else n
                if count == 0:
                    raise SessionError("F is empty, so n has no default: pass n or select filters")
                ids = select_filters(kind, a.profile, count, seed=seed)  # type: ignore[arg-type]
            if self._pruner is None:
                self._pruner = FilterPruner(self.model.module, self.explainer.index, a.x)
            logits = self._pruner.logits(a.x, ids)
            after = torch.softmax(logits.float(), dim=0).cpu().numpy()
            before = a.probs
            label = self._state.label
            top_before = self._predictions(before, 1)[0]
            top_after = self._predictions(after, 1)[0]
            return {
                "kind": kind,
                "n": int(ids.size),
                "filters": [int(i) for i in ids],
                "prediction": self._predictions(after, 5),
                "prediction_before": self._predictions(before, 5),
                "prob_label": (float(before[label]), float(after[label])),
                "top1": (top_before, top_after),
            }

    # -- dataset ---------------------------------------------------------------------------------
    def _open_data(
        self, data: str | os.PathLike[str], data_stats: str | os.PathLike[str] | None
    ) -> None:
        ds = open_dataset(data, labels=self.labels, preprocess=self.model.preprocess)
        shown = Path(os.fspath(data)).name
        cmd = (
            f"`psal stats --data {shown} --out DIR` (add --profiles for neighbours), "
            "then Session(data=..., data_stats=DIR)"
        )
        if data_stats is not None:
            folders = [Path(data_stats)]
        else:
            # Every helper-objects folder of the model is a candidate: the shipped one may cover
            # the dataset without profiles while `psal stats --profiles` wrote another to the
            # user cache. The first that covers the dataset wins, one with profiles first.
            folders = stats_dirs(self.model.name)
        if not folders:
            raise StatsError(
                f"no helper objects found for {self.model.name}: compute them over the "
                f"dataset with {cmd}"
            )
        matches: list[tuple[Path, SampleResults, np.ndarray]] = []
        errors: list[StatsError] = []
        for folder in folders:
            try:
                matches.append((folder, *self._match_samples(folder, ds, shown, cmd)))
            except StatsError as err:
                errors.append(err)
        if not matches:
            raise errors[0]
        matches.sort(key=lambda m: not (m[0] / PROFILES_FILE).is_file())
        folder, samples, rows = matches[0]
        self.dataset, self._samples, self._sample_rows, self.data_stats_dir = (
            ds,
            samples,
            rows,
            folder,
        )

    def _match_samples(
        self, folder: Path, ds: LabeledImages, shown: str, cmd: str
    ) -> tuple[SampleResults, np.ndarray]:
        """The per-sample results of ``folder`` for every image of ``ds``, and their rows."""
        # Refuses statistics of another model or other weights.
        load_stats(folder, index=self.explainer.index, weights_id=self.model.weights_id)
        samples = load_samples(folder)
        if samples is None:
            raise StatsError(
                f"the helper objects in {folder.name} hold no per-sample results; "
                f"recompute them with {cmd}"
            )
        where = {f: j for j, f in enumerate(samples.files)}
        files = ds.relative_files()
        missing = [f for f in files if f not in where]
        if missing:
            raise StatsError(
                f"the helper objects in {folder.name} were computed over another dataset: "
                f"{len(missing)} of {len(files)} images of {shown} are not in them "
                f"(e.g. {missing[0]}); "
                f"compute them with {cmd}"
            )
        rows = np.asarray([where[f] for f in files], dtype=np.int64)
        wrong = np.flatnonzero(samples.label[rows] != np.asarray(ds.labels))
        if wrong.size:
            raise StatsError(
                f"{wrong.size} images of {shown} have other labels than in the helper objects of "
                f"{folder.name} (e.g. {files[int(wrong[0])]}); recompute them with {cmd}"
            )
        return samples, rows

    def _need_dataset(self) -> tuple[LabeledImages, SampleResults, np.ndarray]:
        if self.dataset is None or self._samples is None or self._sample_rows is None:
            raise SessionError(
                "no dataset: create the session with Session(data=PATH) (a labels CSV or folder)"
            )
        return self.dataset, self._samples, self._sample_rows

    def dataset_rows(
        self, only: str | None = None, cls: int | str | None = None
    ) -> list[dict[str, Any]]:
        """Dataset images with the model's prediction (from the helper objects).

        Parameters
        ----------
        only : {None, "correct", "incorrect"}
        cls : int or str, optional
            Keep only images of this true class.

        Returns
        -------
        list of dict
            ``{i, file, label, label_name, pred, pred_name, correct, prob_label, prob_pred}``.
        """
        if only not in (None, "correct", "incorrect"):
            raise ValueError(f"only must be None, 'correct' or 'incorrect'; got {only!r}")
        with self._lock:
            ds, samples, rows = self._need_dataset()
            want = None if cls is None else self.labels.resolve(cls)
            files = ds.relative_files()
            out = []
            for i, j in enumerate(rows.tolist()):
                label, pred = int(ds.labels[i]), int(samples.pred[j])
                correct = label == pred
                if (only == "correct" and not correct) or (only == "incorrect" and correct):
                    continue
                if want is not None and label != want:
                    continue
                out.append(
                    {
                        "i": i,
                        "file": files[i],
                        "label": label,
                        "label_name": self.labels.name(label),
                        "pred": pred,
                        "pred_name": self.labels.name(pred),
                        "correct": correct,
                        "prob_label": float(samples.prob_label[j]),
                        "prob_pred": float(samples.prob_pred[j]),
                    }
                )
            return out

    def open_dataset_image(self, i: int) -> None:
        """Load dataset image ``i`` with its true label (label_source ``known``)."""
        with self._lock:
            ds, _, _ = self._need_dataset()
            if isinstance(i, bool) or not 0 <= int(i) < len(ds):
                raise IndexError(f"dataset index must lie in [0, {len(ds)}); got {i}")
            i = int(i)
            state = self._load(
                ds.files[i],
                name=ds.relative_files()[i],
                label=None,
                known=ds.labels[i],
                dataset_index=i,
            )
            self._replace(state)
            self._filters = self._top_k()

    def neighbours(
        self, k: int = 10, layers: tuple[int, int] | None = None
    ) -> list[dict[str, Any]]:
        """Dataset images whose standardized profiles are closest (cosine) to the current one.

        Parameters
        ----------
        k : int
        layers : (first, last), optional
            Layer positions (0-based, inclusive) to compare on (paper §3.2: shallow vs deep).

        Returns
        -------
        list of dict
            ``{i, file, label, label_name, pred, pred_name, correct, similarity}``, most similar
            first; the current image itself is left out when it came from the dataset.
        """
        with self._lock:
            ds, samples, rows = self._need_dataset()
            stats = self.explainer.stats
            if samples.profiles is None:
                raise StatsError(
                    f"no profiles.safetensors in {self.data_stats_dir}: neighbours need "
                    "every image's profile; compute them with "
                    "`psal stats --data PATH --out DIR --profiles` and pass data_stats=DIR"
                )
            if stats is None:
                raise StatsError(
                    "neighbours compare standardized profiles, which need validation statistics"
                )
            if self._bank is None:
                self._bank = standardize_bank(
                    samples.profiles[rows], stats.mean.numpy(), stats.std.numpy()
                )
            query = self._state.analysis.standardized()
            assert query is not None
            columns = layer_columns(self.explainer.index, layers)
            exclude = () if self._state.dataset_index is None else (self._state.dataset_index,)
            idx, sims = cosine_neighbours(query, self._bank, k=k, columns=columns, exclude=exclude)
            files = ds.relative_files()
            out = []
            for i, sim in zip(idx.tolist(), sims.tolist(), strict=True):
                label, pred = int(ds.labels[i]), int(samples.pred[rows[i]])
                out.append(
                    {
                        "i": i,
                        "file": files[i],
                        "label": label,
                        "label_name": self.labels.name(label),
                        "pred": pred,
                        "pred_name": self.labels.name(pred),
                        "correct": label == pred,
                        "similarity": float(sim),
                    }
                )
            return out

    # -- export ----------------------------------------------------------------------------------
    def export(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the current analysis: profile.csv, filters.json, image.png, input_map.png,
        overlay.png and gradcam.png (profile.html comes from the widget tier).

        Returns
        -------
        list of Path
        """
        from .viz.static import image_png

        with self._lock:
            out = Path(folder)
            out.mkdir(parents=True, exist_ok=True)
            a = self._state.analysis
            index = self.explainer.index
            ids = np.arange(index.n_filters)
            paths = []
            p = out / "profile.csv"
            with p.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "layer", "channel", "saliency", "raw"])
                for i, layer, ch in zip(
                    ids.tolist(), index.layer_names(ids), index.channels(ids).tolist(), strict=True
                ):
                    writer.writerow(
                        [i, layer, ch, repr(float(a.profile[i])), repr(float(a.raw[i]))]
                    )
            paths.append(p)
            meta = {
                "model": self.model.name,
                "image": self.image_name,
                "label": {
                    "index": self.label,
                    "name": self.label_name,
                    "source": self.label_source,
                },
                "filters": a.filter_rows(np.asarray(self._filters, dtype=np.int64)),
                "k": self._k,
                "boost": self._boost,
                "percentile": self._percentile,
                "masks": [
                    {
                        "kind": m.kind,
                        "points": [list(pt) for pt in m.points],
                        "fill": m.fill,
                        "note": m.note,
                    }
                    for m in self._state.masks
                ],
                "prediction": self.prediction(5),
            }
            p = out / "filters.json"
            p.write_text(json.dumps(meta, indent=2) + "\n")
            paths.append(p)
            heat = self.input_map()
            paths.append(image_png(self._state.image, out / "image.png"))
            paths.append(image_png(heat, out / "input_map.png"))
            paths.append(image_png(overlay(self._state.image, heat), out / "overlay.png"))
            paths.append(image_png(overlay(self._state.image, self.cam()), out / "gradcam.png"))
            return paths

    def close(self) -> None:
        """Free the kept graph of the current analysis (the session is unusable afterwards)."""
        with self._lock:
            self._state.analysis.release()

    def __repr__(self) -> str:
        return (
            f"Session({self.model.name}, image={self.image_name!r}, label={self.label_name!r} "
            f"({self.label_source}), |F|={len(self._filters)}, masks={len(self._state.masks)}, "
            f"version={self.version})"
        )
