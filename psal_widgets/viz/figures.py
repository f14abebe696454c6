"""NumPy -> plotly figure pieces for the interactive profile chart (paper Fig. 1/2 layout).

Plain dicts of NumPy arrays, no torch and no ipywidgets: the widget tier passes them to
``plotly.graph_objects.FigureWidget(data=..., layout=...)`` and to ``trace.update(...)``.

The chart has two traces:

0. ``profile``: every filter, per-layer sorted (21,008 points for the default model), a
   ``scattergl`` trace. Its ``customdata`` rows are ``[filter_id, channel, rank]`` so that a
   click or a selection maps straight back to filter ids.
1. ``boosted``: the points of the boosted set F drawn on top, larger, in a contrasting colour,
   in the order of F (point ``j`` of this trace is filter ``F[j]``).
2. ``dead``: the dead filters (σ = 0 over the validation set, so their standardized saliency
   is 0 on every image and boosting them changes nothing), drawn as small grey hollow circles
   in the order given (point ``j`` is filter ``dead[j]``); the hover says why they sit at 0.
   Their points on trace 0 are NaN (not drawn, not hovered, not selected), so that the hover
   and a click there reach this trace. No legend entry when the model has none.

Ranks shown to people start at 1 (the most salient filter of the model), in the hover text and in
``customdata``.

Layer boundaries are layout shapes (a faint vertical line between two layers, a darker one between
two stages). A deep model has too many layers to name on the axis (49 for the default model), so
the x tick labels name *stages*, groups of consecutive layers sharing a name prefix (``blocks.3``,
``layer2``); every point's hover text names its own layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._types import SortedProfile

__all__ = [
    "DEAD_HOVER_TEMPLATE",
    "DEAD_NAME",
    "DEAD_TRACE",
    "HOVER_TEMPLATE",
    "PROFILE_TRACE",
    "HIGHLIGHT_TRACE",
    "dead_update",
    "highlight_update",
    "label_positions",
    "layer_groups",
    "layer_shapes",
    "point_channels",
    "positions_of",
    "profile_figure",
    "profile_layout",
    "profile_update",
    "value_range",
]

#: Trace positions in the figure (the widget relies on this order).
PROFILE_TRACE = 0
HIGHLIGHT_TRACE = 1
DEAD_TRACE = 2

_POINT_COLOR = "#4c72b0"
_HIGHLIGHT_COLOR = "#e8453c"
#: Dead filters: a light grey ring with a white centre, a little larger than a live point so
#: that it covers the blue dot under it, but lighter, so that 134 of them at 0 stay unobtrusive.
_DEAD_MARKER = {"size": 6, "color": "white", "line": {"color": "#a0a0a0", "width": 1}}
#: Legend entry of the dead-filter trace.
DEAD_NAME = "dead filter (σ = 0)"

#: Hover text: layer name (``text``), channel, saliency, rank (1 = most salient) and flat filter id.
HOVER_TEMPLATE = (
    "<b>%{text}</b> channel %{customdata[1]}<br>"
    "standardized saliency %{y:.3f}<br>rank %{customdata[2]} (1 = most salient)<br>"
    "filter id %{customdata[0]}<extra></extra>"
)

#: Hover text of a dead filter: why it sits at 0, and that its map is zero.
DEAD_HOVER_TEMPLATE = (
    "<b>%{text}</b> channel %{customdata[1]}<br>"
    "<b>dead filter</b>: σ = 0 over the validation set,<br>"
    "so its standardized saliency is %{y:.3f} on every image<br>"
    "boosting it changes nothing: its input map is zero<br>"
    "filter id %{customdata[0]}<extra></extra>"
)


def _arrays(
    profile: SortedProfile,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The profile's arrays, flattened and checked to have one entry per filter."""
    x = np.asarray(profile.x, dtype=np.float64).reshape(-1)
    y = np.asarray(profile.y, dtype=np.float64).reshape(-1)
    ids = np.asarray(profile.filter_id, dtype=np.int64).reshape(-1)
    layer = np.asarray(profile.layer, dtype=np.int64).reshape(-1)
    rank = np.asarray(profile.rank, dtype=np.int64).reshape(-1)
    if not (x.shape == y.shape == ids.shape == layer.shape == rank.shape):
        raise ValueError(
            f"profile arrays differ in length: x {x.shape}, y {y.shape}, filter_id {ids.shape}, "
            f"layer {layer.shape}, rank {rank.shape}"
        )
    if x.size == 0:
        raise ValueError("profile is empty: nothing to plot")
    return x, y, ids, layer, rank


def _n_layers(profile: SortedProfile, layer: np.ndarray) -> int:
    return max(len(profile.layer_names), int(layer.max()) + 1)


def point_channels(profile: SortedProfile) -> np.ndarray:
    """Channel of every point inside its layer.

    Layers occupy contiguous filter-id ranges, so a layer's first id is the smallest id among
    its points and ``channel = filter_id - first id``.

    Returns
    -------
    np.ndarray, shape [F], int64
    """
    _, _, ids, layer, _ = _arrays(profile)
    first = np.full(int(layer.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, layer, ids)
    return ids - first[layer]


def positions_of(profile: SortedProfile, filter_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Point positions (indices into the profile arrays) of the given filter ids, in their order.

    Parameters
    ----------
    profile : SortedProfile
    filter_ids : sequence of int, length K

    Returns
    -------
    np.ndarray, shape [K], int64

    Raises
    ------
    ValueError
        For an id that is not in the profile.
    """
    _, _, ids, _, _ = _arrays(profile)
    wanted = np.asarray(filter_ids, dtype=np.int64).reshape(-1)
    pos = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    pos[ids] = np.arange(ids.size)
    bad = wanted[(wanted < 0) | (wanted >= pos.size)]
    if bad.size == 0:
        bad = wanted[pos[wanted] < 0]
    if bad.size:
        raise ValueError(
            f"filter ids not in the profile: {bad.tolist()[:10]} (valid: 0-{ids.max()})"
        )
    return pos[wanted]


def _customdata(profile: SortedProfile) -> np.ndarray:
    """Rows ``[filter_id, channel, rank]`` with the rank counted from 1 (as people count)."""
    _, _, ids, _, rank = _arrays(profile)
    return np.stack([ids, point_channels(profile), rank + 1], axis=1)


def profile_update(profile: SortedProfile, dead: Sequence[int] | np.ndarray = ()) -> dict[str, np.ndarray]:
    """What changes on the profile trace when the analysis changes (new image, label or mask).

    Parameters
    ----------
    profile : SortedProfile
    dead : sequence of int
        Dead filters: their points are left out of this trace (``y`` NaN, which plotly neither
        draws nor hovers) because the dead trace draws them; otherwise a hover there would
        show this trace's point, which wins ties, and never say that the filter is dead.

    Returns
    -------
    dict
        ``y`` [F] float64 saliency (NaN at dead filters), ``customdata`` [F, 3] int64 rows
        ``[filter_id, channel, rank]`` (rank 1 = the most salient filter).
        (``x`` and the layer names only depend on the model.)
    """
    _, y, _, _, _ = _arrays(profile)
    dead_ids = np.asarray(dead, dtype=np.int64).reshape(-1)
    if dead_ids.size:
        y = y.copy()
        y[positions_of(profile, dead_ids)] = np.nan
    return {"y": y, "customdata": _customdata(profile)}


def highlight_update(profile: SortedProfile, filters: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Data of the highlight trace for the boosted set F, point ``j`` = filter ``filters[j]``.

    Returns
    -------
    dict
        ``x``, ``y`` [K] float64, ``customdata`` [K, 3] int64, ``text`` (layer names, length K)
        and ``name`` (legend entry ``"boosted set F (K)"``).
    """
    x, y, _, layer, _ = _arrays(profile)
    pos = positions_of(profile, filters)
    names = _layer_text(profile, layer[pos])
    return {
        "x": x[pos],
        "y": y[pos],
        "customdata": _customdata(profile)[pos],
        "text": names,
        "name": f"boosted set F ({pos.size})",
    }


def dead_update(profile: SortedProfile, dead: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Data of the dead-filter trace, point ``j`` = filter ``dead[j]`` (where the profile puts it).

    Returns
    -------
    dict
        ``x``, ``y`` [D] float64, ``customdata`` [D, 3] int64, ``text`` (layer names, length D).
    """
    x, y, _, layer, _ = _arrays(profile)
    pos = positions_of(profile, dead)
    return {
        "x": x[pos],
        "y": y[pos],
        "customdata": _customdata(profile)[pos],
        "text": _layer_text(profile, layer[pos]),
    }


def _layer_text(profile: SortedProfile, layer: np.ndarray) -> list[str]:
    names = list(profile.layer_names)
    return [names[i] if i < len(names) else f"layer {i}" for i in layer.tolist()]


def layer_shapes(
    n_layers: int,
    *,
    color: str = "rgba(0, 0, 0, 0.12)",
    strong: Sequence[int] = (),
    strong_color: str = "rgba(0, 0, 0, 0.45)",
) -> list[dict[str, Any]]:
    """One vertical line at every boundary between two layers (``n_layers - 1`` shapes).

    Boundaries listed in ``strong`` (x positions, e.g. where a stage starts) are drawn darker.
    """
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or n_layers < 0:
        raise ValueError(f"n_layers must be a non-negative int, got {n_layers!r}")
    darker = {int(i) for i in strong}
    return [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": float(i),
            "x1": float(i),
            "y0": 0.0,
            "y1": 1.0,
            "line": {"color": strong_color if i in darker else color, "width": 1},
            "layer": "below",
        }
        for i in range(1, int(n_layers))
    ]


def layer_groups(names: Sequence[str], *, min_groups: int = 5) -> list[tuple[int, int, str]]:
    """Consecutive layers grouped into stages by their name prefix, for readable axis labels.

    The prefix keeps the first ``d`` dot-separated parts of each name, with the smallest ``d``
    that gives at least ``min(min_groups, len(names))`` groups (``blocks.3.1.conv_dw`` ->
    ``blocks.3`` for EfficientNet, ``layer2.0.conv1`` -> ``layer2`` for ResNet). Only runs of
    consecutive layers form a group, so the groups tile the axis in order.

    Returns
    -------
    list of (start, stop, label)
        Layer positions ``start <= i < stop``; the label is the shared prefix.
    """
    parts = [str(n).split(".") for n in names]
    if not parts:
        return []
    want = min(int(min_groups), len(parts))
    deepest = max(len(p) for p in parts)
    for depth in range(1, deepest + 1):
        keys = [".".join(p[:depth]) for p in parts]
        runs: list[tuple[int, int, str]] = []
        for i, key in enumerate(keys):
            if runs and runs[-1][2] == key:
                runs[-1] = (runs[-1][0], i + 1, key)
            else:
                runs.append((i, i + 1, key))
        if len(runs) >= want:
            return runs
    return [(i, i + 1, str(n)) for i, n in enumerate(names)]


def label_positions(n_layers: int, max_labels: int) -> np.ndarray:
    """Indices of the layers that get a tick label: evenly thinned to at most ``max_labels``."""
    if max_labels <= 0 or n_layers == 0:
        return np.zeros(0, dtype=np.int64)
    step = max(1, math.ceil(n_layers / max_labels))
    return np.arange(0, n_layers, step)


def value_range(
    y: np.ndarray, keep: np.ndarray | Sequence[float] = (), *, quantile: float = 99.9
) -> tuple[float, float, int]:
    """The y range of the chart: up to the ``quantile`` of the values, widened to show ``keep``.

    A few filters can sit thousands of standard deviations out (e.g. early filters on a flat
    masked region, whose validation spread is tiny); an axis scaled to them flattens everything
    else to a line at 0. Values above the range stay in the data (double-click autoscales).

    Parameters
    ----------
    y : np.ndarray, shape [F]
    keep : array of float
        Values that must be visible (the boosted set F).
    quantile : float, default 99.9

    Returns
    -------
    (low, high, n_above)
        Padded range and the number of values above it.
    """
    values = np.asarray(y, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return -1.0, 1.0, 0
    kept = np.asarray(keep, dtype=np.float64).reshape(-1)
    kept = kept[np.isfinite(kept)]
    lo = float(values.min())
    hi = float(np.percentile(values, quantile))
    if kept.size:
        hi = max(hi, float(kept.max()))
    pad = 0.04 * (hi - lo if hi > lo else 1.0)
    return lo - pad, hi + pad, int((values > hi + pad).sum())


def clipped_note(n_above: int) -> list[dict[str, Any]]:
    """Layout annotations telling how many points lie above the y range (none when 0)."""
    if n_above <= 0:
        return []
    return [
        {
            "text": f"{n_above} filter{'s' if n_above > 1 else ''} above the axis "
            "(double-click the chart to show all)",
            "xref": "paper",
            "yref": "paper",
            "x": 0.0,
            "y": 1.0,
            "xanchor": "left",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 10, "color": "#777"},
        }
    ]


def profile_layout(
    profile: SortedProfile,
    filters: Sequence[int] | np.ndarray = (),
    *,
    title: str = "",
    height: int = 420,
    width: int | None = None,
    max_layer_labels: int = 60,
    dragmode: str = "select",
) -> dict[str, Any]:
    """Layout of the chart: layer boundaries, layer names as x ticks, box-select drag by default.

    Parameters
    ----------
    profile : SortedProfile
    title : str
    height : int, default 420
    width : int, optional
        Pixels; None lets the chart fill its container.
    max_layer_labels : int, default 60
        At most this many stage names on the x axis (evenly thinned), see :func:`layer_groups`.
    dragmode : {"select", "lasso", "zoom", "pan"}, default "select"

    Returns
    -------
    dict
        A plotly layout; pass it as ``FigureWidget(layout=...)`` (a layout set after creation but
        before display does not reach the browser in Voila).
    """
    _, y, _, layer, _ = _arrays(profile)
    n_layers = _n_layers(profile, layer)
    names = list(profile.layer_names) + [str(i) for i in range(len(profile.layer_names), n_layers)]
    groups = layer_groups(names)
    # Thin the stage labels when even the stages are too many to name.
    shown = label_positions(len(groups), int(max_layer_labels))
    ids = np.asarray(filters, dtype=np.int64).reshape(-1)
    lo, hi, n_above = value_range(y, y[positions_of(profile, ids)] if ids.size else ())
    layout: dict[str, Any] = {
        "height": int(height),
        "margin": {"l": 60, "r": 20, "t": 40 if title else 28, "b": 70},
        "xaxis": {
            "range": [0.0, float(n_layers)],
            "tickmode": "array",
            "tickvals": [0.5 * (groups[i][0] + groups[i][1]) for i in shown.tolist()],
            "ticktext": [groups[i][2] for i in shown.tolist()],
            # Steep enough that the names of two one-layer stages side by side do not overlap.
            "tickangle": -60 if len(shown) > 6 else 0,
            "tickfont": {"size": 10},
            "showgrid": False,
            "zeroline": False,
            "title": {
                "text": "layers, grouped by stage (hover a point for its layer; "
                "filters sorted by saliency within each layer)",
                "font": {"size": 11},
            },
        },
        "yaxis": {
            "range": [lo, hi],
            "zeroline": True,
            "zerolinecolor": "rgba(0, 0, 0, 0.3)",
            "title": {"text": "standardized saliency"},
        },
        "shapes": layer_shapes(n_layers, strong=[g[0] for g in groups[1:]]),
        "annotations": clipped_note(n_above),
        "dragmode": dragmode,
        "hovermode": "closest",
        "clickmode": "event",
        "showlegend": True,
        "legend": {
            "orientation": "h",
            "x": 1.0,
            "xanchor": "right",
            "y": 1.02,
            "yanchor": "bottom",
        },
        "plot_bgcolor": "white",
        "uirevision": "profile",
    }
    if title:
        layout["title"] = {"text": title, "x": 0.01, "font": {"size": 13}}
    if width is not None:
        layout["width"] = int(width)
    return layout


def profile_figure(
    profile: SortedProfile,
    filters: Sequence[int] | np.ndarray = (),
    *,
    dead: Sequence[int] | np.ndarray = (),
    title: str = "",
    height: int = 420,
    width: int | None = None,
    max_layer_labels: int = 60,
) -> dict[str, Any]:
    """The whole chart as ``{"data": [profile, highlight, dead], "layout": {...}}``.

    Parameters
    ----------
    profile : SortedProfile
        Arrays of shape [F].
    filters : sequence of int
        The boosted set F, drawn as the highlight trace in this order.
    dead : sequence of int
        Dead filters (σ = 0 over the validation set; ``Session.dead_filters()``), drawn as the
        dead trace in this order.

    Returns
    -------
    dict
        ``data[PROFILE_TRACE]`` is a ``scattergl`` trace with ``x``, ``y`` equal to the profile's
        arrays, ``customdata`` [F, 3] = ``[filter_id, channel, rank]`` and ``text`` = layer names;
        ``data[HIGHLIGHT_TRACE]`` holds the F points (see :func:`highlight_update`),
        ``data[DEAD_TRACE]`` the dead filters (see :func:`dead_update`).
    """
    x, _, _, layer, _ = _arrays(profile)
    # Selections must not dim the rest of the chart: a selection only adds filters to F.
    unselected = {"marker": {"opacity": 1.0}}
    main = {
        "type": "scattergl",
        "name": "filters (one dot each)",
        "mode": "markers",
        "x": x,
        "text": _layer_text(profile, layer),
        "hovertemplate": HOVER_TEMPLATE,
        "marker": {"size": 4, "color": _POINT_COLOR, "opacity": 0.75},
        "unselected": unselected,
        "showlegend": True,
        **profile_update(profile, dead),
    }
    boosted = {
        "type": "scattergl",
        "mode": "markers",
        "hovertemplate": HOVER_TEMPLATE,
        "marker": {"size": 10, "color": _HIGHLIGHT_COLOR, "line": {"color": "black", "width": 1}},
        "unselected": unselected,
        "showlegend": True,
        **highlight_update(profile, filters),
    }
    dead_ids = np.asarray(dead, dtype=np.int64).reshape(-1)
    dead_trace = {
        "type": "scattergl",
        "mode": "markers",
        "name": DEAD_NAME,
        "hovertemplate": DEAD_HOVER_TEMPLATE,
        "marker": _DEAD_MARKER,
        "unselected": unselected,
        "showlegend": bool(dead_ids.size),
        **dead_update(profile, dead_ids),
    }
    layout = profile_layout(
        profile,
        filters,
        title=title,
        height=height,
        width=width,
        max_layer_labels=max_layer_labels,
    )
    return {"data": [main, boosted, dead_trace], "layout": layout}
