"""``psal experiment finetune``: one gradient step on the salient filters of a mistake (paper §3.3,
Fig. 6, B.1).

Protocol. For every misclassified image of the data: compute its standardized profile for the
TRUE label, then take ONE normalized gradient-descent step (cross-entropy of the true label, batch
norm in eval mode, update ``Δ = -step · g_S / ‖g_S‖``; see :mod:`psal_widgets.kernels.finetune`)
on a copy of the parameters, updating the conv weights of

- ``salient``: the top-k filters of the profile,
- ``random``: k filters drawn afresh for each image (seeded by the seed and the image's row;
  nested across k: the 25 contain the 10),
- ``least``: the k least salient filters,
- ``whole_network``: every parameter (the dashed line of Fig. 6).

Every update has the same L2 norm (``step``), so the baselines are "re-normalized to the same
magnitude" as the salient filters. With ``--normalize network`` the gradient is instead
normalized over the whole network and only then restricted to the salient filters
(``‖Δ‖ = step · ‖g_salient‖ / ‖g‖``), and the random and least-salient updates are scaled to that
same norm: the other reading of B.1.

Then measure the image itself (corrected or not, change of its true-class probability) and its
``--neighbors`` nearest neighbours (cosine similarity of standardized profiles) among the
misclassified images of a pool (``--pool PATH``, the paper uses ImageNet-v2; by default the other
images of the data): which share of them the step corrects, and the mean change of their
true-class probability. The neighbours never take part in the step.

JSON keys (besides the provenance added by the framework)
---------------------------------------------------------
``k`` : list of int
    Numbers of updated filters.
``salient``, ``random``, ``least`` : dict of lists aligned with ``k``
    ``corrected_pct`` (% of the mistakes the step corrects), ``true_conf_change`` (mean change of
    the image's true-class probability, points), ``nn_corrected_pct`` (mean % of each image's
    neighbours corrected), ``nn_true_conf_change`` (mean change of the neighbours' true-class
    probability, points); each with ``*_ci``: ``[low, high]`` 95% bootstrap intervals.
``whole_network`` : dict of floats
    The same four numbers (and ``*_ci``) when every parameter moves.
``step``, ``normalize``, ``n_neighbors`` : the options used.
``n_mistakes`` : int
    Misclassified images of the data (each one is fine-tuned separately).
``n_pool``, ``n_pool_incorrect`` : int
    Images of the neighbour pool, and its misclassified ones (the neighbour candidates).
``step_norm_salient`` : list of float aligned with ``k``
    Mean L2 norm of the salient updates (``step`` unless ``--normalize network``).
``images`` : list of dict
    Per mistake: ``file``, ``label``, ``pred`` and ``neighbors`` (pool files, nearest first).
``summary`` : list of str
"""
from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..checks import float_arg, int_arg
from ._dataset import int_list
from ._images import images, predict, progress, standardize_np
from .statistics import mean_ci

if TYPE_CHECKING:
    from ..data import LabeledImages
    from .base import ExperimentContext

__all__ = ["DEFAULT_K", "STRATEGIES", "add_arguments", "run"]

#: Numbers of updated filters (the paper's Fig. 6 goes up to 300 filters, 1.2% of ResNet-50's).
DEFAULT_K: tuple[int, ...] = (10, 25, 50, 100, 150, 300)
STRATEGIES: tuple[str, ...] = ("salient", "random", "least")
Normalize = Literal["updated", "network"]
_METRICS = ("corrected_pct", "true_conf_change", "nn_corrected_pct", "nn_true_conf_change")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int_list, default=list(DEFAULT_K),
                        help="numbers of filters to update, comma-separated (default 10,25,50,100,150,300)")
    parser.add_argument("--step", type=float_arg(low=0.0, low_open=True), default=0.001,
                        help="L2 norm of the normalized step (default 0.001, the paper's for ResNet-50)")
    parser.add_argument(
        "--neighbors", type=int_arg(low=1), default=10, help="nearest neighbours per image (default 10)"
    )
    parser.add_argument("--pool", default=None,
                        help="labelled dataset to find neighbours in (default: the other images of --data)")
    parser.add_argument("--normalize", choices=["updated", "network"], default="updated",
                        help="normalize the gradient over the updated parameters (default) or the whole network")


def _pool_profiles(
    ctx: ExperimentContext, pool: LabeledImages
) -> tuple[np.ndarray, np.ndarray, np.ndarray, LabeledImages]:
    """Standardized true-label profiles of the neighbour pool, its labels and correctness.

    Reads the profile index when the package has one (``ctx.index`` for the run's own data);
    otherwise computes the profiles with batched :func:`filter_profiles`.

    Returns
    -------
    (np.ndarray float32 [n, F], np.ndarray int64 [n], np.ndarray bool [n], LabeledImages)
        The last is the pool whose item ``i`` is row ``i`` (without images the index skipped
        as unreadable).
    """
    ex = ctx.explainer
    try:
        from ..index import index_for
    except ImportError:
        index_for = None
    if index_for is not None:
        # index_for aligns the index with the dataset: row i is item i.
        idx = ctx.index if pool is ctx.dataset else index_for(
            ex, pool, path=None, batch_size=ctx.config.batch_size, progress=ctx.config.progress)
        std = np.asarray(idx.standardized(ex.stats), dtype=np.float32)
        used = ctx.dataset if pool is ctx.dataset else idx.usable(pool)
        return std, np.asarray(idx.label, dtype=np.int64), np.asarray(idx.correct, dtype=bool), used
    return (*_computed_profiles(ctx, pool), pool)


def _computed_profiles(ctx: ExperimentContext, pool: LabeledImages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fallback of :func:`_pool_profiles`: profiles computed here, standardized by the run's stats."""
    from ..kernels.profiles import filter_profiles

    ex = ctx.explainer
    model = ex.model
    bs = max(1, int(ctx.config.batch_size))
    std_rows, pred = [], []
    starts = range(0, len(pool), bs)
    for s in progress(ctx, starts, desc="pool profiles", total=len(starts)):
        rows = list(range(s, min(s + bs, len(pool))))
        x = images(pool, rows, model.device)
        batch = filter_profiles(model.module, x, [pool.labels[r] for r in rows], index=ex.index, mode="raw")
        std_rows.append(standardize_np(batch.raw.cpu().double().numpy(), ex.stats).astype(np.float32))
        pred.append(batch.logits.argmax(dim=1).cpu().numpy())
    labels = np.asarray(pool.labels, dtype=np.int64)
    std = np.concatenate(std_rows) if std_rows else np.zeros((0, ex.index.n_filters), dtype=np.float32)
    predicted = np.concatenate(pred) if pred else np.zeros(0, dtype=np.int64)
    return std, labels, predicted == labels


def nearest(profile: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``candidates`` [m, F] with the largest cosine similarity to ``profile`` [F], best first."""
    if candidates.shape[0] == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    c = candidates.astype(np.float64)
    norms = np.linalg.norm(c, axis=1)
    norms[norms == 0] = 1.0
    sims = (c @ profile.astype(np.float64)) / (norms * max(np.linalg.norm(profile), 1e-300))
    return np.argsort(-sims, kind="stable")[: min(n, c.shape[0])]


def filter_sets(profile: np.ndarray, k: int, rng_perm: np.ndarray) -> dict[str, np.ndarray]:
    """The ``k`` filters of each strategy: top-k, the first k of a per-image permutation, bottom-k."""
    order = np.argsort(-profile, kind="stable")
    return {"salient": order[:k], "random": rng_perm[:k], "least": order[::-1][:k]}


def run(ctx: ExperimentContext) -> dict[str, Any]:
    import torch

    from ..data import open_dataset
    from ..kernels.finetune import (
        batched_probs,
        detached_parameters,
        filter_step,
        loss_gradients,
        raw_profile,
        step_norm,
    )

    ex = ctx.explainer
    if ex.stats is None:
        raise ValueError("finetune ranks filters by the standardized profile: it needs validation statistics (--stats)")
    ks = sorted({int(k) for k in ctx.option("k", list(DEFAULT_K))})
    n_filters = ex.index.n_filters
    if not ks or ks[0] < 1 or ks[-1] > n_filters:
        raise ValueError(f"every k must lie in [1, {n_filters}]; got {ks}")
    step = float(ctx.option("step", 0.001))
    n_nb = int(ctx.option("neighbors", 10))
    normalize: Normalize = ctx.option("normalize", "updated")
    model = ex.model
    pool_path = ctx.option("pool")
    if pool_path is None:
        # First: reading the index drops unreadable images from ctx.dataset, keeping rows aligned.
        with contextlib.suppress(ImportError):  # a build without the index computes profiles itself
            ctx.index  # noqa: B018
    data = ctx.dataset
    pool = data if pool_path is None else open_dataset(pool_path, labels=model.labels, preprocess=model.preprocess)

    pool_std, pool_labels, pool_correct, used = _pool_profiles(ctx, pool)
    pool = data if pool is data else used
    if pool is data:
        data_correct = pool_correct
    else:
        data_correct = predict(ctx).argmax(axis=1) == np.asarray(data.labels)
    mistakes = np.flatnonzero(~data_correct)
    pool_wrong = np.flatnonzero(~pool_correct)

    params = detached_parameters(model.module)
    per: dict[str, dict[str, list[list[float]]]] = {
        s: {m: [[] for _ in ks] for m in _METRICS} for s in STRATEGIES}
    whole: dict[str, list[float]] = {m: [] for m in _METRICS}
    norms_salient: list[list[float]] = [[] for _ in ks]
    files = data.relative_files()
    pool_files = files if pool is data else pool.relative_files()
    images_out = []

    for r in progress(ctx, mistakes, desc="finetune", total=len(mistakes)):
        r = int(r)
        x, y = data[r]
        x = x.unsqueeze(0).to(model.device)
        grads, logits = loss_gradients(model.module, x, [y], params=params)
        profile = standardize_np(raw_profile(grads, ex.index).cpu().double().numpy(), ex.stats)
        cand = pool_wrong[pool_wrong != r] if pool is data else pool_wrong
        nb = cand[nearest(profile, pool_std[cand], n_nb)]
        batch = torch.cat([x, images(pool, nb, model.device)]) if nb.size else x
        labels = torch.as_tensor([y, *pool_labels[nb].tolist()], device=model.device)
        before = batched_probs(model.module, params, batch)
        perm = ctx.rng(r).permutation(n_filters)
        total_norm = step_norm(grads, ex.index, None)

        # Called only within this iteration; the loop values are bound explicitly.
        def measure(
            new: dict[str, torch.Tensor],
            *,
            batch: torch.Tensor = batch,
            before: torch.Tensor = before,
            labels: torch.Tensor = labels,
            nb: np.ndarray = nb,
        ) -> dict[str, float]:
            after = batched_probs(model.module, new, batch)
            true_before = before[torch.arange(len(labels)), labels]
            true_after = after[torch.arange(len(labels)), labels]
            fixed = (after.argmax(dim=1) == labels).float()
            change = (true_after - true_before) * 100.0
            return {
                "corrected_pct": float(fixed[0]) * 100.0,
                "true_conf_change": float(change[0]),
                "nn_corrected_pct": float(fixed[1:].mean()) * 100.0 if nb.size else float("nan"),
                "nn_true_conf_change": float(change[1:].mean()) if nb.size else float("nan"),
            }

        for j, k in enumerate(ks):
            sets = filter_sets(profile, k, perm)
            size = step
            if normalize == "network":
                size = step * step_norm(grads, ex.index, sets["salient"]) / max(total_norm, 1e-300)
            norms_salient[j].append(size)
            for s in STRATEGIES:
                got = measure(filter_step(params, grads, ex.index, sets[s], step=size))
                for m in _METRICS:
                    per[s][m][j].append(got[m])
        got = measure(filter_step(params, grads, ex.index, None, step=step))
        for m in _METRICS:
            whole[m].append(got[m])
        images_out.append({"file": files[r], "label": int(y), "pred": int(logits.argmax()),
                           "neighbors": [pool_files[int(v)] for v in nb]})

    boot = ctx.rng(10**6)
    result: dict[str, Any] = {"k": ks}
    for s in STRATEGIES:
        block: dict[str, Any] = {}
        for m in _METRICS:
            cis = [mean_ci(np.asarray(v), rng=boot) for v in per[s][m]]
            block[m] = [c["mean"] for c in cis]
            block[f"{m}_ci"] = [[c["ci_low"], c["ci_high"]] for c in cis]
        result[s] = block
    wblock: dict[str, Any] = {}
    for m in _METRICS:
        c = mean_ci(np.asarray(whole[m]), rng=boot)
        wblock[m] = c["mean"]
        wblock[f"{m}_ci"] = [c["ci_low"], c["ci_high"]]
    result["whole_network"] = wblock
    result.update(
        step=step, normalize=normalize, n_neighbors=n_nb, n_mistakes=int(mistakes.size),
        n_pool=len(pool), n_pool_incorrect=int(pool_wrong.size),
        pool=None if pool is data else pool.description,
        step_norm_salient=[float(np.mean(v)) if v else float("nan") for v in norms_salient],
        images=images_out,
    )
    result["summary"] = _summary(result)
    if mistakes.size:
        _figures(ctx, result)
    return result


def _summary(res: dict[str, Any]) -> list[str]:
    lines = [f"{res['n_mistakes']} mistakes fine-tuned one at a time (step {res['step']:g}, "
             f"normalize={res['normalize']}); neighbours from {res['n_pool_incorrect']} misclassified pool images"]
    w = res["whole_network"]
    for j, k in enumerate(res["k"]):
        parts = [f"{s} {res[s]['corrected_pct'][j]:.1f}%/{res[s]['nn_corrected_pct'][j]:.1f}%/"
                 f"{res[s]['nn_true_conf_change'][j]:+.2f}" for s in STRATEGIES]
        lines.append(f"k={k}: corrected / neighbours corrected / neighbours' true-class change: " + ", ".join(parts))
    lines.append(f"whole network: {w['corrected_pct']:.1f}% / {w['nn_corrected_pct']:.1f}% / "
                 f"{w['nn_true_conf_change']:+.2f} points")
    return lines


_TITLES = {
    "corrected_pct": "(a) mistakes corrected (%)",
    "nn_corrected_pct": "(b) neighbours corrected (%)",
    "nn_true_conf_change": "(c) neighbours' true-class change (points)",
}
_COLORS = {"salient": "#d62728", "random": "#1f77b4", "least": "#2ca02c"}


def _figures(ctx: ExperimentContext, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ks = res["k"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    pfig = make_subplots(rows=1, cols=3, subplot_titles=list(_TITLES.values()))
    for col, (metric, title) in enumerate(_TITLES.items()):
        ax = axes[col]
        for s in STRATEGIES:
            mean = np.asarray(res[s][metric], dtype=float)
            ci = np.asarray(res[s][f"{metric}_ci"], dtype=float)
            ax.errorbar(ks, mean, yerr=[mean - ci[:, 0], ci[:, 1] - mean], marker="o", capsize=3,
                        color=_COLORS[s], label=s)
            pfig.add_trace(go.Scatter(x=ks, y=mean, mode="lines+markers", name=s, legendgroup=s,
                                      showlegend=col == 0, line={"color": _COLORS[s]},
                                      error_y={"type": "data", "symmetric": False,
                                               "array": ci[:, 1] - mean, "arrayminus": mean - ci[:, 0]}),
                           row=1, col=col + 1)
        w = res["whole_network"][metric]
        ax.axhline(w, color="k", linestyle="--", label="whole network")
        pfig.add_hline(y=w, line_dash="dash", row=1, col=col + 1)
        # Explicit limits: with all-NaN curves (no neighbours) autoscaling would leave a log axis empty.
        ax.set_xscale("log")
        ax.set_xlim(min(ks) / 1.5, max(ks) * 1.5)
        ax.set_xlabel("number of updated filters k")
        ax.set_title(title)
        pfig.update_xaxes(type="log", title_text="k", row=1, col=col + 1)
    axes[0].legend()
    fig.suptitle(f"One normalized step on one mistake (n={res['n_mistakes']}, step {res['step']:g})")
    fig.tight_layout()
    ctx.writer.png("finetune.png", fig)
    pfig.update_layout(title="Fine-tuning salient filters (paper Fig. 6)", height=450, width=1300)
    ctx.writer.html("finetune.html", pfig)
