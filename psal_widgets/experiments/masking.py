"""``psal experiment masking``: mask the pixels that drive the salient filters (paper §3.4, A.8-A.9).

Protocol. For every studied image (the mistakes by default, ``--which all`` for every image) and
its TRUE label: the top ``--k`` filters of the standardized profile, their input-space saliency
map (boost ``--boost``), and two masked copies of the image:

- ``top``: the ``--percent`` % most salient pixels of the map,
- ``random``: the same number of pixels drawn at random (seeded per image),

each filled with the normalization mean (normalized value 0 in every channel: the dataset's mean
colour, the same fill as the explorer's ``mean`` mask). The map that ranks the pixels is the
paper's visualization without its percentile clipping (max over colour channels of ``|∇_x|``,
rescaled, 3×3 Gaussian blur), so that no ties decide which pixels go.

Measured: the change of the true-class probability and of the incorrect-class probability (the
prediction for a mistake; the most probable other class for a correct image), in points; the
share of mistakes corrected; a two-sided paired sign-flip permutation test of top vs random and
of each against no change (the paper reports p < 0.05 for salient masking, p = 0.854 / 0.695 for
random masking); the drop of the raw saliency of the originally chosen filters after masking
(paper Fig. 7c: up to 80% for the case study), standardized and raw; and the images where masking the top pixels raises
the true class by at least ``--gain`` points (A.9: 5% and 25 points).

JSON keys (besides the provenance added by the framework)
---------------------------------------------------------
``which``, ``percent``, ``k``, ``boost``, ``gain`` : the options used.
``n_studied`` : int
    Images studied.
``n_pixels`` : int
    Pixels masked per image (``round(percent / 100 · H · W)``).
``true_conf_change_top``, ``true_conf_change_random``, ``incorrect_conf_change_top``,
``incorrect_conf_change_random`` : dict
    ``{mean, ci_low, ci_high, n}`` of the per-image change, in points (95% bootstrap interval).
``p_true_top_vs_random``, ``p_incorrect_top_vs_random`` : float
    Paired sign-flip test of the top-vs-random difference.
``p_true_top``, ``p_true_random``, ``p_incorrect_top``, ``p_incorrect_random`` : float
    Sign-flip test of each change against 0 (the paper's tests).
``corrected_pct_top``, ``corrected_pct_random`` : float
    % of the studied mistakes whose prediction becomes the true label (nan without mistakes).
``saliency_drop_top_pct``, ``saliency_drop_random_pct`` : dict
    ``{mean, ci_low, ci_high, n}`` of the relative drop (%) of the chosen filters' mean standardized
    saliency, ``100 · (1 - mean ŝ_after[F] / mean ŝ_before[F])`` (the paper's Fig. 7c quantity).
``raw_saliency_drop_top_pct``, ``raw_saliency_drop_random_pct`` : dict
    The same on the raw saliency (mean |grad|); it also moves with the loss: masking that makes a
    correct prediction less confident raises every filter's raw saliency.
``gain_images`` : list of dict
    ``file``, ``label``, ``pred``, ``true_before``, ``true_after``, ``pred_after`` (probabilities
    in [0, 1]) of the images whose true class rises by ``gain`` points or more with top masking.
``images`` : list of dict
    Per studied image: ``file``, ``label``, ``pred``, ``incorrect``, ``true_before``,
    ``true_top``, ``true_random``, ``incorrect_before``, ``incorrect_top``, ``incorrect_random``,
    ``pred_top``, ``pred_random``, ``saliency_drop_top_pct``, ``saliency_drop_random_pct``,
    ``raw_saliency_drop_top_pct``, ``raw_saliency_drop_random_pct``.
``summary`` : list of str
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import float_arg, int_arg
from ._images import predict, progress, select_rows, standardize_np
from .statistics import mean_ci, sign_flip_test

if TYPE_CHECKING:
    import torch

    from .base import ExperimentContext

__all__ = ["add_arguments", "mask_pixels", "random_mask", "ranking_map", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--which", choices=["incorrect", "all", "correct"], default="incorrect",
                        help="images to study (default: the mistakes)")
    parser.add_argument(
        "--percent",
        type=float_arg(low=0.0, high=100.0, low_open=True),
        default=5.0,
        help="share of pixels to mask, in %% (default 5)",
    )
    parser.add_argument("--k", type=int_arg(low=1), default=10, help="top filters whose input map is used (default 10)")
    parser.add_argument(
        "--boost",
        type=float_arg(low=0.0, low_open=True),
        default=100.0,
        help="boost of the chosen filters (default 100)",
    )
    parser.add_argument("--gain", type=float_arg(low=0.0, low_open=True), default=25.0,
                        help="list images whose true class rises by at least this many points (default 25)")
    parser.add_argument("--examples", type=int_arg(low=0), default=6, help="images shown in the figure (default 6)")


def ranking_map(grad: np.ndarray) -> np.ndarray:
    """The map that ranks pixels: max over channels of ``|grad|`` [3, H, W], rescaled, 3×3 blur -> [H, W]."""
    from ..viz.heatmap import saliency_heatmap

    return saliency_heatmap(grad, percentile=0.0, upper=100.0)


def random_mask(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """A bool [H, W] mask of exactly ``n`` pixels drawn uniformly without replacement."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    flat[rng.choice(flat.size, size=int(n), replace=False)] = True
    return flat.reshape(shape)


def mask_pixels(x: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """A copy of the normalized image ``x`` [3, H, W] with the ``mask`` [H, W] pixels set to 0 in
    every channel (the normalization mean, i.e. the dataset's mean colour)."""
    import torch

    keep = torch.as_tensor(~np.asarray(mask, dtype=bool), device=x.device)
    return x * keep.to(x.dtype)


def _drop(before: np.ndarray, after: np.ndarray) -> float:
    """Relative drop (%) of the chosen filters' mean saliency: ``100 · (1 - mean(after) / mean(before))``."""
    b = float(np.mean(before))
    return 100.0 * (1.0 - float(np.mean(after)) / b) if b != 0.0 else float("nan")


def run(ctx: ExperimentContext) -> dict[str, Any]:
    import torch

    from ..kernels.profiles import filter_profiles
    from ..viz.heatmap import mask_top_percent, saliency_heatmap

    ex = ctx.explainer
    if ex.stats is None:
        raise ValueError("masking ranks filters by the standardized profile: it needs validation statistics (--stats)")
    which = ctx.option("which", "incorrect")
    percent = float(ctx.option("percent", 5.0))
    k = int(ctx.option("k", 10))
    boost = float(ctx.option("boost", 100.0))
    gain = float(ctx.option("gain", 25.0))
    data = ctx.dataset
    model = ex.model
    labels = np.asarray(data.labels)
    rows = select_rows(labels, predict(ctx), which)
    files = data.relative_files()
    per: list[dict[str, Any]] = []
    shown: dict[int, dict[str, Any]] = {}
    n_pixels = 0

    for r in progress(ctx, rows, desc="masking", total=len(rows)):
        r = int(r)
        x, y = data[r]
        x = x.to(model.device)
        a = ex.analyze(x, label=y, mode="std")
        try:
            filters = a.top_filters(k)
            grad = a.input_gradient(filters, boost=boost)
        finally:
            a.release()
        heat = ranking_map(grad)
        top = mask_top_percent(heat, percent=percent)
        n_pixels = int(top.sum())
        rnd = random_mask(top.shape, n_pixels, ctx.rng(r))
        batch = torch.stack([mask_pixels(x, top), mask_pixels(x, rnd)])
        out = filter_profiles(model.module, batch, [y, y], index=ex.index, mode="raw")
        probs = torch.softmax(out.logits.float(), dim=1).cpu().numpy()
        raw_after = out.raw.cpu().double().numpy()
        p0 = a.probs
        others = p0.copy()
        others[y] = -np.inf
        wrong = int(np.argmax(others))
        std_after = standardize_np(raw_after, ex.stats)
        drops = [_drop(a.profile[filters], std_after[i, filters]) for i in range(2)]
        raw_drops = [_drop(a.raw[filters], raw_after[i, filters]) for i in range(2)]
        row = {
            "file": files[r], "label": int(y), "pred": int(np.argmax(p0)), "incorrect": wrong,
            "true_before": float(p0[y]), "true_top": float(probs[0, y]), "true_random": float(probs[1, y]),
            "incorrect_before": float(p0[wrong]), "incorrect_top": float(probs[0, wrong]),
            "incorrect_random": float(probs[1, wrong]),
            "pred_top": int(probs[0].argmax()), "pred_random": int(probs[1].argmax()),
            "saliency_drop_top_pct": drops[0], "saliency_drop_random_pct": drops[1],
            "raw_saliency_drop_top_pct": raw_drops[0], "raw_saliency_drop_random_pct": raw_drops[1],
        }
        per.append(row)
        # The figure shows the paper's visualization (percentile clipping), which reads better than the ranking map.
        shown[r] = {"image": a.image, "heat": saliency_heatmap(grad), "top": top, "random": rnd}

    result = _aggregate(ctx, per, which=which, percent=percent, k=k, boost=boost, gain=gain, n_pixels=n_pixels)
    if per:
        _figures(ctx, result, per, [shown[r] for r in map(int, rows)], model.preprocess.mean, model.labels)
    return result


def _aggregate(ctx: ExperimentContext, per: list[dict[str, Any]], **opts: Any) -> dict[str, Any]:
    def col(key: str) -> np.ndarray:
        return np.asarray([p[key] for p in per], dtype=np.float64)

    boot = ctx.rng(10**6)
    tests = ctx.rng(10**6 + 1)
    d = {
        "true_top": 100.0 * (col("true_top") - col("true_before")),
        "true_random": 100.0 * (col("true_random") - col("true_before")),
        "incorrect_top": 100.0 * (col("incorrect_top") - col("incorrect_before")),
        "incorrect_random": 100.0 * (col("incorrect_random") - col("incorrect_before")),
    }
    mistakes = [p for p in per if p["pred"] != p["label"]]
    gain = opts["gain"]
    res: dict[str, Any] = {**opts, "n_studied": len(per)}
    for name, v in d.items():
        kind, where = name.split("_")
        res[f"{kind}_conf_change_{where}"] = mean_ci(v, rng=boot)
    res["p_true_top_vs_random"] = sign_flip_test(d["true_top"] - d["true_random"], rng=tests)
    res["p_incorrect_top_vs_random"] = sign_flip_test(d["incorrect_top"] - d["incorrect_random"], rng=tests)
    for name, v in d.items():
        res[f"p_{name}"] = sign_flip_test(v, rng=tests)
    for where in ("top", "random"):
        fixed = [p[f"pred_{where}"] == p["label"] for p in mistakes]
        res[f"corrected_pct_{where}"] = 100.0 * float(np.mean(fixed)) if fixed else float("nan")
        res[f"saliency_drop_{where}_pct"] = mean_ci(col(f"saliency_drop_{where}_pct"), rng=boot)
        res[f"raw_saliency_drop_{where}_pct"] = mean_ci(col(f"raw_saliency_drop_{where}_pct"), rng=boot)
    res["gain_images"] = [
        {"file": p["file"], "label": p["label"], "pred": p["pred"], "true_before": p["true_before"],
         "true_after": p["true_top"], "pred_after": p["pred_top"]}
        for p in sorted(per, key=lambda p: p["true_before"] - p["true_top"])
        if 100.0 * (p["true_top"] - p["true_before"]) >= gain
    ]
    res["images"] = per
    res["summary"] = _summary(res)
    return res


def _summary(res: dict[str, Any]) -> list[str]:
    if not res["n_studied"]:
        return [f"no image to study ({res['which']})"]
    t, tr = res["true_conf_change_top"], res["true_conf_change_random"]
    i, ir = res["incorrect_conf_change_top"], res["incorrect_conf_change_random"]
    st, sr = res["saliency_drop_top_pct"], res["saliency_drop_random_pct"]
    return [
        f"{res['n_studied']} images ({res['which']}), top {res['percent']:g}% of pixels "
        f"({res['n_pixels']} px) of the top-{res['k']} filters' input map vs as many random pixels",
        f"true class: {t['mean']:+.2f} points (p={res['p_true_top']:.3g}) vs random {tr['mean']:+.2f} "
        f"(p={res['p_true_random']:.3g}); paired top vs random p={res['p_true_top_vs_random']:.3g}",
        f"incorrect class: {i['mean']:+.2f} points (p={res['p_incorrect_top']:.3g}) vs random {ir['mean']:+.2f} "
        f"(p={res['p_incorrect_random']:.3g}); paired top vs random p={res['p_incorrect_top_vs_random']:.3g}",
        f"mistakes corrected: {res['corrected_pct_top']:.1f}% vs random {res['corrected_pct_random']:.1f}%",
        f"standardized saliency of the chosen filters drops {st['mean']:.1f}% vs random {sr['mean']:.1f}% "
        f"(raw: {res['raw_saliency_drop_top_pct']['mean']:.1f}% vs {res['raw_saliency_drop_random_pct']['mean']:.1f}%)",
        f"{len(res['gain_images'])} images gain >= {res['gain']:g} points on the true class",
    ]


def _figures(ctx: ExperimentContext, res: dict[str, Any], per: list[dict[str, Any]],
             shown: list[dict[str, Any]], mean: tuple[float, ...], names: Any) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    from ..viz.heatmap import overlay
    from ..viz.masks import apply_fill

    n_ex = max(0, int(ctx.option("examples", 6)))
    order = sorted(range(len(per)), key=lambda j: per[j]["true_before"] - per[j]["true_top"])[:n_ex]
    if order:
        fig, axes = plt.subplots(len(order), 4, figsize=(12, 3.2 * len(order)), squeeze=False)
        for row, j in enumerate(order):
            p, s = per[j], shown[j]
            y, w = p["label"], p["incorrect"]

            def probs(tb: float, ib: float, *, y: Any = y, w: Any = w) -> str:
                return f"{names.name(y)[:18]} {100 * tb:.1f}%\n{names.name(w)[:18]} {100 * ib:.1f}%"

            panels = [
                (s["image"], "image\n" + probs(p["true_before"], p["incorrect_before"])),
                (overlay(s["image"], s["heat"], weighted=True), f"input map ({p['file'][-24:]})"),
                (apply_fill(s["image"], s["top"], fill="mean", mean=mean),
                 f"top {res['percent']:g}% masked\n" + probs(p["true_top"], p["incorrect_top"])),
                (apply_fill(s["image"], s["random"], fill="mean", mean=mean),
                 "random pixels masked\n" + probs(p["true_random"], p["incorrect_random"])),
            ]
            for col, (img, title) in enumerate(panels):
                axes[row, col].imshow(img)
                axes[row, col].set_title(title, fontsize=8)
                axes[row, col].axis("off")
        fig.tight_layout()
        ctx.writer.png("masking_examples.png", fig)

    dt = [100 * (p["true_top"] - p["true_before"]) for p in per]
    dr = [100 * (p["true_random"] - p["true_before"]) for p in per]
    text = [f"{p['file']}<br>true {names.name(p['label'])}<br>pred {names.name(p['pred'])}" for p in per]
    lim = max([1.0, *map(abs, dt), *map(abs, dr)])
    pfig = go.Figure([
        go.Scatter(x=dr, y=dt, mode="markers", text=text, hoverinfo="text+x+y", name="images"),
        go.Scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", line={"dash": "dash", "color": "gray"},
                   name="top = random"),
    ])
    pfig.update_layout(
        title=f"True-class change after masking: top {res['percent']:g}% salient pixels vs random "
              f"(paired p={res['p_true_top_vs_random']:.3g})",
        xaxis_title="random pixels masked (points)", yaxis_title="salient pixels masked (points)",
        width=800, height=700)
    ctx.writer.html("masking.html", pfig)
