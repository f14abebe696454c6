"""``psal experiment neighbors``: nearest neighbours in saliency space (§3.2, A.2, A.4, Figs. 4-5).

Every image of the index is a reference; its ``--n-neighbors`` (10) cosine nearest neighbours
among the other images are found in standardized saliency space. The paper's A.2 measure: the
fraction of the neighbours that are correctly classified, averaged over correct references and
over incorrect ones (ResNet-50 on ImageNet: 89.0% and 10.8%): mistakes sit among mistakes. The
same is measured over the shallow-only and deep-only filters (first and last third of the conv
layers, §3.2 / Fig. 5) and in feature space (the classifier's input, A.4), where the paper finds
neighbours that look alike but are mostly correct. ``same_pair_frac_for_incorrect``: the fraction of
a mistake's neighbours that are mistakes between the same two classes (either direction), the
paper's qualitative Fig. 4 claim.

Result keys: ``nn_correct_frac_for_correct``, ``nn_correct_frac_for_incorrect`` (saliency space,
all filters), their ``*_ci``, ``accuracy`` (the chance level), ``n_neighbors``, and sub-dicts
``shallow``, ``deep``, ``features`` with the same keys.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import int_arg
from ._dataset import boot_rng, depth_ranges, require_stats, thumbnail

if TYPE_CHECKING:
    from .base import ExperimentContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-neighbors", type=int_arg(low=1), default=10, help="neighbours per reference image (default 10)"
    )
    parser.add_argument(
        "--gallery", type=int_arg(low=0), default=4, help="reference mistakes shown in the gallery (default 4)"
    )


def _space_stats(ctx: ExperimentContext, nn: np.ndarray, correct: np.ndarray, label: np.ndarray,
                 pred: np.ndarray, key: int) -> dict[str, Any]:
    from .statistics import mean_ci

    frac = correct[nn].mean(axis=1)  # [N]: share of each reference's neighbours that are correct
    same = np.array([
        np.mean([(not correct[j]) and {int(label[j]), int(pred[j])} == {int(label[i]), int(pred[i])} for j in nn[i]])
        for i in np.flatnonzero(~correct)
    ]) if (~correct).any() else np.zeros(0)
    c = mean_ci(frac[correct], rng=boot_rng(ctx, key, 0))
    w = mean_ci(frac[~correct], rng=boot_rng(ctx, key, 1))
    s = mean_ci(same, rng=boot_rng(ctx, key, 2))
    return {
        "nn_correct_frac_for_correct": c["mean"],
        "nn_correct_frac_for_incorrect": w["mean"],
        "nn_correct_frac_for_correct_ci": [c["ci_low"], c["ci_high"]],
        "nn_correct_frac_for_incorrect_ci": [w["ci_low"], w["ci_high"]],
        "same_pair_frac_for_incorrect": s["mean"],
    }


def run(ctx: ExperimentContext) -> dict[str, Any]:
    from ..kernels.neighbours import all_neighbours, layer_columns

    stats = require_stats(ctx)
    idx = ctx.index
    findex = ctx.explainer.index
    n = len(idx)
    k = int(ctx.option("n_neighbors", 10) or 10)
    if not 1 <= k <= n - 1:
        raise ValueError(f"--n-neighbors must lie in [1, {n - 1}] for {n} images; got {k}")
    correct = np.asarray(idx.correct, dtype=bool)
    label, pred = np.asarray(idx.label), np.asarray(idx.pred)
    # Saliency spaces are streamed over the index's memory-mapped float16 profiles, standardized
    # chunk by chunk (never the N x F float32 matrix); features are small ([N, D]) and in memory.
    ranges = depth_ranges(findex)
    spaces: dict[str, tuple[np.ndarray | None, slice | None, str]] = {
        "saliency": (None, None, "all filters"),
        "shallow": (None, layer_columns(findex, ranges["shallow"]), "layers {}-{}".format(*ranges["shallow"])),
        "deep": (None, layer_columns(findex, ranges["deep"]), "layers {}-{}".format(*ranges["deep"])),
    }
    if idx.features is not None:
        spaces["features"] = (np.asarray(idx.features, dtype=np.float32), None,
                              f"input of {idx.meta.get('feature_layer')}")
    results: dict[str, dict[str, Any]] = {}
    neighbours: dict[str, np.ndarray] = {}
    for key, (name, (data, cols, what)) in enumerate(spaces.items()):
        if data is None:
            nn, _ = idx.all_neighbours(stats, k=k, columns=cols)
        else:
            nn, _ = all_neighbours(data, k=k, columns=cols)
        neighbours[name] = nn
        results[name] = {**_space_stats(ctx, nn, correct, label, pred, key), "space": what}

    out: dict[str, Any] = {
        **{k_: v for k_, v in results["saliency"].items() if k_ != "space"},
        "n_neighbors": k,
        "n_correct": int(correct.sum()),
        "n_incorrect": int((~correct).sum()),
        "accuracy": float(correct.mean()),
        "shallow": results["shallow"],
        "deep": results["deep"],
        "features": results.get("features"),
    }
    # Figures: the A.2 bars, a gallery of mistakes (Fig. 4) and one reference by depth and
    # in feature space (Fig. 5 / A.4); the saliency space in 2-D as the interactive figure.
    ctx.writer.png("neighbors_fractions.png", _fig_fractions(results, out["accuracy"], k))
    refs = _gallery_refs(neighbours["saliency"], idx, stats, correct, int(ctx.option("gallery", 4) or 4))
    if refs.size:
        ctx.writer.png("fig4_gallery.png", _fig_gallery(ctx, refs, {"saliency": neighbours["saliency"]}, idx))
        rows = {name: neighbours[name] for name in ("shallow", "deep", "features") if name in neighbours}
        ctx.writer.png("fig5_depth_and_features.png", _fig_gallery(ctx, refs[:1], rows, idx))
    ctx.writer.html("neighbors_map.html", _html_map(idx, stats, correct))

    def line(name: str, d: dict[str, Any]) -> str:
        return (f"{name:<9} ({d['space']}): correct neighbours {100 * d['nn_correct_frac_for_correct']:.1f}% "
                f"for correct refs, {100 * d['nn_correct_frac_for_incorrect']:.1f}% for mistakes; same class pair "
                f"{100 * d['same_pair_frac_for_incorrect']:.1f}%")

    out["summary"] = [
        f"{n} images ({out['n_incorrect']} mistakes, accuracy {100 * out['accuracy']:.1f}%), {k} neighbours each:",
        *(line(name, d) for name, d in results.items()),
        "paper (ResNet-50, A.2, saliency space): 89.0% for correct refs, 10.8% for mistakes",
    ]
    out["gallery_rows"] = refs
    return out


def _row_chunks(n: int, size: int = 256) -> list[np.ndarray]:
    return [np.arange(s, min(n, s + size)) for s in range(0, n, size)]


def _gallery_refs(nn: np.ndarray, idx: Any, stats: Any, correct: np.ndarray, count: int) -> np.ndarray:
    """Mistakes whose neighbours are most often mistakes too (ties: the most salient first)."""
    wrong = np.flatnonzero(~correct)
    if wrong.size == 0 or count < 1:
        return np.zeros(0, dtype=np.int64)
    share = (~correct[nn[wrong]]).mean(axis=1)
    salience = np.concatenate([idx.standardized(stats, rows=wrong[part]).mean(axis=1)
                               for part in _row_chunks(wrong.size)])
    order = np.lexsort((-salience, -share))
    return wrong[order[:count]]


def _fig_fractions(results: dict[str, dict[str, Any]], accuracy: float, k: int) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    names = list(results)
    x = np.arange(len(names))
    for shift, key, label, color in ((-0.18, "correct", "correct references", "#2ca02c"),
                                     (0.18, "incorrect", "incorrect references", "#d62728")):
        means = np.array([100 * results[n][f"nn_correct_frac_for_{key}"] for n in names], dtype=float)
        ci = 100 * np.array([results[n][f"nn_correct_frac_for_{key}_ci"] for n in names], dtype=float)
        ax.bar(x + shift, means, width=0.36, color=color, label=label,
               yerr=np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means])), capsize=3)
    ax.axhline(100 * accuracy, color="0.3", linestyle="--", linewidth=0.8, label="accuracy (chance level)")
    ax.set_xticks(x, names)
    ax.set_ylabel(f"% of the {k} neighbours that are correct")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Nearest neighbours: mistakes sit among mistakes (95% bootstrap CI)", fontsize=10)
    fig.tight_layout()
    return fig


def _caption(ctx: ExperimentContext, idx: Any, row: int) -> tuple[str, str]:
    names = ctx.explainer.model.labels.names
    lab, prd = int(idx.label[row]), int(idx.pred[row])

    def short(i: int) -> str:
        return names[i].split(",")[0][:16] if 0 <= i < len(names) else str(i)

    if lab == prd:
        return short(lab), "#2ca02c"
    return f"{short(lab)} → {short(prd)}", "#d62728"


def _fig_gallery(ctx: ExperimentContext, refs: np.ndarray, spaces: dict[str, np.ndarray], idx: Any,
                 *, shown: int = 5) -> Any:
    """One row per (reference, space): the reference, then its first ``shown`` neighbours;
    captions 'true → predicted' in red for mistakes, the class in green for correct ones."""
    from matplotlib.figure import Figure

    rows = [(r, name) for r in refs.tolist() for name in spaces]
    fig = Figure(figsize=(1.6 * (shown + 1), 1.9 * len(rows)))
    axes = fig.subplots(len(rows), shown + 1, squeeze=False)
    for (ref, name), ax_row in zip(rows, axes, strict=True):
        for j, row in enumerate([ref, *spaces[name][ref][:shown].tolist()]):
            ax = ax_row[j]
            ax.imshow(thumbnail(ctx, row))
            text, color = _caption(ctx, idx, row)
            ax.set_title(text, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2 if j == 0 else 1)
        ax_row[0].set_ylabel(f"{name}\nreference", fontsize=8)
    fig.suptitle("Reference (left) and its nearest neighbours; red: misclassified (true → predicted)", fontsize=9)
    fig.tight_layout()
    return fig


def _html_map(idx: Any, stats: Any, correct: np.ndarray, *, max_fit: int = 5000) -> Any:
    """PCA of the standardized profiles (fitted on at most ``max_fit`` rows, then every row
    projected in chunks), coloured by correctness."""
    import plotly.graph_objects as go

    n = len(idx)
    fit_rows = np.arange(n) if n <= max_fit else np.linspace(0, n - 1, max_fit).astype(int)
    fit = idx.standardized(stats, rows=fit_rows).astype(np.float64)
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    del fit
    xy = np.concatenate([(idx.standardized(stats, rows=part).astype(np.float64) - mean) @ vt[:2].T
                         for part in _row_chunks(n)])
    fig = go.Figure()
    for group, name, color in ((True, "correct", "#2ca02c"), (False, "incorrect", "#d62728")):
        rows = np.flatnonzero(correct == group)
        text = [f"{idx.files[r]}<br>label {idx.label[r]}, predicted {idx.pred[r]}" for r in rows]
        fig.add_trace(go.Scattergl(x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=name, text=text,
                                   marker={"size": 6, "color": color, "opacity": 0.7},
                                   hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title="Saliency space (PCA of standardized profiles)", xaxis_title="PC 1",
                      yaxis_title="PC 2", template="plotly_white", height=600)
    return fig
