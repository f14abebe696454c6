"""Standardization of saliency profiles, in one place (paper §2: z-scores against validation data).

``(s - mu) / sigma`` per filter, with a dead filter's ``sigma <= 1e-14`` taken as 1. One formula
serves torch tensors (the differentiable profile of :class:`~.saliency.InputSaliency`, batches of
:func:`~.profiles.filter_profiles`) and NumPy arrays (the neighbour bank, ``Analysis``). Nothing
here mutates its inputs. NumPy callers never import torch through this module.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .._types import MODES, Mode

if TYPE_CHECKING:
    from torch import Tensor

    from .stats import FilterStats

__all__ = ["STD_FLOOR", "profile_mode", "safe_std", "zscore"]

#: Below this a filter's std counts as zero (dead filter); it is divided by 1 instead.
STD_FLOOR = 1e-14

ArrayT = TypeVar("ArrayT", "np.ndarray", "Tensor")


def safe_std(std: ArrayT) -> ArrayT:
    """``std`` with dead filters (``std <= 1e-14``) set to 1; a new array or tensor."""
    if isinstance(std, np.ndarray):
        return np.where(std <= STD_FLOOR, 1.0, std).astype(std.dtype, copy=False)
    import torch  # only tensors reach here

    return torch.where(std <= STD_FLOOR, torch.ones_like(std), std)


def zscore(raw: ArrayT, mean: ArrayT, std: ArrayT) -> ArrayT:
    """``(raw - mean) / std`` per filter, dead filters divided by 1.

    Parameters
    ----------
    raw : np.ndarray or Tensor, shape [..., F]
        Raw profiles: mean |grad| per filter (the statistics describe absolute gradients).
    mean, std : same kind as ``raw``, shape [F]
        Per-filter validation statistics. Tensors are moved to ``raw``'s device and dtype;
        arrays are used in float64.

    Returns
    -------
    np.ndarray (float64) or Tensor (``raw``'s dtype), shape [..., F]
    """
    if isinstance(raw, np.ndarray):
        mu = np.asarray(mean, dtype=np.float64)
        sd = safe_std(np.asarray(std, dtype=np.float64))
        return (raw.astype(np.float64, copy=False) - mu) / sd
    mu_t = mean.to(device=raw.device, dtype=raw.dtype)
    sd_t = safe_std(std).to(device=raw.device, dtype=raw.dtype)
    return (raw - mu_t) / sd_t


def profile_mode(raw: Tensor, stats: FilterStats | None, mode: Mode) -> Tensor:
    """Turn a raw profile into the profile of ``mode``; never mutates its inputs.

    Parameters
    ----------
    raw : Tensor, shape [..., F]
    stats : FilterStats or None
        Needed for ``std`` and ``norm``.
    mode : {"std", "raw", "norm", "signed"}
        ``std``: :func:`zscore`; ``norm``: ``raw / mean``; ``raw`` and ``signed`` unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode in ("raw", "signed"):
        return raw
    if stats is None:
        raise ValueError(
            f"mode {mode!r} needs validation statistics for this model: compute them with "
            "`psal stats --data DIR`, pass --stats DIR, or use --mode raw"
        )
    if stats.n_filters != raw.shape[-1]:
        raise ValueError(
            f"the statistics describe {stats.n_filters} filters but the model has {raw.shape[-1]}: "
            "they belong to another model"
        )
    if mode == "std":
        return zscore(raw, stats.mean, stats.std)
    return raw / stats.safe_mean().to(device=raw.device, dtype=raw.dtype)
