"""Which filters get a basis map, in which order (GUIDE §3, issue "instant maps").

With the boosted target held constant, the input map of any filter set inside the candidates is a
weighted sum of per-filter maps (milliseconds instead of a backward pass of ~0.5 s). Building one
map costs about one backward pass, so a plan lists the candidates best first: the global top
``k`` filters by rank, then the top ``per_layer`` filters of each layer (so that a click anywhere
on the chart's peaks is likely covered). The explorer builds them in the background, a few at a
time between clicks, and starts a new plan when the image, label or masks change.

Memory: one map per candidate, ``3·H·W`` float32 (602 KB at 224 px): the default plan (32 global
+ 1 per layer, 81 maps at most for the default model's 49 layers) holds about 50 MB.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BasisPlan", "plan_candidates"]


def plan_candidates(profile: np.ndarray, layer_of: np.ndarray, *, k: int, per_layer: int) -> list[int]:
    """Candidate filter ids, best first: the top ``k`` of ``profile``, then the top ``per_layer``
    of each layer (layers in order of their best filter), without repeats.

    Parameters
    ----------
    profile : np.ndarray, shape [F]
    layer_of : np.ndarray of int, shape [F]
        Layer position of each filter.
    """
    order = np.argsort(-profile, kind="stable")
    out: list[int] = [int(i) for i in order[: max(0, k)]]
    if per_layer > 0:
        seen = set(out)
        taken: dict[int, int] = {}
        for i in order.tolist():  # one pass over the ranking: the best of each layer come first
            layer = int(layer_of[i])
            if taken.get(layer, 0) < per_layer:
                taken[layer] = taken.get(layer, 0) + 1
                if i not in seen:
                    out.append(int(i))
                    seen.add(i)
    return out


@dataclass
class BasisPlan:
    """The candidates of one analysis (one state generation) and how many are built."""

    generation: int
    candidates: list[int]
    built: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.built >= len(self.candidates)

    def next_chunk(self, n: int) -> list[int]:
        return self.candidates[self.built : self.built + max(1, n)]
