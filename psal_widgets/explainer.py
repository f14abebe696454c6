"""One-image analysis: the Python API behind ``psal explain`` and the explorer (returns NumPy).

>>> ex = Explainer()                                  # embedded default model + its statistics
>>> a = ex.analyze("raw_images/grace_hopper.jpg")     # label: known one, else the prediction
>>> a.top_filters(10)                                 # the most salient filters
>>> heat = a.input_map()                              # [224, 224] in [0, 1], top-10 boosted
>>> heat2 = a.input_map(filters=[17, 2048])           # any filter set: one backward pass

All torch compute the explorer's session needs goes through this module (predictions, analyses,
CAMs, pruning): ``psal_widgets.session`` itself imports no torch.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ._types import CamMethod, Mode, SortedProfile
from .checks import filter_ids, profile_mode
from .kernels.basis import SaliencyBasis
from .kernels.cam import cam_map, conv_layer_names
from .kernels.filters import FilterIndex
from .kernels.interventions import FilterPruner, Recipe
from .kernels.layout import sorted_profile
from .kernels.saliency import InputSaliency, negligible_set
from .kernels.standardize import STD_FLOOR, zscore
from .kernels.stats import FilterStats
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .session.resolve import choose_label, known_label, known_label_index, read_image
from .store import StatsError, default_stats_dir, load_stats
from .viz.heatmap import saliency_heatmap

__all__ = ["Analysis", "Explainer", "Prediction", "known_label"]

#: An image: a path, encoded bytes, a PIL image, or a display array (uint8 [H, W, 3], already
#: resized and cropped as :meth:`Preprocess.display` makes it).
ImageLike = str | os.PathLike[str] | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k list."""

    index: int
    name: str
    prob: float


class Explainer:
    """A model, its filter index and its validation statistics, ready to analyze images.

    Parameters
    ----------
    model : LoadedModel or str
        A loaded model or a model name for :func:`psal_widgets.models.load_model`.
    stats : FilterStats, path, ``"auto"`` or None
        Validation statistics; ``"auto"`` looks for the model's helper objects
        ($PSAL_HELPER_OBJECTS, the project's ``helper_objects/``, the user cache), skipping
        those recorded for other weights (:func:`~psal_widgets.store.find_stats_dir`).
    mode : {"std", "raw", "norm", "signed"}
        Default profile mode; ``std`` and ``norm`` need statistics.
    device : str, optional
    weights : path, optional
        Weights file when ``model`` is a name.
    """

    def __init__(
        self,
        model: LoadedModel | str = DEFAULT_MODEL,
        *,
        stats: FilterStats | str | os.PathLike[str] | None = "auto",
        mode: Mode = "std",
        device: str | None = None,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        profile_mode(mode)  # before a model is loaded: a typo costs nothing
        self.model = load_model(model, weights=weights, device=device) if isinstance(model, str) else model
        self.index = FilterIndex(self.model.module)
        self.mode: Mode = mode
        if stats == "auto":
            # Skips statistics of other weights: `psal stats --weights W` writes beside the model's own.
            found = default_stats_dir(self.model.name, self.model.weights_id)
            stats = found if found is not None else None
        if stats is not None and not isinstance(stats, FilterStats):
            stats = load_stats(stats, index=self.index, weights_id=self.model.weights_id)
        self.stats: FilterStats | None = stats
        if self.stats is None and mode in ("std", "norm"):
            raise StatsError(
                f"no validation statistics found for {self.model.name}, and mode {mode!r} needs them: "
                "compute them with `psal stats --data DIR --model NAME`, pass --stats DIR, "
                "or use --mode raw"
            )

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return self.model.device

    def cam_layers(self) -> list[str]:
        """Conv layer names a CAM can attach to, in module order (the default is the last)."""
        return conv_layer_names(self.model.module)

    def dead_filters(self) -> np.ndarray:
        """Ids of the dead filters: std ≤ 1e-14 over the validation set, so their standardized
        saliency is 0 on every image (134 in the default model). Empty without statistics.

        Returns
        -------
        np.ndarray of int64, ascending
        """
        if self.stats is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.stats.std.double().numpy() <= STD_FLOOR).astype(np.int64)

    def prepare(self, image: ImageLike) -> tuple[torch.Tensor, np.ndarray]:
        """Load and preprocess an image.

        Returns
        -------
        (Tensor [3, H, W] on the model's device, np.ndarray uint8 [H, W, 3] as the model sees it)
        """
        if isinstance(image, np.ndarray):
            shown = image
        else:
            shown = self.model.preprocess.display(read_image(image).pil)
        # normalize(display(img)) equals preprocess(img) exactly (see Preprocess.normalize).
        return self.model.preprocess.normalize(shown).to(self.model.device), shown

    def predict(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities of one image, shape [C] (float32).

        Parameters
        ----------
        image : np.ndarray uint8 [H, W, 3] (a display image) or Tensor [3, H, W] (preprocessed)
        """
        x = image if isinstance(image, torch.Tensor) else self.prepare(image)[0]
        with torch.no_grad():
            logits = self.model.module(x.to(self.model.device).unsqueeze(0))[0]
        return torch.softmax(logits.float(), dim=0).cpu().numpy()

    def analyze(
        self,
        image: ImageLike | torch.Tensor,
        *,
        label: int | str | None = None,
        mode: Mode | None = None,
        known: int | str | None = None,
    ) -> Analysis:
        """Profile one image for ``label`` (index, WordNet id or name).

        Without ``label`` the image's known label is studied (``known``, a ``labels.csv``
        beside the file, an ILSVRC2012 validation file name; see
        :mod:`psal_widgets.session.resolve`, shared with the explorer), else the prediction.
        A tensor ``image`` must already be preprocessed, shape [3, H, W]; a NumPy array is a
        display image, uint8 [H, W, 3].
        """
        if mode is not None:
            profile_mode(mode)
        path = None
        if isinstance(image, torch.Tensor):
            x = image.detach().to(self.model.device)
            shown = self.model.preprocess.denormalize(x.cpu())
        elif isinstance(image, np.ndarray):
            x, shown = self.prepare(image)
        else:
            loaded = read_image(image)
            path = loaded.path
            x, shown = self.prepare(self.model.preprocess.display(loaded.pil))
        labels = self.model.labels
        choice = choose_label(labels, label, known_label_index(labels, path=path, known=known))
        label_idx = choice.index
        if label_idx is None:
            label_idx = int(np.argmax(self.predict(x)))
        kernel = InputSaliency(
            self.model.module, x, label_idx, index=self.index, stats=self.stats, mode=mode or self.mode
        )
        return Analysis(self, x, shown, label_idx, choice.source, kernel)


class Analysis:
    """Everything about one image and one label; new filter sets reuse the kept graph."""

    def __init__(
        self,
        explainer: Explainer,
        x: torch.Tensor,
        shown: np.ndarray,
        label: int,
        label_source: str,
        kernel: InputSaliency,
    ) -> None:
        self.explainer = explainer
        self.x = x
        #: The image as the model sees it, uint8 [H, W, 3].
        self.image = shown
        self.label = label
        self.label_source = label_source
        self._kernel = kernel
        self._basis: SaliencyBasis | None = None
        #: Profile in the explainer's mode, shape [F].
        self.profile: np.ndarray = kernel.values.cpu().double().numpy()
        #: Raw profile of the mode, shape [F]: mean |grad| per filter (mean grad for ``signed``).
        self.raw: np.ndarray = kernel.raw.cpu().double().numpy()
        #: Mean |grad| per filter whatever the mode, shape [F] (what the statistics describe).
        self.abs_raw: np.ndarray = kernel.abs_raw.cpu().double().numpy()
        #: Class probabilities, shape [C].
        self.probs: np.ndarray = torch.softmax(kernel.logits.float(), dim=0).cpu().numpy()

    @property
    def index(self) -> FilterIndex:
        return self.explainer.index

    @property
    def label_name(self) -> str:
        return self.explainer.model.labels.name(self.label)

    def standardized(self) -> np.ndarray | None:
        """The standardized profile whatever the mode, shape [F]; None without statistics.

        Always the z-score of the ABSOLUTE raw profile: the validation statistics describe mean
        |grad| per filter, so a signed profile cannot be standardized with them.
        """
        stats = self.explainer.stats
        if stats is None:
            return None
        return zscore(self.abs_raw, stats.mean.numpy(), stats.std.numpy())

    def prediction(self, top: int = 5) -> list[Prediction]:
        """The ``top`` most probable classes, descending."""
        order = np.argsort(-self.probs)[:top]
        names = self.explainer.model.labels
        return [Prediction(int(i), names.name(int(i)), float(self.probs[i])) for i in order]

    def top_filters(self, k: int = 10, *, by: np.ndarray | None = None) -> np.ndarray:
        """Ids of the ``k`` most salient filters (of ``by`` if given, else the profile), shape [k]."""
        values = self.profile if by is None else np.asarray(by)
        if not 1 <= k <= values.shape[0]:
            raise ValueError(f"k must lie in [1, {values.shape[0]}]; got {k}")
        return np.argsort(-values, kind="stable")[:k]

    def input_gradient(
        self, filters: Sequence[int] | np.ndarray | None = None, *, k: int = 10, boost: float = 100.0
    ) -> np.ndarray:
        """Signed gradient of the cosine distance w.r.t. the input, shape [3, H, W]."""
        ids = self.top_filters(k) if filters is None else filter_ids(filters, n_filters=self.index.n_filters)
        return self._kernel.gradient(ids, boost=boost).cpu().numpy()

    def zero_map_reason(self, filters: Sequence[int] | np.ndarray) -> str | None:
        """Why the input map of ``filters`` is exactly zero, or None when it is not.

        Boosting entries that are ~0 (dead filters: σ = 0 over the validation set, so ŝ = 0 on
        every image) or boosting the whole profile leaves the target on the profile's ray: the
        cosine distance cannot change, so its gradient is exactly zero.
        """
        ids = torch.as_tensor(filter_ids(filters, n_filters=self.index.n_filters))
        if ids.numel() == 0 or not negligible_set(self._kernel.values, ids):
            return None
        inside = float(np.sum(self.profile[ids.numpy()] ** 2))
        if inside <= float(np.sum(self.profile**2)) * 1e-24:
            return ("these filters have saliency ~0 on this image (dead filters: their std over the "
                    "validation set is 0), so boosting them cannot change the profile: the map is zero")
        return "F holds the whole profile: boosting all of it only rescales it, so the map is zero"

    # -- the basis (GUIDE §3): maps of a filter set as a weighted sum of per-filter maps ----------
    def basis_add(self, filters: Sequence[int] | np.ndarray, *, chunk: int = 4) -> None:
        """Build the basis maps of ``filters`` (the first call also builds ``g₀ = Jᵀŝ``).

        Each filter costs about one backward pass; call with the best-ranked filters first and
        a few at a time so that other work can interleave.
        """
        if self._basis is None:
            self._basis = SaliencyBasis(self._kernel)
        self._basis.add([int(i) for i in np.asarray(filters).reshape(-1)], chunk=chunk)

    def basis_started(self) -> bool:
        return self._basis is not None

    def basis_covers(self, filters: Sequence[int] | np.ndarray) -> bool:
        """Whether every filter of the set has its basis map (then the map costs milliseconds)."""
        return self._basis is not None and self._basis.covers(np.asarray(filters).reshape(-1))

    def basis_candidates(self) -> list[int]:
        """Filter ids with a basis map, in build order."""
        return [] if self._basis is None else self._basis.candidates

    def basis_gradient(self, filters: Sequence[int] | np.ndarray, *, boost: float = 100.0) -> np.ndarray:
        """:meth:`input_gradient` of a covered set from the basis, shape [3, H, W]."""
        if self._basis is None:
            raise KeyError("no basis yet: call basis_add() first")
        return self._basis.gradient(np.asarray(filters).reshape(-1), boost=boost).cpu().numpy()

    def input_map(
        self,
        filters: Sequence[int] | np.ndarray | None = None,
        *,
        k: int = 10,
        boost: float = 100.0,
        percentile: float = 90.0,
    ) -> np.ndarray:
        """Visual input-saliency map (threshold, clip at 99th percentile, 3x3 blur), [H, W] in [0, 1]."""
        return saliency_heatmap(self.input_gradient(filters, k=k, boost=boost), percentile=percentile)

    def cam(
        self, *, method: CamMethod = "gradcam", target: int | str | None = None, layer: str | None = None
    ) -> np.ndarray:
        """A CAM map for ``target`` (default: the analysed label), shape [H, W] in [0, 1]."""
        names = self.explainer.model.labels
        cls = self.label if target is None else names.resolve(target)
        return cam_map(self.explainer.model.module, self.x, target_class=cls, method=method, layer=layer)

    def sorted_profile(self) -> SortedProfile:
        """The per-layer sorted layout of the profile (paper Fig. 1/2)."""
        return sorted_profile(self.profile, self.index)

    def filter_rows(self, ids: np.ndarray) -> list[dict[str, object]]:
        """``{id, layer, channel, saliency}`` for each filter id."""
        layers = self.index.layer_names(ids)
        channels = self.index.channels(ids)
        return [
            {"id": int(i), "layer": la, "channel": int(c), "saliency": float(self.profile[i])}
            for i, la, c in zip(ids, layers, channels, strict=True)
        ]

    def pruner(self, *, recipe: Recipe = "zero-output") -> FilterPruner:
        """A :class:`FilterPruner` for the model (this image traces the conv -> batch norm pairs).

        Reusable for any image of the same model: keep it to skip the trace next time.
        """
        return FilterPruner(self.explainer.model.module, self.index, self.x, recipe=recipe)

    def pruned_probabilities(
        self, filters: Sequence[int] | np.ndarray, *, pruner: FilterPruner | None = None
    ) -> np.ndarray:
        """Class probabilities of this image with ``filters`` turned off, shape [C] (float32).

        The filters' weights and their batch norm's bias are zeroed on a copy of the
        parameters (paper §3.1); the model is untouched.

        Parameters
        ----------
        filters : sequence of int, shape [K]
        pruner : FilterPruner, optional
            From :meth:`pruner` (built here when omitted).
        """
        pruner = pruner if pruner is not None else self.pruner()
        logits = pruner.logits(self.x, filter_ids(filters, n_filters=self.index.n_filters))
        return torch.softmax(logits.float(), dim=0).cpu().numpy()

    def release(self) -> None:
        """Free the kept graph and the basis maps (further input maps then fail)."""
        self._basis = None
        self._kernel.release()
