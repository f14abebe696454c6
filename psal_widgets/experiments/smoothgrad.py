"""``psal experiment smoothgrad``: SmoothGrad parameter saliency against the vanilla profile (paper A.1).

Protocol. For every image and its TRUE label: the vanilla raw profile, and the SmoothGrad raw
profile averaged over ``--n-samples`` noisy copies of the image (Gaussian noise of std
``noise · (max − min)`` of the preprocessed input, for each level of ``--noise``; see
:mod:`psal_widgets.kernels.smoothgrad`); both standardized with the run's statistics. Compared:
cosine similarity of the standardized profiles, the share of the vanilla top ``--top-k`` filters
that SmoothGrad also ranks in its top k, and the paper's Fig. 2 claim (mistakes are more salient
than correct predictions) under both methods. The paper reports, on its case study, that the two
agree for noise up to 10% and part ways at 50%, where the noisy copies are misclassified otherwise.

JSON keys (besides the provenance added by the framework)
---------------------------------------------------------
``noise`` : list of float
    Noise levels (fraction of the input range).
``n_samples``, ``top_k`` : int
``cosine_similarity`` : list of dict aligned with ``noise``
    ``{mean, ci_low, ci_high, n}`` of the per-image cosine similarity of the standardized profiles.
``cosine_similarity_raw`` : list of dict aligned with ``noise``
    The same for the raw profiles.
``top_k_overlap`` : list of dict aligned with ``noise``
    Share (0-1) of the vanilla top-k filters also in the SmoothGrad top k.
``noisy_prediction_agreement`` : list of float aligned with ``noise``
    Share of noisy copies predicted as the clean image is.
``mean_saliency_correct_vanilla``, ``mean_saliency_incorrect_vanilla`` : float
    Mean standardized saliency (over filters and images) of correct / misclassified images.
``mean_saliency_correct_smoothgrad``, ``mean_saliency_incorrect_smoothgrad`` : list of float aligned with ``noise``
``n_correct``, ``n_incorrect`` : int
``summary`` : list of str
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import int_arg
from ._dataset import float_list
from ._images import images, progress, standardize_np
from .similarity import cosine_similarity, top_k_overlap
from .statistics import mean_ci

if TYPE_CHECKING:
    from .base import ExperimentContext

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-samples", type=int_arg(low=1), default=10, help="noisy copies per image (default 10)")
    parser.add_argument("--noise", type=float_list, default=[0.1],
                        help="noise levels as fractions of the input range, comma-separated (default 0.1; "
                             "the paper shows 0.01,0.05,0.1,0.5)")
    parser.add_argument("--top-k", type=int_arg(low=1), default=100, help="size of the top sets compared (default 100)")


def vanilla_profiles(ctx: ExperimentContext) -> tuple[np.ndarray, np.ndarray]:
    """Raw true-label profiles [N, F] (float64) and predictions [N] of the run's data, batched."""
    from ..kernels.profiles import filter_profiles

    ex, data = ctx.explainer, ctx.dataset
    bs = max(1, int(ctx.config.batch_size))
    raws, preds = [], []
    starts = range(0, len(data), bs)
    for s in progress(ctx, starts, desc="profiles", total=len(starts)):
        rows = list(range(s, min(s + bs, len(data))))
        batch = filter_profiles(ex.model.module, images(data, rows, ex.model.device),
                                [data.labels[r] for r in rows], index=ex.index, mode="raw")
        raws.append(batch.raw.cpu().double().numpy())
        preds.append(batch.logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(raws), np.concatenate(preds)


def run(ctx: ExperimentContext) -> dict[str, Any]:
    import torch

    from ..kernels.smoothgrad import smoothgrad_profile

    ex, data = ctx.explainer, ctx.dataset
    if ex.stats is None:
        raise ValueError("smoothgrad compares standardized profiles: it needs validation statistics (--stats)")
    levels = [float(v) for v in ctx.option("noise", [0.1])]
    n_samples = int(ctx.option("n_samples", 10))
    top_k = int(ctx.option("top_k", 100))
    raw, pred = vanilla_profiles(ctx)
    labels = np.asarray(data.labels)
    correct = pred == labels
    std = standardize_np(raw, ex.stats)
    cos = np.full((len(levels), len(data)), np.nan)
    cos_raw = np.full_like(cos, np.nan)
    overlap = np.full_like(cos, np.nan)
    agree = np.full_like(cos, np.nan)
    mean_sg = np.full_like(cos, np.nan)
    for r in progress(ctx, range(len(data)), desc="smoothgrad", total=len(data)):
        x, y = data[r]
        x = x.to(ex.model.device)
        for j, noise in enumerate(levels):
            gen = torch.Generator().manual_seed(int(ctx.rng(r, j).integers(2**62)))
            sg_raw, logits = smoothgrad_profile(ex.model.module, x, y, index=ex.index, n_samples=n_samples,
                                                noise=noise, generator=gen, batch_size=ctx.config.batch_size)
            sg_raw_np = sg_raw.cpu().numpy()
            sg = standardize_np(sg_raw_np, ex.stats)
            cos[j, r] = cosine_similarity(std[r], sg)
            cos_raw[j, r] = cosine_similarity(raw[r], sg_raw_np)
            overlap[j, r] = top_k_overlap(std[r], sg, top_k)
            agree[j, r] = float((logits.argmax(dim=1).cpu().numpy() == pred[r]).mean())
            mean_sg[j, r] = float(sg.mean())

    boot = ctx.rng(10**6)
    mean_std = std.mean(axis=1)

    def group_mean(v: np.ndarray, mask: np.ndarray) -> float:
        return float(v[mask].mean()) if mask.any() else float("nan")

    res: dict[str, Any] = {
        "noise": levels, "n_samples": n_samples, "top_k": top_k,
        "cosine_similarity": [mean_ci(c, rng=boot) for c in cos],
        "cosine_similarity_raw": [mean_ci(c, rng=boot) for c in cos_raw],
        "top_k_overlap": [mean_ci(o, rng=boot) for o in overlap],
        "noisy_prediction_agreement": [float(np.nanmean(a)) for a in agree],
        "mean_saliency_correct_vanilla": group_mean(mean_std, correct),
        "mean_saliency_incorrect_vanilla": group_mean(mean_std, ~correct),
        "mean_saliency_correct_smoothgrad": [group_mean(m, correct) for m in mean_sg],
        "mean_saliency_incorrect_smoothgrad": [group_mean(m, ~correct) for m in mean_sg],
        "n_correct": int(correct.sum()), "n_incorrect": int((~correct).sum()),
    }
    res["summary"] = _summary(res)
    if len(data):
        _figures(ctx, res, cos, overlap)
    return res


def _summary(res: dict[str, Any]) -> list[str]:
    lines = [f"{res['n_correct']} correct, {res['n_incorrect']} incorrect images; "
             f"{res['n_samples']} noisy copies each; "
             f"vanilla mean standardized saliency: correct {res['mean_saliency_correct_vanilla']:+.3f}, "
             f"incorrect {res['mean_saliency_incorrect_vanilla']:+.3f}"]
    for j, noise in enumerate(res["noise"]):
        c, o = res["cosine_similarity"][j], res["top_k_overlap"][j]
        lines.append(
            f"noise {noise:g}: cosine {c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}], "
            f"top-{res['top_k']} overlap {100 * o['mean']:.1f}%, noisy copies keep the prediction "
            f"{100 * res['noisy_prediction_agreement'][j]:.0f}%; SmoothGrad mean saliency correct "
            f"{res['mean_saliency_correct_smoothgrad'][j]:+.3f}, "
            f"incorrect {res['mean_saliency_incorrect_smoothgrad'][j]:+.3f}")
    return lines


def _figures(ctx: ExperimentContext, res: dict[str, Any], cos: np.ndarray, overlap: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    levels = res["noise"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for j, noise in enumerate(levels):
        axes[0].hist(cos[j][np.isfinite(cos[j])], bins=30, alpha=0.6, label=f"noise {noise:g}")
        axes[1].hist(100 * overlap[j][np.isfinite(overlap[j])], bins=20, alpha=0.6, label=f"noise {noise:g}")
    axes[0].set_title("cosine similarity to the vanilla profile")
    axes[1].set_title(f"top-{res['top_k']} overlap with the vanilla profile (%)")
    for ax in axes[:2]:
        ax.set_ylabel("images")
        ax.legend()
    names = ["vanilla", *[f"SG {v:g}" for v in levels]]
    corr = [res["mean_saliency_correct_vanilla"], *res["mean_saliency_correct_smoothgrad"]]
    inc = [res["mean_saliency_incorrect_vanilla"], *res["mean_saliency_incorrect_smoothgrad"]]
    pos = np.arange(len(names))
    axes[2].bar(pos - 0.2, corr, 0.4, label=f"correct (n={res['n_correct']})", color="#1f77b4")
    axes[2].bar(pos + 0.2, inc, 0.4, label=f"incorrect (n={res['n_incorrect']})", color="#d62728")
    axes[2].set_xticks(pos, names)
    axes[2].axhline(0, color="k", linewidth=0.8)
    axes[2].set_title("mean standardized saliency (Fig. 2 claim)")
    axes[2].legend()
    fig.tight_layout()
    ctx.writer.png("smoothgrad.png", fig)

    pfig = make_subplots(rows=1, cols=2, subplot_titles=("cosine similarity per image", "Fig. 2 claim"))
    for j, noise in enumerate(levels):
        pfig.add_trace(go.Box(y=cos[j], name=f"noise {noise:g}", boxpoints="all"), row=1, col=1)
    pfig.add_trace(go.Bar(x=names, y=corr, name="correct"), row=1, col=2)
    pfig.add_trace(go.Bar(x=names, y=inc, name="incorrect"), row=1, col=2)
    pfig.update_layout(title="SmoothGrad parameter saliency vs vanilla (paper A.1)", width=1200, height=500)
    ctx.writer.html("smoothgrad.html", pfig)
