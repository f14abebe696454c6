"""The boosted filter set F and how it was chosen (``top-k`` or ``custom``).

A :class:`Selection` is immutable; every edit returns a new one. Hand edits (toggle, add, set)
switch to ``custom``; :meth:`Selection.top_k` switches back. What happens on a new state
(image, label, masks) is decided by :meth:`Selection.follow`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .types import FILTER_MODES, FilterMode

__all__ = ["Selection", "check_filter_mode", "check_ids"]


def check_ids(ids: Iterable[int], n_filters: int) -> list[int]:
    """Filter ids as ints in [0, n_filters), duplicates dropped, order kept.

    Raises
    ------
    ValueError
        A non-integer or an id out of range (the message gives the range).
    """
    out: list[int] = []
    for v in ids:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"filter ids must be integers; got {v!r}")
        i = int(v)
        if not 0 <= i < n_filters:
            raise ValueError(
                f"filter id {i} is out of range: the model has {n_filters} filters "
                f"(0..{n_filters - 1})"
            )
        if i not in out:
            out.append(i)
    return out


def check_filter_mode(mode: str) -> FilterMode:
    if mode not in FILTER_MODES:
        raise ValueError(f"filter mode must be one of {', '.join(FILTER_MODES)}; got {mode!r}")
    return mode  # type: ignore[return-value]


@dataclass(frozen=True)
class Selection:
    """F, in the order chosen, and its mode.

    Attributes
    ----------
    ids : tuple of int
    mode : {"top-k", "custom"}
    """

    ids: tuple[int, ...] = ()
    mode: FilterMode = "top-k"

    @classmethod
    def top_k(cls, ranked: Sequence[int]) -> Selection:
        """F := the given top-k ids (most salient first), mode ``top-k``."""
        return cls(tuple(int(i) for i in ranked), "top-k")

    def custom(self, ids: Iterable[int]) -> Selection:
        """F := ``ids`` (already checked), mode ``custom``."""
        return Selection(tuple(ids), "custom")

    def toggled(self, fid: int) -> Selection:
        ids = [f for f in self.ids if f != fid] if fid in self.ids else [*self.ids, fid]
        return self.custom(ids)

    def added(self, new: Iterable[int]) -> Selection:
        return self.custom([*self.ids, *(i for i in new if i not in self.ids)])

    def follow(self, ranked: Sequence[int], *, new_image: bool) -> Selection:
        """The selection for a new state whose top-k ids are ``ranked``.

        ``top-k`` follows the new profile; ``custom`` is kept across label changes and masks,
        and goes back to ``top-k`` for a new image (its filters were picked for another image).
        """
        if self.mode == "custom" and not new_image:
            return self
        return Selection.top_k(ranked)
