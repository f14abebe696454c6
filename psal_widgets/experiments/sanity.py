"""``psal experiment sanity``: the model-randomization sanity check of the input-space saliency (paper A.11).

Protocol (Adebayo et al. 2018, cascading randomization). The model is cut into stages (see
:mod:`psal_widgets.kernels.randomize`; default model: conv stem, ``blocks.0`` .. ``blocks.6``, conv
head, classifier). Starting from the logits, one more stage after another is re-initialized with
its modules' own ``reset_parameters`` on a deep copy of the model (the user's model is untouched).
At each step, for every image and its TRUE label, the input-space saliency map of the top ``--k``
filters of the (standardized, with the run's statistics) profile is recomputed on the randomized
model and compared to the original model's map: Spearman rank correlation of the maps (max over
colour channels of ``|∇_x|``), SSIM of the displayed maps (only when scikit-image is installed),
and for the profile, the cosine similarity to the original profile and the overlap of the top-k
filters. A method that depends on the model's weights must lose this similarity as more of the
model is randomized; the paper shows the maps degrading (Fig. 24).

JSON keys (besides the provenance added by the framework)
---------------------------------------------------------
``stages`` : list of str
    The stages in forward order.
``randomized`` : list of str
    Stage randomized at each step, from the top (``randomized[i]`` is added at step ``i + 1``).
``n_randomized`` : list of int
    0 .. number of stages; every list below is aligned with it.
``map_spearman``, ``profile_cosine``, ``top_k_overlap`` : list of dict
    ``{mean, ci_low, ci_high, n}`` over the images.
``profile_cosine_raw`` : list of dict
    Cosine similarity of the raw profiles. The standardized one has a floor: once a randomized
    model's raw saliencies are small next to the statistics' means, every standardized profile is
    close to ``-μ/σ``, the same vector for both models.
``map_ssim`` : list of dict, or None without scikit-image.
``prediction_kept`` : list of float
    Share of images whose top-1 class is the original model's.
``k``, ``n_studied`` : int
``summary`` : list of str
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import int_arg
from .similarity import cosine_similarity, spearman, top_k_overlap
from .statistics import mean_ci

if TYPE_CHECKING:
    from .base import ExperimentContext

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--k", type=int_arg(low=1), default=10, help="top filters whose input map is compared (default 10)"
    )
    parser.add_argument("--examples", type=int_arg(low=0), default=3, help="images shown in the figure (default 3)")


def _ssim() -> Any:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    return structural_similarity


def run(ctx: ExperimentContext) -> dict[str, Any]:
    from ..kernels.randomize import cascade, model_stages
    from ..kernels.saliency import InputSaliency
    from ..viz.heatmap import saliency_heatmap
    from ._images import progress

    ex, data = ctx.explainer, ctx.dataset
    k = int(ctx.option("k", 10))
    n_examples = int(ctx.option("examples", 3))
    stages = model_stages(ex.model.module)
    ssim = _ssim()
    xs = [data[r] for r in range(len(data))]
    n_steps = len(stages) + 1
    shape = (n_steps, len(data))
    rho, ss, cos, cos_raw, over, kept = (np.full(shape, np.nan) for _ in range(6))
    originals: list[dict[str, Any]] = [{} for _ in xs]
    shown: list[list[np.ndarray]] = [[] for _ in range(min(n_examples, len(xs)))]

    # Outer loop over randomization steps: one model copy alive at a time.
    steps = cascade(ex.model.module, stages, seed=ctx.config.seed)
    for n, model in progress(ctx, steps, desc="sanity", total=n_steps):
        for r, (x, y) in enumerate(xs):
            sal = InputSaliency(model, x.to(ex.model.device), int(y), index=ex.index, stats=ex.stats,
                                mode="std" if ex.stats is not None else "raw")
            try:
                filters = sal.top_filters(k)
                grad = sal.gradient(filters).cpu().double().numpy()
            finally:
                sal.release()
            profile = sal.values.cpu().double().numpy()
            raw = sal.raw.cpu().double().numpy()
            amap = np.abs(grad).max(axis=0)
            ok = bool(np.isfinite(amap).all() and np.isfinite(profile).all())
            heat = saliency_heatmap(grad) if ok else np.zeros(amap.shape, dtype=np.float32)
            pred = int(sal.logits.argmax())
            if n == 0:
                originals[r] = {"map": amap, "heat": heat, "profile": profile, "raw": raw, "pred": pred}
            o = originals[r]
            if ok:
                rho[n, r] = spearman(amap, o["map"])
                cos[n, r] = cosine_similarity(profile, o["profile"])
                cos_raw[n, r] = cosine_similarity(raw, o["raw"])
                over[n, r] = top_k_overlap(profile, o["profile"], k)
                if ssim is not None:
                    ss[n, r] = float(ssim(heat, o["heat"], data_range=1.0))
            kept[n, r] = float(pred == o["pred"])
            if r < len(shown):
                shown[r].append(heat)

    boot = ctx.rng(10**6)
    res: dict[str, Any] = {
        "stages": [s.name for s in stages],
        "randomized": [s.name for s in reversed(stages)],
        "n_randomized": list(range(n_steps)),
        "map_spearman": [mean_ci(v, rng=boot) for v in rho],
        "map_ssim": None if ssim is None else [mean_ci(v, rng=boot) for v in ss],
        "profile_cosine": [mean_ci(v, rng=boot) for v in cos],
        "profile_cosine_raw": [mean_ci(v, rng=boot) for v in cos_raw],
        "top_k_overlap": [mean_ci(v, rng=boot) for v in over],
        "prediction_kept": [float(np.mean(v)) if v.size else float("nan") for v in kept],
        "k": k,
        "n_studied": len(xs),
    }
    res["summary"] = _summary(res)
    if xs:
        images = [ex.model.preprocess.denormalize(xs[r][0]) for r in range(len(shown))]
        _figures(ctx, res, images, shown)
    return res


def _summary(res: dict[str, Any]) -> list[str]:
    lines = [f"{res['n_studied']} images, {len(res['stages'])} stages randomized from the top: "
             + " > ".join(res["randomized"])]
    for n in res["n_randomized"]:
        what = "none" if n == 0 else f"top {n} (down to {res['randomized'][n - 1]})"
        ssim = "" if res["map_ssim"] is None else f", SSIM {res['map_ssim'][n]['mean']:.3f}"
        lines.append(f"randomized {what}: map Spearman {res['map_spearman'][n]['mean']:.3f}{ssim}, profile cosine "
                     f"{res['profile_cosine'][n]['mean']:.3f} (raw {res['profile_cosine_raw'][n]['mean']:.3f}), "
                     f"prediction kept {100 * res['prediction_kept'][n]:.0f}%")
    return lines


def _figures(
    ctx: ExperimentContext, res: dict[str, Any], images: list[np.ndarray], shown: list[list[np.ndarray]]
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    cols = len(res["n_randomized"]) + 1
    fig, axes = plt.subplots(len(shown), cols, figsize=(1.9 * cols, 2.1 * len(shown)), squeeze=False)
    for row, (img, maps) in enumerate(zip(images, shown, strict=True)):
        axes[row, 0].imshow(img)
        axes[row, 0].set_title("image", fontsize=7)
        for n, heat in enumerate(maps):
            # The map alone (not an overlay): faint maps stay visible as they degrade.
            axes[row, n + 1].imshow(heat, cmap="inferno", vmin=0.0, vmax=1.0)
            title = "original" if n == 0 else f"+ {res['randomized'][n - 1]}"
            axes[row, n + 1].set_title(title, fontsize=7)
        for ax in axes[row]:
            ax.axis("off")
    fig.suptitle("Cascading randomization (from the logits down): input-space saliency maps", fontsize=9)
    fig.tight_layout()
    ctx.writer.png("sanity.png", fig)

    x = ["none", *res["randomized"]]
    pfig = go.Figure()
    keys = [("map_spearman", "map Spearman"), ("profile_cosine", "profile cosine"), ("top_k_overlap", "top-k overlap")]
    if res["map_ssim"] is not None:
        keys.insert(1, ("map_ssim", "map SSIM"))
    for key, label in keys:
        m = np.array([v["mean"] for v in res[key]], dtype=float)
        lo = np.array([v["ci_low"] for v in res[key]], dtype=float)
        hi = np.array([v["ci_high"] for v in res[key]], dtype=float)
        pfig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name=label,
                                  error_y={"type": "data", "symmetric": False, "array": hi - m, "arrayminus": m - lo}))
    pfig.update_layout(title="Sanity check (paper A.11): similarity to the original model as stages are randomized",
                       xaxis_title="last stage randomized (cumulative, from the top)", yaxis_title="similarity",
                       width=1000, height=500)
    ctx.writer.html("sanity.html", pfig)
