"""One small least-recently-used cache for maps, gradients and CAMs of a session.

Keys start with the state generation, so entries of an old image / label / mask state are
never served for a new one (they age out); the rest of the key is what the value depends on
(filter set, boost, percentile, CAM method / class / layer...).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """At most ``size`` values; the least recently used one is dropped first.

    Parameters
    ----------
    size : int
        Capacity (a few filter sets toggled back and forth fit in 16).

    Notes
    -----
    Not thread-safe by itself: the session calls it under its lock.
    """

    def __init__(self, size: int = 16) -> None:
        if size < 1:
            raise ValueError(f"cache size must be at least 1; got {size}")
        self.size = size
        self._data: OrderedDict[Hashable, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: Hashable, value: V) -> V:
        """Store ``value``; returns it."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value of ``key``, else ``compute()`` stored under it."""
        hit = self.get(key)
        return hit if hit is not None else self.put(key, compute())

    def clear(self) -> None:
        self._data.clear()
