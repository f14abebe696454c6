"""Per-filter validation statistics (mean and std of the raw profile), streamed in float64.

:class:`RunningMoments` keeps (count, mean, M2) and merges batches with Chan et al.'s parallel
formula; :func:`merge_moments` applies the same formula to the moments of several shards (the
ranks of a ``torchrun`` run), so that a sharded run gives the statistics of one pass to float64
rounding.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["FilterStats", "RunningMoments", "merge_moments"]

from .standardize import STD_FLOOR, safe_std


@dataclass(frozen=True)
class FilterStats:
    """Mean and standard deviation of each filter's raw saliency over a validation set.

    Attributes
    ----------
    mean, std : Tensor, shape [F], float64, on the CPU
    meta : dict
        Provenance (model id, weights checksum, layout checksum, n, dataset, created...).
    """

    mean: Tensor
    std: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape or self.mean.dim() != 1:
            raise ValueError(
                f"mean and std must be 1-D of equal length; got {tuple(self.mean.shape)} and "
                f"{tuple(self.std.shape)}"
            )

    @property
    def n_filters(self) -> int:
        return int(self.mean.shape[0])

    def safe_std(self) -> Tensor:
        """``std`` with dead filters (std <= 1e-14) set to 1: a new tensor, ``std`` is untouched."""
        return safe_std(self.std)

    def safe_mean(self) -> Tensor:
        """``mean`` with (near) zeros set to 1, for the ``norm`` mode; a new tensor."""
        return torch.where(self.mean.abs() <= STD_FLOOR, torch.ones_like(self.mean), self.mean)


class RunningMoments:
    """Streaming mean and variance per feature (Chan et al.'s parallel update), float64.

    Memory is O(F) whatever the number of samples; batches of any size can be merged.

    Parameters
    ----------
    n_features : int
    """

    def __init__(self, n_features: int) -> None:
        self.n = 0
        self.mean = torch.zeros(n_features, dtype=torch.float64)
        self.m2 = torch.zeros(n_features, dtype=torch.float64)

    def update(self, batch: Tensor) -> None:
        """Merge a batch of shape [B, F]."""
        x = batch.detach().to(device="cpu", dtype=torch.float64)
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected a [B, {self.mean.shape[0]}] batch; got {tuple(x.shape)}")
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(dim=0)
        self.merge(nb, mb, ((x - mb) ** 2).sum(dim=0))

    def merge(self, count: int, mean: Tensor, m2: Tensor) -> None:
        """Merge the moments of another group of samples (Chan et al.'s parallel formula).

        Parameters
        ----------
        count : int
            Samples in the other group; 0 changes nothing.
        mean, m2 : Tensor, shape [F]
            Their mean and sum of squared deviations from it (float64 for an exact merge).
        """
        nb = int(count)
        if nb < 0:
            raise ValueError(f"count must be at least 0; got {count}")
        if nb == 0:
            return
        mb = mean.detach().to(device="cpu", dtype=torch.float64)
        m2b = m2.detach().to(device="cpu", dtype=torch.float64)
        if mb.shape != self.mean.shape or m2b.shape != self.mean.shape:
            raise ValueError(f"expected moments of shape [{self.mean.shape[0]}]; "
                             f"got {tuple(mb.shape)}, {tuple(m2b.shape)}")
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def std(self, *, ddof: int = 1) -> Tensor:
        """Standard deviation; ``ddof=1`` (sample std, as ``torch.std``) by default."""
        if self.n - ddof <= 0:
            return torch.zeros_like(self.m2)
        return (self.m2 / (self.n - ddof)).sqrt()


def merge_moments(parts: Sequence[tuple[int, Tensor, Tensor]], n_features: int) -> RunningMoments:
    """The moments of the union of several groups of samples, from each group's moments.

    Chan et al.'s pairwise formula, applied in the order given (the result does not depend on
    where the groups' boundaries fall, up to float64 rounding).

    Parameters
    ----------
    parts : sequence of (count, mean, m2)
        ``count`` samples per group (0 allowed: an empty shard), ``mean`` and ``m2`` of shape [F].
    n_features : int
        F, so that an empty sequence (or only empty groups) gives zero moments of the right size.

    Returns
    -------
    RunningMoments
        ``n`` = the total count; ``mean``, ``m2`` of shape [F], float64.
    """
    total = RunningMoments(n_features)
    for count, mean, m2 in parts:
        total.merge(count, mean, m2)
    return total
