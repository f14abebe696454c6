"""Input-space saliency (paper §3.4, GUIDE §2): which pixels make the chosen filters malfunction.

``M_F = |∇_x D_C(ŝ(x, y), s'_F)|`` where ``s'_F`` is the profile with the filters in ``F``
multiplied by a boost factor (a constant) and ``D_C`` the cosine distance. The profile must be
differentiable w.r.t. the input, so the parameter gradients are taken with ``create_graph=True``.

One :class:`InputSaliency` object belongs to one image and label: it keeps the differentiable
profile (its graph) so that each new filter set costs only the second backward pass.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._types import Mode
from ..checks import boost_factor, filter_ids
from .filters import FilterIndex
from .grad_mode import requires_grad
from .profiles import conv_weights, per_filter
from .standardize import profile_mode
from .stats import FilterStats

__all__ = ["InputSaliency", "NEGLIGIBLE", "boosted_target", "cosine_distance", "distance_weights", "negligible_set"]

#: ‖ŝ_F‖ / ‖ŝ‖ below which boosting F cannot move the target: the exact map is zero.
NEGLIGIBLE = 1e-12


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a, b)`` of two vectors of shape [F]."""
    return 1.0 - F.cosine_similarity(a, b, dim=0)


def boosted_target(profile: Tensor, filters: Tensor, *, boost: float) -> Tensor:
    """The constant target ``s'_F``: a detached copy of ``profile`` with ``filters`` times ``boost``.

    Parameters
    ----------
    profile : Tensor, shape [F]
    filters : Tensor of int64, shape [K]
    """
    target = profile.detach().clone()
    target[filters] = target[filters] * boost
    return target


def distance_weights(profile: Tensor, filters: Tensor, *, boost: float) -> tuple[float, float]:
    """Closed-form ``∂D_C(ŝ, s'_F)/∂ŝ = a1·ŝ + a2·ŝ|_F`` (GUIDE §3), in float64.

    With ``c = ŝ + (b - 1)·ŝ|_F``: ``a1 = (b - 1)·‖ŝ_F‖² / (‖ŝ‖³‖c‖)`` and
    ``a2 = -(b - 1) / (‖ŝ‖‖c‖)``. Written without the subtraction ``1/(‖ŝ‖‖c‖) - ŝ·c/(‖ŝ‖³‖c‖)``,
    whose float32 cancellation leaves ~1e-8 where the true value is 0 (a filter set whose
    entries are all ~0, e.g. dead filters with σ = 0: the heatmap would stretch that residue of
    ``g₀ = Jᵀŝ`` to full contrast).

    Parameters
    ----------
    profile : Tensor, shape [F]
        The (detached) profile ŝ.
    filters : Tensor of int64, shape [K]
        Distinct ids of F.
    boost : float
        The boost factor b.

    Returns
    -------
    (a1, a2) : Python floats; both 0.0 when ``‖ŝ_F‖ / ‖ŝ‖ < NEGLIGIBLE`` or ``b == 1`` (the map is zero).
    """
    s = profile.detach().to(torch.float64)
    b = boost_factor(boost)  # nan, inf, 0 or negative: refused here rather than a NaN map later
    ns = float(s.norm())
    if ns == 0.0 or b == 1.0 or negligible_set(s, filters):
        return 0.0, 0.0
    nf2 = float(s[filters].pow(2).sum())
    nc = (ns**2 + (b * b - 1.0) * nf2) ** 0.5  # ‖ŝ + (b - 1)ŝ_F‖, no cancellation for b > 0
    return (b - 1.0) * nf2 / (ns**3 * nc), -(b - 1.0) / (ns * nc)


def negligible_set(profile: Tensor, filters: Tensor) -> bool:
    """Whether boosting ``F`` leaves the target on the profile's ray, so that the cosine distance
    stays 0 for every input and every boost: ``‖ŝ_F‖`` negligible against ``‖ŝ‖`` (F holds only
    ~0 entries, e.g. dead filters), or ``‖ŝ_{not F}‖`` negligible (F holds the whole profile)."""
    s = profile.detach().to(torch.float64)
    inside = torch.zeros_like(s, dtype=torch.bool)
    inside[filters] = True
    tiny = (NEGLIGIBLE * float(s.norm())) ** 2
    return float(s[inside].pow(2).sum()) <= tiny or float(s[~inside].pow(2).sum()) <= tiny


class InputSaliency:
    """Differentiable profile of one image, answering input-gradient queries for filter sets.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits; must be in eval mode (batch norm on running statistics).
    image : Tensor, shape [3, H, W] or [1, 3, H, W]
        Preprocessed image on the model's device. Not modified.
    label : int
        Class used in the loss.
    index : FilterIndex
    stats : FilterStats, optional
        Needed for ``mode="std"`` or ``"norm"``.
    mode : {"std", "raw", "norm", "signed"}

    Notes
    -----
    Holding the graph costs memory (a few hundred MB for ResNet-50); call :meth:`release`
    or use the object as a context manager when done.
    """

    def __init__(
        self,
        model: nn.Module,
        image: Tensor,
        label: int,
        *,
        index: FilterIndex,
        stats: FilterStats | None = None,
        mode: Mode = "std",
    ) -> None:
        if model.training:
            raise ValueError("put the model in eval mode first (model.eval()): batch norm must not adapt")
        x = image.detach().clone()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError(f"image must have shape [3, H, W] or [1, 3, H, W]; got {tuple(image.shape)}")
        self.index = index
        self.label = int(label)
        self._x = x.requires_grad_(True)
        with requires_grad(conv_weights(model, index), True) as weights:
            logits = model(self._x)
            loss = F.cross_entropy(logits, torch.tensor([self.label], device=x.device))
            grads = torch.autograd.grad(loss, weights, create_graph=True)
        signed = mode == "signed"
        raw = per_filter(grads, signed=signed)
        #: The differentiable profile, shape [F] (its graph is kept for later queries).
        self.profile: Tensor | None = profile_mode(raw, stats, mode)
        #: Detached copies for callers.
        self.values: Tensor = self.profile.detach()
        #: The raw profile of the mode, shape [F]: mean |grad| per filter (mean grad if signed).
        self.raw: Tensor = raw.detach()
        #: Mean |grad| per filter whatever the mode, shape [F]: what validation statistics describe.
        self.abs_raw: Tensor = per_filter([g.detach() for g in grads]) if signed else self.raw
        self.logits: Tensor = logits.detach()[0]

    # -- queries -------------------------------------------------------------------------
    def top_filters(self, k: int = 10) -> Tensor:
        """Ids of the ``k`` largest profile entries, descending, shape [k]."""
        if not 1 <= k <= self.values.numel():
            raise ValueError(f"k must lie in [1, {self.values.numel()}]; got {k}")
        return torch.topk(self.values, k).indices

    def _filter_tensor(self, filters: Sequence[int] | Tensor | np.ndarray | None, k: int) -> Tensor:
        if filters is None:
            return self.top_filters(k)
        # Integers only (1.7 is refused, never truncated to 1) and in range.
        ids = torch.as_tensor(filter_ids(filters, n_filters=self.values.numel()), device=self.values.device)
        if ids.numel() == 0:
            raise ValueError("the filter set is empty: pick at least one filter")
        return torch.unique(ids)

    def gradient(
        self,
        filters: Sequence[int] | Tensor | np.ndarray | None = None,
        *,
        k: int = 10,
        boost: float = 100.0,
    ) -> Tensor:
        """Signed input gradient of the cosine distance to the boosted profile.

        Parameters
        ----------
        filters : sequence of int, optional
            The filter set ``F``; the top ``k`` filters when omitted.
        k : int
        boost : float
            Factor applied to the entries of ``F`` in the target.

        Returns
        -------
        Tensor, shape [3, H, W]
            ``∇_x D_C(ŝ, s'_F)``; take ``abs()`` (or the viz post-processing) for the map.
        """
        if self.profile is None:
            raise RuntimeError("this InputSaliency was released; build a new one for the image")
        ids = self._filter_tensor(filters, k)
        a1, a2 = distance_weights(self.values, ids, boost=boost)
        if a1 == 0.0 and a2 == 0.0:
            # Boosting entries that are ~0 leaves the target on the profile's ray: D_C stays 0.
            return torch.zeros_like(self._x[0])
        # ∂D/∂ŝ in closed form (float64 weights), then ONE vector-Jacobian product through the
        # kept graph; retain_graph: the next filter set reuses the same differentiable profile.
        v = self.values.to(torch.float64) * a1
        v[ids] += self.values[ids].to(torch.float64) * a2
        (g,) = torch.autograd.grad(self.profile, self._x, grad_outputs=v.to(self.values.dtype), retain_graph=True)
        return g[0].detach()

    def release(self) -> None:
        """Drop the kept graph (frees its memory)."""
        self.profile = None
        self._x = self._x.detach()

    def __enter__(self) -> InputSaliency:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
