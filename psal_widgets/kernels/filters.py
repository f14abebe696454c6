"""The filter index: every output channel of every ``nn.Conv2d`` is one filter.

Order follows the model's ``named_parameters()`` (the order of the original
parameter-saliency code), channels in order inside each layer. Grouped and
depthwise convolutions count one filter per output channel as well.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from torch import nn

__all__ = ["ConvLayer", "FilterIndex"]


@dataclass(frozen=True)
class ConvLayer:
    """One convolutional layer of the index.

    Attributes
    ----------
    name : str
        Module name as in ``model.named_modules()`` (``""`` for a bare conv).
    param_name : str
        Name of its weight in ``model.named_parameters()``.
    n_filters : int
        Output channels (filters) of the layer.
    offset : int
        Id of the layer's first filter in the flat profile.
    """

    name: str
    param_name: str
    n_filters: int
    offset: int


class FilterIndex:
    """Maps flat filter ids to (layer, channel) and back.

    Parameters
    ----------
    model : nn.Module
        Any module; its ``nn.Conv2d`` weights define the filters.
    """

    def __init__(self, model: nn.Module) -> None:
        conv_by_weight = {
            id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)
        }
        layers: list[ConvLayer] = []
        offset = 0
        for pname, p in model.named_parameters():
            mname = conv_by_weight.get(id(p))
            if mname is None:
                continue
            layers.append(ConvLayer(mname, pname, int(p.shape[0]), offset))
            offset += int(p.shape[0])
        if not layers:
            raise ValueError(
                "the model has no trainable nn.Conv2d layer, so it has no filters to rank; "
                "parameter-space saliency needs a convolutional network"
            )
        self.layers: tuple[ConvLayer, ...] = tuple(layers)
        self.n_filters: int = offset
        self.param_names: tuple[str, ...] = tuple(layer.param_name for layer in layers)
        self._starts = np.array([layer.offset for layer in layers], dtype=np.int64)
        self._by_name = {layer.name: i for i, layer in enumerate(layers)}

    def __len__(self) -> int:
        return self.n_filters

    def __repr__(self) -> str:
        return f"FilterIndex({len(self.layers)} conv layers, {self.n_filters} filters)"

    @property
    def sizes(self) -> list[int]:
        """Filters per layer, in order."""
        return [layer.n_filters for layer in self.layers]

    def layer_of(self, filter_ids: int | np.ndarray) -> np.ndarray:
        """Layer position (0-based) of each filter id, shape like ``filter_ids``."""
        ids = np.asarray(filter_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_filters):
            raise IndexError(f"filter ids must lie in [0, {self.n_filters}); got {ids.min()}..{ids.max()}")
        return np.searchsorted(self._starts, ids, side="right") - 1

    def locate(self, filter_id: int) -> tuple[str, int]:
        """Return ``(layer name, channel)`` of one filter id."""
        pos = int(self.layer_of(int(filter_id)))
        layer = self.layers[pos]
        return layer.name, int(filter_id) - layer.offset

    def filter_id(self, layer: str, channel: int) -> int:
        """Flat id of ``channel`` in the layer named ``layer``."""
        try:
            conv = self.layers[self._by_name[layer]]
        except KeyError:
            raise KeyError(f"no conv layer named {layer!r}; see `psal layers` for the names") from None
        if not 0 <= channel < conv.n_filters:
            raise IndexError(f"layer {layer!r} has {conv.n_filters} filters; channel {channel} is out of range")
        return conv.offset + channel

    def layer_names(self, filter_ids: np.ndarray) -> list[str]:
        """Layer name of each filter id."""
        return [self.layers[i].name for i in self.layer_of(filter_ids).tolist()]

    def channels(self, filter_ids: np.ndarray) -> np.ndarray:
        """Channel of each filter id inside its layer."""
        ids = np.asarray(filter_ids, dtype=np.int64)
        return ids - self._starts[self.layer_of(ids)]

    def checksum(self) -> str:
        """A short hash of the layout (layer names and sizes), to match statistics to models."""
        text = ";".join(f"{layer.param_name}:{layer.n_filters}" for layer in self.layers)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_rows(self) -> list[dict[str, object]]:
        """One dict per layer: ``name``, ``param``, ``filters``, ``offset``."""
        return [
            {"name": la.name, "param": la.param_name, "filters": la.n_filters, "offset": la.offset}
            for la in self.layers
        ]
