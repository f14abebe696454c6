"""``psal experiment profiles``: the paper's Fig. 1 and Fig. 2 over a dataset.

Fig. 1: the raw profile (mean |∂L/∂θ| per filter) averaged over the data, each layer sorted
descending, layers left to right with equal width. Fig. 2: the standardized profile averaged over
correctly and over incorrectly classified images, same layout. The paper's claim: mistakes are
more salient (a higher mean standardized saliency) than correct predictions, most of all in the
deep layers. Everything is read from the profile index (``psal index``), standardized with the
explainer's statistics.

Result keys: ``mean_saliency_correct``, ``mean_saliency_incorrect`` (mean over the images of
the group and over all filters), ``n_correct``, ``n_incorrect``, their ``*_ci`` (95% bootstrap
over images), ``difference`` (incorrect − correct, with CI), and ``by_depth`` with the same
means over the first / middle / last third of the conv layers (``shallow``, ``middle``, ``deep``).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import int_arg
from ._dataset import DEPTHS, boot_rng, depth_ranges, require_stats

if TYPE_CHECKING:
    from .base import ExperimentContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk", type=int_arg(low=1), default=256, help="rows standardized at a time (memory bound)")


def run(ctx: ExperimentContext) -> dict[str, Any]:
    from ..kernels.layout import sorted_profile
    from ..kernels.neighbours import layer_columns
    from .statistics import mean_ci

    stats = require_stats(ctx)
    idx = ctx.index
    findex = ctx.explainer.index
    n, n_filters = len(idx), idx.n_filters
    chunk = max(1, int(ctx.option("chunk", 256) or 256))
    ranges = depth_ranges(findex)
    cols = {name: layer_columns(findex, r) for name, r in ranges.items()}
    correct = np.asarray(idx.correct, dtype=bool)

    # One pass over the index in row blocks: per-filter sums (raw; standardized per group) and
    # per-image means (all filters; each depth third). Memory: one block, whatever N.
    raw_sum = np.zeros(n_filters)
    z_sum = {True: np.zeros(n_filters), False: np.zeros(n_filters)}
    per_image = np.zeros(n)
    per_depth = {name: np.zeros(n) for name in cols}
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        raw_sum += np.asarray(idx.raw[start : start + rows.size], dtype=np.float64).sum(axis=0)
        z = idx.standardized(stats, rows=rows).astype(np.float64)
        for group in (True, False):
            z_sum[group] += z[correct[rows] == group].sum(axis=0)
        per_image[rows] = z.mean(axis=1)
        for name, c in cols.items():
            per_depth[name][rows] = z[:, c].mean(axis=1)
    n_correct, n_incorrect = int(correct.sum()), int((~correct).sum())
    mean_raw = raw_sum / max(n, 1)
    mean_z = {g: z_sum[g] / max(int((correct == g).sum()), 1) for g in (True, False)}

    def group_stats(values: np.ndarray, key: int) -> dict[str, Any]:
        c = mean_ci(values[correct], rng=boot_rng(ctx, key, 0))
        w = mean_ci(values[~correct], rng=boot_rng(ctx, key, 1))
        d = _difference_ci(values[~correct], values[correct], rng=boot_rng(ctx, key, 2))
        return {
            "mean_saliency_correct": c["mean"],
            "mean_saliency_incorrect": w["mean"],
            "mean_saliency_correct_ci": [c["ci_low"], c["ci_high"]],
            "mean_saliency_incorrect_ci": [w["ci_low"], w["ci_high"]],
            "difference": d[0],
            "difference_ci": [d[1], d[2]],
        }

    overall = group_stats(per_image, 0)
    by_depth = {}
    for i, name in enumerate(cols):
        first, last = ranges[name]
        by_depth[name] = {**group_stats(per_depth[name], i + 1), "layers": [first, last],
                          "layer_names": [findex.layers[first].name, findex.layers[last].name],
                          "n_filters": int(cols[name].stop - cols[name].start)}

    # Figures.
    raw_layout = sorted_profile(mean_raw, findex)
    layouts = {g: sorted_profile(mean_z[g], findex) for g in (True, False)}
    ctx.writer.png("fig1_raw_profile.png", _fig_profiles(
        [(raw_layout, f"raw profile averaged over {n} images", "#1f77b4")],
        ylabel="mean |dL/dθ| per filter", n_layers=len(findex.layers),
        title=f"Fig. 1: raw saliency profile ({ctx.explainer.model.name})"))
    ctx.writer.png("fig2_standardized_profiles.png", _fig_profiles(
        [(layouts[True], f"correct (n={n_correct})", "#2ca02c"),
         (layouts[False], f"incorrect (n={n_incorrect})", "#d62728")],
        ylabel="mean standardized saliency", n_layers=len(findex.layers), shared=True,
        title="Fig. 2: standardized profiles, correct vs incorrect"))
    ctx.writer.png("fig2_by_depth.png", _fig_depth(overall, by_depth))
    ctx.writer.html("profiles.html", _html(raw_layout, layouts, n_correct, n_incorrect, findex))

    summary = [
        f"mean standardized saliency: incorrect {overall['mean_saliency_incorrect']:+.3f} "
        f"(n={n_incorrect}) vs correct {overall['mean_saliency_correct']:+.3f} (n={n_correct}); "
        f"difference {overall['difference']:+.3f} [95% CI {overall['difference_ci'][0]:+.3f}, "
        f"{overall['difference_ci'][1]:+.3f}]",
        *(f"  {name:<8} layers {d['layers'][0]}-{d['layers'][1]}: incorrect {d['mean_saliency_incorrect']:+.3f} "
          f"vs correct {d['mean_saliency_correct']:+.3f}" for name, d in by_depth.items()),
        "paper (ResNet-50, Fig. 2): mistakes are more salient, most of all in deep layers",
    ]
    return {
        **overall,
        "n_correct": n_correct,
        "n_incorrect": n_incorrect,
        "accuracy": float(correct.mean()) if n else float("nan"),
        "by_depth": by_depth,
        "depths": list(DEPTHS),
        "mean_raw_by_layer": [float(mean_raw[la.offset : la.offset + la.n_filters].mean()) for la in findex.layers],
        "index": {k: idx.meta.get(k) for k in ("dataset", "n", "created", "package_version")},
        "summary": summary,
    }


def _difference_ci(a: np.ndarray, b: np.ndarray, *, rng: np.random.Generator,
                   n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean(a) − mean(b) with a 95% bootstrap interval (independent resamples of both groups)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return (float("nan"),) * 3
    diff = float(a.mean() - b.mean())
    boots_a = a[rng.integers(0, a.size, (n_boot, a.size))].mean(axis=1)
    boots = boots_a - b[rng.integers(0, b.size, (n_boot, b.size))].mean(axis=1)
    low, high = np.quantile(boots, [0.025, 0.975])
    return diff, min(float(low), diff), max(float(high), diff)


def _fig_profiles(series: list[tuple[Any, str, str]], *, ylabel: str, n_layers: int, title: str,
                  shared: bool = False) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 2.6 * len(series) + 0.6))
    axes = fig.subplots(len(series), 1, sharex=True, sharey=shared, squeeze=False)[:, 0]
    for ax, (layout, label, color) in zip(axes, series, strict=True):
        ax.scatter(layout.x, layout.y, s=1.5, color=color, linewidths=0, rasterized=True)
        for i in range(1, n_layers):
            ax.axvline(i, color="0.85", linewidth=0.4, zorder=0)
        ax.axhline(0, color="0.5", linewidth=0.6)
        ax.set_ylabel(ylabel)
        ax.set_title(label, fontsize=10, loc="left")
        ax.set_xlim(0, n_layers)
    axes[-1].set_xlabel("layers, shallow → deep (filters sorted within each layer)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _fig_depth(overall: dict[str, Any], by_depth: dict[str, dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    groups = {"all layers": overall, **by_depth}
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    x = np.arange(len(groups))
    bars = ((-0.18, "correct", "correct", "#2ca02c"), (0.18, "incorrect", "incorrect", "#d62728"))
    for shift, key, label, color in bars:
        means = np.array([g[f"mean_saliency_{key}"] for g in groups.values()])
        ci = np.array([g[f"mean_saliency_{key}_ci"] for g in groups.values()], dtype=float)
        err = np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means]))
        ax.bar(x + shift, means, width=0.36, color=color, label=label, yerr=err, capsize=3)
    ax.axhline(0, color="0.4", linewidth=0.6)
    ax.set_xticks(x, list(groups))
    ax.set_ylabel("mean standardized saliency")
    ax.set_title("Mistakes vs correct predictions, by depth (95% bootstrap CI)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig


def _html(raw_layout: Any, layouts: dict[bool, Any], n_correct: int, n_incorrect: int, findex: Any) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Fig. 1: raw profile, mean over the data",
                                        "Fig. 2: standardized profile, correct vs incorrect"))
    names = np.array([la.name for la in findex.layers])

    def trace(layout: Any, name: str, color: str) -> Any:
        text = [f"{names[layer]}[{fid - findex.layers[layer].offset}] (filter {fid})"
                for layer, fid in zip(layout.layer, layout.filter_id, strict=True)]
        return go.Scattergl(x=layout.x, y=layout.y, mode="markers", name=name, text=text,
                            marker={"size": 3, "color": color},
                            hovertemplate="%{text}<br>%{y:.4g}<extra>" + name + "</extra>")

    fig.add_trace(trace(raw_layout, "raw (all images)", "#1f77b4"), row=1, col=1)
    fig.add_trace(trace(layouts[True], f"correct (n={n_correct})", "#2ca02c"), row=2, col=1)
    fig.add_trace(trace(layouts[False], f"incorrect (n={n_incorrect})", "#d62728"), row=2, col=1)
    fig.update_layout(height=750, title="Parameter saliency profiles over the dataset", template="plotly_white")
    fig.update_xaxes(title_text="layers, shallow → deep", row=2, col=1)
    return fig
