"""The three numbers of the explorer's controls, validated once: k, boost and percentile."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Validated, immutable settings; change them with :meth:`replace` (validates again).

    Attributes
    ----------
    n_filters : int
        Filters of the model: the upper bound of ``k``.
    k : int
        Size of F in ``top-k`` mode, in [1, n_filters].
    boost : float
        Factor of the entries of F in the target profile (paper: 100), positive and finite.
    percentile : float
        Lower clipping percentile of the input-saliency map, in [0, 99) (the map is clipped
        at the 99th).
    """

    n_filters: int
    k: int = 10
    boost: float = 100.0
    percentile: float = 90.0

    def __post_init__(self) -> None:
        n = self.n_filters
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= n:
            raise ValueError(f"k must be an integer in [1, {n}]; got {k!r}")
        boost = _number(self.boost, "boost")
        if not (np.isfinite(boost) and boost > 0.0):
            raise ValueError(
                f"boost must be a positive finite number (the paper uses 100); got {boost}"
            )
        p = _number(self.percentile, "percentile")
        if not (np.isfinite(p) and 0.0 <= p < 99.0):
            raise ValueError(
                f"percentile must be in [0, 99) (values are clipped at the 99th); got {p}"
            )
        # Plain Python numbers: JSON export and equality with user values.
        object.__setattr__(self, "k", int(k))
        object.__setattr__(self, "boost", boost)
        object.__setattr__(self, "percentile", p)

    def replace(
        self, *, k: int | None = None, boost: float | None = None, percentile: float | None = None
    ) -> Settings:
        """A validated copy with the given fields changed (raises ValueError, self unchanged)."""
        changes: dict[str, float] = {}
        if k is not None:
            changes["k"] = k
        if boost is not None:
            changes["boost"] = boost
        if percentile is not None:
            changes["percentile"] = percentile
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _number(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number; got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a number; got {value!r}") from err
