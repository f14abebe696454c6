"""NumPy -> plotly figure specs for the explorer's dataset view (no torch, no ipywidgets).

Two figures, each a ``{"data": [...], "layout": {...}}`` dict for
``plotly.graph_objects.FigureWidget(data=..., layout=...)`` (the layout is passed at
construction: in Voila, layout updates made before display never reach the browser):

- :func:`summary_figure`: paper Fig. 2 for a dataset, the mean standardized profile of the
  correctly and of the incorrectly classified images, each sorted per layer (traces
  :data:`CORRECT_TRACE`, :data:`INCORRECT_TRACE`);
- :func:`map_figure`: a 2-D map of saliency space, one ``scattergl`` trace per group (same trace
  numbers), whose ``customdata`` is the dataset row of each point, so a click maps straight back
  to an image, and a third trace (:data:`CURRENT_TRACE`) that marks the open image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .figures import layer_groups, layer_shapes

__all__ = ["CORRECT_TRACE", "CURRENT_TRACE", "GROUP_COLORS", "INCORRECT_TRACE", "map_figure", "map_rows",
           "summary_figure"]

CORRECT_TRACE = 0
INCORRECT_TRACE = 1
#: The map's marker of the image open in the explorer (empty when it is not a dataset image).
CURRENT_TRACE = 2
#: Colours of the two groups (green = correct, red = incorrect), as in the experiments' figures.
GROUP_COLORS = ("#2ca02c", "#d62728")


# The title in the top band of the margin, the legend in the band under it: with both at the
# plot's top edge the legend covered the title.
_TITLE_PLACE: dict[str, Any] = {"x": 0.0, "xref": "paper", "xanchor": "left", "y": 1.0, "yref": "container",
                                "yanchor": "top", "pad": {"t": 6}}
_LEGEND_PLACE: dict[str, Any] = {"orientation": "h", "x": 0.0, "y": 1.02, "yanchor": "bottom", "font": {"size": 11}}

def _axis_ticks(layer_names: Sequence[str]) -> dict[str, Any]:
    """Ticks at the middle of each stage (groups of layers sharing a name prefix)."""
    groups = layer_groups(list(layer_names))
    return {
        "tickmode": "array",
        "tickvals": [(a + b) / 2 for a, b, _ in groups],
        "ticktext": [name for _, _, name in groups],
        "tickangle": -45,
        "tickfont": {"size": 9},
        "range": [0, max(1, len(layer_names))],
    }


def summary_figure(
    x: np.ndarray,
    y_correct: np.ndarray,
    y_incorrect: np.ndarray,
    *,
    layer_names: Sequence[str],
    n_correct: int,
    n_incorrect: int,
    height: int = 300,
) -> dict[str, Any]:
    """Fig. 2: the two per-layer-sorted mean standardized profiles.

    Parameters
    ----------
    x : np.ndarray, shape [F]
        Positions (layer ``i`` spans ``[i, i + 1)``).
    y_correct, y_incorrect : np.ndarray, shape [F]
        Group means, sorted per layer (NaN for an empty group: the trace is empty).
    layer_names : sequence of str
    n_correct, n_incorrect : int
        For the legend.
    height : int

    Returns
    -------
    dict
        ``{"data": [correct, incorrect], "layout": {...}}``.
    """
    xs = np.asarray(x, dtype=np.float64)
    traces = []
    for y, name, n, color in (
        (y_correct, "correct", n_correct, GROUP_COLORS[0]),
        (y_incorrect, "incorrect", n_incorrect, GROUP_COLORS[1]),
    ):
        ys = np.asarray(y, dtype=np.float64)
        ok = np.isfinite(ys)
        traces.append(
            {
                "type": "scattergl",
                "mode": "lines",
                "x": xs[ok],
                "y": ys[ok],
                "name": f"{name} (n={int(n)})",
                "line": {"color": color, "width": 1.2},
                "hovertemplate": f"{name}: %{{y:.2f}}<extra></extra>",
            }
        )
    layout = {
        "height": int(height),
        "margin": {"l": 50, "r": 10, "t": 64, "b": 70},
        "title": {"text": "mean standardized profile, correct vs incorrect (paper Fig. 2)", "font": {"size": 12},
                  **_TITLE_PLACE},
        "xaxis": {**_axis_ticks(layer_names), "title": {"text": "layers (filters sorted within each)",
                                                        "font": {"size": 10}}},
        "yaxis": {"title": {"text": "mean standardized saliency", "font": {"size": 10}}, "zeroline": True},
        "shapes": layer_shapes(len(layer_names)),
        "legend": _LEGEND_PLACE,
        "dragmode": "zoom",
        "hovermode": "x",
    }
    return {"data": traces, "layout": layout}


def map_rows(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dataset rows drawn by the two traces of :func:`map_figure`: (correct rows, incorrect rows),
    each ascending; point ``j`` of trace ``t`` is row ``map_rows(correct)[t][j]``."""
    c = np.asarray(correct, dtype=bool).reshape(-1)
    return np.flatnonzero(c).astype(np.int64), np.flatnonzero(~c).astype(np.int64)


def map_figure(
    coords: np.ndarray,
    correct: np.ndarray,
    hover: Sequence[str],
    *,
    method: str = "pca",
    height: int = 360,
) -> dict[str, Any]:
    """The 2-D map of saliency space: one point per image, coloured by correct / incorrect.

    Parameters
    ----------
    coords : np.ndarray, shape [N, 2]
    correct : np.ndarray of bool, shape [N]
    hover : sequence of str, length N
        Hover text per image (HTML allowed: file, true and predicted class).
    method : str
        Named on the axes (``pca``: PC1 / PC2).
    height : int

    Returns
    -------
    dict
        ``{"data": [correct, incorrect, open image], "layout": {...}}``; the first two traces'
        ``customdata`` holds the dataset rows of their points (:func:`map_rows`); the third is
        empty (the panel moves it to the open image).
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coords must be [N, 2]; got shape {xy.shape}")
    if len(hover) != xy.shape[0] or np.asarray(correct).shape[0] != xy.shape[0]:
        raise ValueError("coords, correct and hover must have one entry per image")
    traces = []
    for rows, name, color in zip(map_rows(correct), ("correct", "incorrect"), GROUP_COLORS, strict=True):
        traces.append(
            {
                "type": "scattergl",
                "mode": "markers",
                "x": xy[rows, 0],
                "y": xy[rows, 1],
                "customdata": rows,
                "text": [hover[i] for i in rows.tolist()],
                "hovertemplate": "%{text}<extra></extra>",
                "name": f"{name} (n={rows.size})",
                "marker": {"color": color, "size": 6, "opacity": 0.75, "line": {"width": 0}},
            }
        )
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "x": [],
            "y": [],
            "name": "open image",
            "hoverinfo": "skip",
            "marker": {"symbol": "star", "size": 16, "color": "#ffd400", "line": {"color": "#000", "width": 1}},
        }
    )
    axis = ("PC1", "PC2") if method == "pca" else (f"{method} 1", f"{method} 2")
    layout = {
        "height": int(height),
        "margin": {"l": 40, "r": 10, "t": 64, "b": 40},
        "title": {"text": f"saliency space ({method.upper()}): click a point to open the image",
                  "font": {"size": 12}, **_TITLE_PLACE},
        "xaxis": {"title": {"text": axis[0], "font": {"size": 10}}, "zeroline": False},
        "yaxis": {"title": {"text": axis[1], "font": {"size": 10}}, "zeroline": False},
        "legend": _LEGEND_PLACE,
        "dragmode": "pan",
        "hovermode": "closest",
        "clickmode": "event",
    }
    return {"data": traces, "layout": layout}
