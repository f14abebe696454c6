"""The per-layer sorted layout of a profile (paper Fig. 1/2), as plain arrays for the viz layer."""
from __future__ import annotations

import numpy as np

from .._types import SortedProfile
from .filters import FilterIndex

__all__ = ["sorted_profile"]


def sorted_profile(profile: np.ndarray, index: FilterIndex) -> SortedProfile:
    """Sort each layer's values descending and place layers left to right, equal width each.

    Parameters
    ----------
    profile : np.ndarray, shape [F]
        One value per filter, in index order.
    index : FilterIndex

    Returns
    -------
    SortedProfile
        Arrays of shape [F]; layer ``i`` spans ``x`` in ``[i, i + 1)``.
    """
    values = np.asarray(profile, dtype=np.float64).reshape(-1)
    if values.shape[0] != index.n_filters:
        raise ValueError(f"profile has {values.shape[0]} values but the model has {index.n_filters} filters")
    order_parts, x_parts, layer_parts = [], [], []
    for pos, layer in enumerate(index.layers):
        block = values[layer.offset : layer.offset + layer.n_filters]
        # Stable sort on the negated values: descending, ties keep channel order.
        order = np.argsort(-block, kind="stable") + layer.offset
        order_parts.append(order)
        x_parts.append(pos + (np.arange(layer.n_filters) + 0.5) / layer.n_filters)
        layer_parts.append(np.full(layer.n_filters, pos, dtype=np.int64))
    ids = np.concatenate(order_parts)
    global_rank = np.empty(index.n_filters, dtype=np.int64)
    global_rank[np.argsort(-values, kind="stable")] = np.arange(index.n_filters)
    return SortedProfile(
        x=np.concatenate(x_parts),
        y=values[ids],
        filter_id=ids,
        layer=np.concatenate(layer_parts),
        rank=global_rank[ids],
        layer_names=[layer.name for layer in index.layers],
    )
