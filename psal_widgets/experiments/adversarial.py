"""``psal experiment adversarial``: adversarial parameter saliency against the vanilla profile (paper A.7).

Protocol. For every image and its TRUE label: an L2-bounded perturbation ``δ`` of all conv weights,
``‖δ‖₂ ≤ ε``, that maximizes the loss (``--direction min`` minimizes it), by ``--steps`` steps of
projected normalized-gradient ascent on a copy of the parameters (see
:mod:`psal_widgets.kernels.adversarial`), for each radius of ``--eps``. The adversarial profile is
``|δ|`` averaged per filter (the paper's ``s = |θ* − θ0|``, reduced per filter as the vanilla
profile is). Compared with the vanilla raw profile: cosine similarity and the share of the vanilla
top ``--top-k`` filters that the adversarial profile also ranks in its top k. Also compared after
standardization: the adversarial profile is first put in gradient units (times ``‖∇_θ L‖ / ε``,
exact for a single step) and standardized with the run's statistics.

The paper (ResNet-50, 100 random validation images, ε = 1e-4): mean cosine similarity 0.99 and 95%
top-100 agreement, with the differences growing for larger ε.

JSON keys (besides the provenance added by the framework)
---------------------------------------------------------
``eps`` : list of float
``steps``, ``direction``, ``top_k`` : the options used.
``n_studied`` : int
``cosine_similarity``, ``top_k_overlap`` : list of dict aligned with ``eps``
    ``{mean, ci_low, ci_high, n}`` per image, raw profiles (overlap as a share in [0, 1]).
``cosine_similarity_std``, ``top_k_overlap_std`` : list of dict aligned with ``eps``
    The same on standardized profiles.
``loss_change`` : list of dict aligned with ``eps``
    Change of the cross-entropy caused by ``δ``.
``max_norm_ratio`` : list of float aligned with ``eps``
    Largest ``‖δ‖ / ε`` over the images (≤ 1 up to float rounding).
``summary`` : list of str
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import int_arg
from ._dataset import float_list
from ._images import progress, standardize_np
from .similarity import cosine_similarity, top_k_overlap
from .statistics import mean_ci

if TYPE_CHECKING:
    from .base import ExperimentContext

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eps", type=float_list, default=[1e-4, 1e-3, 1e-2],
                        help="L2 radii of the perturbation, comma-separated "
                             "(default 1e-4,1e-3,1e-2; the paper's is 1e-4)")
    parser.add_argument("--steps", type=int_arg(low=1), default=10, help="projected gradient steps (default 10)")
    parser.add_argument("--direction", choices=["max", "min"], default="max",
                        help="maximize (default) or minimize the loss")
    parser.add_argument("--top-k", type=int_arg(low=1), default=100, help="size of the top sets compared (default 100)")


def run(ctx: ExperimentContext) -> dict[str, Any]:
    from ..kernels.adversarial import adversarial_perturbation
    from .smoothgrad import vanilla_profiles

    ex, data = ctx.explainer, ctx.dataset
    if ex.stats is None:
        raise ValueError("adversarial compares standardized profiles too: it needs validation statistics (--stats)")
    eps_list = [float(v) for v in ctx.option("eps", [1e-4, 1e-3, 1e-2])]
    steps = int(ctx.option("steps", 10))
    direction = ctx.option("direction", "max")
    top_k = int(ctx.option("top_k", 100))
    raw, _ = vanilla_profiles(ctx)
    std = standardize_np(raw, ex.stats)
    shape = (len(eps_list), len(data))
    cos, over, cos_s, over_s, dloss, ratio = (np.full(shape, np.nan) for _ in range(6))
    for r in progress(ctx, range(len(data)), desc="adversarial", total=len(data)):
        x, y = data[r]
        x = x.to(ex.model.device)
        for j, eps in enumerate(eps_list):
            adv = adversarial_perturbation(ex.model.module, x, y, index=ex.index, eps=eps, steps=steps,
                                           direction=direction)
            prof = adv.profile.cpu().double().numpy()
            cos[j, r] = cosine_similarity(raw[r], prof)
            over[j, r] = top_k_overlap(raw[r], prof, top_k)
            scaled = standardize_np(prof * (adv.grad_norm / eps if eps > 0 else 0.0), ex.stats)
            cos_s[j, r] = cosine_similarity(std[r], scaled)
            over_s[j, r] = top_k_overlap(std[r], scaled, top_k)
            dloss[j, r] = adv.loss_after - adv.loss_before
            ratio[j, r] = adv.norm / eps if eps > 0 else 0.0

    boot = ctx.rng(10**6)
    res: dict[str, Any] = {
        "eps": eps_list, "steps": steps, "direction": direction, "top_k": top_k, "n_studied": len(data),
        "cosine_similarity": [mean_ci(v, rng=boot) for v in cos],
        "top_k_overlap": [mean_ci(v, rng=boot) for v in over],
        "cosine_similarity_std": [mean_ci(v, rng=boot) for v in cos_s],
        "top_k_overlap_std": [mean_ci(v, rng=boot) for v in over_s],
        "loss_change": [mean_ci(v, rng=boot) for v in dloss],
        "max_norm_ratio": [float(np.nanmax(v)) if len(data) else float("nan") for v in ratio],
    }
    res["summary"] = _summary(res)
    if len(data):
        _figures(ctx, res)
    return res


def _summary(res: dict[str, Any]) -> list[str]:
    lines = [f"{res['n_studied']} images; {res['steps']} projected steps ({res['direction']} the loss) on all conv "
             f"weights; paper (ResNet-50, eps 1e-4): cosine 0.99, top-100 agreement 95%"]
    for j, eps in enumerate(res["eps"]):
        c, o = res["cosine_similarity"][j], res["top_k_overlap"][j]
        cs, os_ = res["cosine_similarity_std"][j], res["top_k_overlap_std"][j]
        lines.append(
            f"eps {eps:g}: raw cosine {c['mean']:.4f}, top-{res['top_k']} overlap {100 * o['mean']:.1f}%; "
            f"standardized cosine {cs['mean']:.4f}, overlap {100 * os_['mean']:.1f}%; "
            f"loss change {res['loss_change'][j]['mean']:+.4g}")
    return lines


def _figures(ctx: ExperimentContext, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    eps = res["eps"]
    panels = [("cosine_similarity", "cosine_similarity_std", "cosine similarity to the vanilla profile"),
              ("top_k_overlap", "top_k_overlap_std", f"top-{res['top_k']} overlap")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    pfig = make_subplots(rows=1, cols=2, subplot_titles=[p[2] for p in panels])
    for col, (raw_key, std_key, title) in enumerate(panels):
        for key, label, color in ((raw_key, "raw", "#1f77b4"), (std_key, "standardized", "#d62728")):
            m = np.array([v["mean"] for v in res[key]], dtype=float)
            lo = np.array([v["ci_low"] for v in res[key]], dtype=float)
            hi = np.array([v["ci_high"] for v in res[key]], dtype=float)
            axes[col].errorbar(eps, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=label, color=color)
            pfig.add_trace(go.Scatter(x=eps, y=m, mode="lines+markers", name=label, legendgroup=label,
                                      showlegend=col == 0, line={"color": color},
                                      error_y={"type": "data", "symmetric": False, "array": hi - m,
                                               "arrayminus": m - lo}), row=1, col=col + 1)
        axes[col].set_xscale("log")
        axes[col].set_xlabel("eps (L2 radius)")
        axes[col].set_title(title)
        axes[col].legend()
        pfig.update_xaxes(type="log", title_text="eps", row=1, col=col + 1)
    fig.suptitle(f"Adversarial parameter saliency vs vanilla (n={res['n_studied']})")
    fig.tight_layout()
    ctx.writer.png("adversarial.png", fig)
    pfig.update_layout(title="Adversarial parameter saliency vs vanilla (paper A.7)", width=1100, height=450)
    ctx.writer.html("adversarial.html", pfig)
