"""Static PNG figures: sorted saliency profiles, images and side-by-side panels.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through
``pyplot``: no global figure registry, no GUI backend, safe in threads and headless runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._types import SortedProfile
from .encode import _to_uint8, encode_png
from .figures import label_positions

__all__ = ["encode_png", "image_png", "profile_png", "triptych_png"]

_DPI = 120
_POINT_COLOR = "#1f77b4"
_HIGHLIGHT_COLOR = "#d62728"


def _prepare_path(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = _prepare_path(path)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    fig.savefig(out, dpi=_DPI, format="png")
    return out


def profile_png(
    profile: SortedProfile,
    path: str | os.PathLike[str],
    *,
    highlight: np.ndarray | None = None,
    title: str = "",
    ylabel: str = "standardized saliency",
    max_layer_labels: int = 20,
) -> Path:
    """Plot a per-layer sorted saliency profile (the paper's Fig. 1/2) to a PNG.

    Parameters
    ----------
    profile : SortedProfile
        Arrays of shape [F]; layer ``i`` spans ``[i, i + 1)`` on the x axis.
    path : str or PathLike
        Output file; parent folders are created.
    highlight : np.ndarray, shape [K], optional
        Filter ids (``profile.filter_id`` values) drawn larger in a contrasting colour,
        with a legend entry ``"boosted filters (n)"``, n the number of matching points.
    title : str
    ylabel : str
    max_layer_labels : int, default 20
        At most this many layer names on the x axis (evenly thinned); 0 hides them.

    Returns
    -------
    Path
        The written file (about 14 x 4.5 in at 120 dpi).
    """
    x = np.asarray(profile.x, dtype=np.float64).reshape(-1)
    y = np.asarray(profile.y, dtype=np.float64).reshape(-1)
    ids = np.asarray(profile.filter_id).reshape(-1)
    layer = np.asarray(profile.layer, dtype=np.int64).reshape(-1)
    if not (x.shape == y.shape == ids.shape == layer.shape):
        raise ValueError(
            f"profile arrays differ in length: x {x.shape}, y {y.shape}, filter_id {ids.shape}, layer {layer.shape}"
        )
    if x.size == 0:
        raise ValueError("profile is empty: nothing to plot")
    if isinstance(max_layer_labels, bool) or int(max_layer_labels) != max_layer_labels or max_layer_labels < 0:
        raise ValueError(f"max_layer_labels must be a non-negative int, got {max_layer_labels!r}")
    names = list(profile.layer_names)
    n_layers = max(len(names), int(layer.max()) + 1)

    fig = Figure(figsize=(14.0, 4.5), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()

    # One line per layer, drawn as a single artist: a NaN between layers breaks the line so
    # the descending runs are not joined across a boundary (fast for ~25k filters).
    breaks = np.flatnonzero(np.diff(layer) != 0) + 1
    ax.plot(np.insert(x, breaks, np.nan), np.insert(y, breaks, np.nan), color=_POINT_COLOR, lw=0.8, alpha=0.6)
    ax.scatter(x, y, s=4, color=_POINT_COLOR, linewidths=0, zorder=2)

    if n_layers > 1:
        ax.vlines(
            np.arange(1, n_layers), 0, 1, transform=ax.get_xaxis_transform(), colors="0.85", linewidth=0.6, zorder=0
        )
    if np.nanmin(y) < 0.0 < np.nanmax(y):
        ax.axhline(0.0, color="0.6", linewidth=0.6, zorder=0)

    if highlight is not None:
        hit = np.isin(ids, np.asarray(highlight).reshape(-1))
        ax.scatter(
            x[hit],
            y[hit],
            s=36,
            color=_HIGHLIGHT_COLOR,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
            label=f"boosted filters ({int(hit.sum())})",
        )
        ax.legend(loc="upper right", frameon=True)

    ax.set_xlim(0, n_layers)
    shown = label_positions(n_layers, int(max_layer_labels))
    ax.set_xticks(shown + 0.5)
    ax.set_xticklabels(
        [names[i] if i < len(names) else str(i) for i in shown], rotation=60, ha="right", fontsize=7
    )
    ax.set_xlabel("layer (filters sorted by saliency within each layer)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def image_png(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an image as PNG, whatever the file suffix.

    Parameters
    ----------
    array : np.ndarray, shape [H, W, 3] or [H, W]
        RGB (uint8, or float in [0, 1]) or grayscale (uint8, or float in [0, 1]).
    path : str or PathLike
        Output file; parent folders are created.

    Returns
    -------
    Path
    """
    data = encode_png(array)
    # imencode + write_bytes rather than imwrite: works for any path encoding on every OS.
    out = _prepare_path(path)
    out.write_bytes(data)
    return out


def triptych_png(
    panels: list[tuple[str, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    suptitle: str = "",
    cmap: str = "jet",
) -> Path:
    """Draw N images side by side with titles (e.g. image | saliency | overlay).

    Parameters
    ----------
    panels : list of (str, np.ndarray)
        Title and image per panel. An array of shape [H, W, 3] is shown as RGB (uint8, or
        float in [0, 1]); shape [H, W] is a scalar map drawn with ``cmap`` and a colourbar
        (range [0, 1] for floats inside it, else the data range).
    path : str or PathLike
        Output file; parent folders are created.
    suptitle : str
    cmap : str, default "jet"
        Matplotlib colour map for scalar panels.

    Returns
    -------
    Path
    """
    if not panels:
        raise ValueError("triptych_png needs at least one panel")
    n = len(panels)
    fig = Figure(figsize=(4.0 * n, 4.4 if suptitle else 4.0), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (label, array) in zip(axes, panels, strict=True):
        arr = np.asarray(array)
        if arr.ndim == 3 and arr.shape[2] == 3:
            ax.imshow(_to_uint8(arr), interpolation="nearest")
        elif arr.ndim == 2:
            data = arr.astype(np.float64)
            if not np.all(np.isfinite(data)):
                raise ValueError(f"panel {label!r} contains NaN or infinite values")
            if np.issubdtype(arr.dtype, np.floating) and data.min() >= 0.0 and data.max() <= 1.0:
                vmin, vmax = 0.0, 1.0
            else:
                vmin, vmax = float(data.min()), float(data.max())
            im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        else:
            raise ValueError(f"panel {label!r} must have shape [H, W, 3] or [H, W], got {arr.shape}")
        ax.set_title(label)
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, path)
