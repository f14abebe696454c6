"""The ``psal`` command: explain an image, list layers, compute or import statistics, serve the
explorer as a web page, benchmark.

Every failure caused by the input ends with a one-line error and a non-zero exit code;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["main"]


class CliError(Exception):
    """A user-facing error: printed on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line ``psal: error: ...``, exit code 2.

    argparse's own ``usage: ...`` block and ``psal explain: error:`` prefix would make its
    errors (unknown flag, missing argument, ``--k 0``) look different from every other one.
    Sub-parsers inherit the class (``add_subparsers`` uses ``type(self)``).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""  # "explain", "experiment masking"
        where = f"{command}: " if command else ""
        self.exit(2, f"psal: error: {where}{message} (see {self.prog} --help)\n")


# -- output folders ----------------------------------------------------------------------
def _check_out(out: Path, *, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be written, before any model is loaded.

    Nothing is created: a probe file is made and removed in the folder itself, or in the
    nearest existing folder above it (what ``mkdir -p`` would write into).
    """
    if out.exists() and not out.is_dir():
        raise CliError(f"{flag} {out} is a file, not a folder: pass a folder (it is created when missing)")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise CliError(f"{flag} {out} cannot be created: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".psal-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CliError(f"{flag} {out} is not writable ({base}: {err.strerror or err}): pick another folder "
                       "or fix its permissions") from err


@contextlib.contextmanager
def _output_folder(out: Path) -> Iterator[Path]:
    """Create ``out`` for the files written inside the block; if the block fails, remove the
    folders this created (with their half-written files), so that no empty or partial result
    is left behind. A folder that existed before is left alone."""
    created = []
    p = out
    while not p.exists():
        created.append(p)
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
            for folder in created[1:]:  # parents made by mkdir -p, innermost first
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise


# -- psal explain ------------------------------------------------------------------------
def _parse_filters(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as err:
        raise CliError(f"--filters takes comma-separated filter ids like 12,512,20001; got {text!r}") from err
    if not ids:
        raise CliError("--filters is empty: give at least one filter id")
    return ids


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import load_image
    from .explainer import Explainer

    filters = _parse_filters(args.filters)
    out = Path(args.out) if args.out else Path("psal_out") / Path(args.image).stem
    # Every input is checked before the model is loaded: the image, the output folder.
    load_image(args.image)
    _check_out(out)
    explainer = Explainer(
        args.model, weights=args.weights, stats=args.stats or "auto", mode=args.mode, device=args.device
    )
    index = explainer.index
    # What needs the model's filter count is checked as soon as it is known, before the analysis.
    if filters is not None:
        bad = [f for f in filters if not 0 <= f < index.n_filters]
        if bad:
            raise CliError(
                f"filter ids {bad} are out of range: "
                f"this model has {index.n_filters} filters (0..{index.n_filters - 1})"
            )
    if args.k > index.n_filters:
        raise CliError(f"--k {args.k} is more than the {index.n_filters} filters of {explainer.model.name}")
    analysis = explainer.analyze(args.image, label=args.label)
    chosen = analysis.top_filters(args.k) if filters is None else np.unique(np.asarray(filters, dtype=np.int64))
    heat = analysis.input_map(chosen, boost=args.boost, percentile=args.percentile)
    top = analysis.prediction(5)
    cam = analysis.cam(method=args.cam, target=top[0].index)
    with _output_folder(out):
        _write_explain(args, out, explainer, analysis, chosen, filters, heat, top, cam)
    verdict = "correct" if top[0].index == analysis.label else "WRONG"
    print(f"{Path(args.image).name}: predicted '{top[0].name}' ({top[0].prob:.2f}), label '{analysis.label_name}' "
          f"({analysis.label_source}) -> {verdict}")
    top_rows = analysis.filter_rows(chosen if filters is None else analysis.top_filters(args.k))
    print("top filters: " + ", ".join(f"{r['layer']}[{r['channel']}]={r['saliency']:.2f}" for r in top_rows[:5]))
    print(f"wrote {out}/: " + ", ".join(_EXPLAIN_FILES))
    return 0


_EXPLAIN_FILES = ["profile.png", "input_saliency.png", "gradcam.png", "profile.csv", "result.json"]


def _write_explain(args, out, explainer, analysis, chosen, filters, heat, top, cam) -> None:  # noqa: ANN001
    """The five files of ``psal explain`` (the folder exists; a failure removes it)."""
    import numpy as np

    from .viz.heatmap import overlay
    from .viz.static import profile_png, triptych_png

    index = explainer.index
    mode_name = {"std": "standardized saliency", "raw": "mean |grad|", "norm": "saliency / mean", "signed": "mean grad"}
    profile_png(
        analysis.sorted_profile(),
        out / "profile.png",
        highlight=chosen,
        title=f"{explainer.model.name}: filter saliency profile, label '{analysis.label_name}'",
        ylabel=mode_name[args.mode],
    )
    triptych_png(
        [("image", analysis.image), ("input-space saliency", heat), ("overlay", overlay(analysis.image, heat))],
        out / "input_saliency.png",
        suptitle=f"pixels driving {len(chosen)} boosted filters (label '{analysis.label_name}')",
    )
    triptych_png(
        [("image", analysis.image), (f"{args.cam} ({top[0].name})", cam), ("overlay", overlay(analysis.image, cam))],
        out / "gradcam.png",
        suptitle=f"{args.cam} for the predicted class '{top[0].name}'",
    )
    std = analysis.standardized()
    with (out / "profile.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "layer", "channel", "saliency", "raw"])
        ids = np.arange(index.n_filters)
        for i, layer, channel in zip(ids, index.layer_names(ids), index.channels(ids), strict=True):
            writer.writerow([i, layer, int(channel), "" if std is None else f"{std[i]:.6g}", f"{analysis.raw[i]:.6g}"])
    result = {
        "model": explainer.model.name,
        "weights_id": explainer.model.weights_id,
        "n_filters": index.n_filters,
        "image": Path(args.image).name,
        "label": {"index": analysis.label, "name": analysis.label_name, "source": analysis.label_source},
        "prediction": [{"index": p.index, "name": p.name, "prob": round(p.prob, 6)} for p in top],
        "mode": args.mode,
        "k": len(chosen),
        "boost": args.boost,
        "filters": [int(i) for i in chosen],
        "top_filters": analysis.filter_rows(chosen if filters is None else analysis.top_filters(args.k)),
        "stats": None if explainer.stats is None else {
            k: explainer.stats.meta.get(k) for k in ("dataset", "n", "created", "source") if k in explainer.stats.meta
        },
        "files": list(_EXPLAIN_FILES),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


# -- psal layers -------------------------------------------------------------------------
def cmd_layers(args: argparse.Namespace) -> int:
    from .kernels.filters import FilterIndex
    from .models import load_model

    # The layout depends on the architecture only, so no weights are needed to list it.
    model = load_model(args.model, random_weights=True, device="meta")
    index = FilterIndex(model.module)
    rows = index.as_rows()
    if args.json:
        print(json.dumps({"model": model.name, "n_layers": len(rows), "n_filters": index.n_filters,
                          "checksum": index.checksum(), "layers": rows}, indent=2))
        return 0
    width = max(len(str(r["name"])) for r in rows)
    print(f"{'#':>4}  {'layer':<{width}}  {'filters':>7}  {'offset':>7}")
    for i, r in enumerate(rows):
        print(f"{i:>4}  {r['name']:<{width}}  {r['filters']:>7}  {r['offset']:>7}")
    print(f"total: {index.n_filters} filters in {len(rows)} conv layers ({model.name})")
    return 0


# -- psal stats --------------------------------------------------------------------------
def _ranks(dist) -> str:  # noqa: ANN001 - a DistContext
    return f" on {dist.world_size} processes ({dist.backend})" if dist.enabled else ""


def cmd_stats(args: argparse.Namespace) -> int:
    from .distributed import init_distributed

    # Under torchrun (RANK, WORLD_SIZE... set) every rank runs this; a plain run is one rank.
    with init_distributed(device=args.device) as dist:
        return _stats(args, dist)


def _stats(args: argparse.Namespace, dist) -> int:  # noqa: ANN001 - a DistContext
    from .data import open_dataset
    from .models import load_model
    from .store import check_replaceable, custom_stats_name, user_helper_objects
    from .validation import run_stats

    if args.out:
        check_replaceable(Path(args.out))  # before the model loads
        _check_out(Path(args.out))
    model = load_model(args.model, weights=args.weights, device=dist.device_for(args.device))
    dataset = open_dataset(args.data, labels=model.labels, preprocess=model.preprocess, limit=args.limit)
    # Custom weights get their own folder (name@fingerprint), where the lookup finds them.
    name = custom_stats_name(model.name, model.weights_id) if args.weights else model.name.replace(":", "_")
    out = Path(args.out) if args.out else user_helper_objects() / name
    if not args.out:
        _check_out(out)  # the default folder is known once the model's name is
    t0 = time.perf_counter()
    stats, samples = run_stats(model, dataset, out, batch_size=args.batch_size,
                               progress=not args.quiet and dist.is_main, keep_profiles=args.profiles,
                               checkpoint_every=args.checkpoint_every, strict=args.strict, dist=dist)
    seconds = time.perf_counter() - t0
    if not dist.is_main:
        return 0  # rank 0 wrote the folder and speaks for the run
    acc = float(samples.correct.mean())
    skipped = stats.meta.get("skipped", [])
    print(f"{model.name}: {stats.meta['n']} images from {dataset.description}"
          + (f" ({len(skipped)} unreadable, skipped: listed in meta.json)" if skipped else ""))
    print(f"top-1 accuracy {acc:.1%} ({int((~samples.correct).sum())} mistakes); "
          f"{stats.meta['dead_filters']} of {stats.n_filters} filters have std 0")
    print(f"{seconds:.1f} s ({seconds / max(1, stats.meta['n']):.3f} s/image) on {model.device}{_ranks(dist)}")
    print(f"wrote {out}/stats.safetensors and meta.json" + (" and profiles.safetensors" if args.profiles else ""))
    return 0


# -- psal index --------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    from .distributed import init_distributed

    # Under torchrun every rank builds its shard of the index; a plain run is one rank.
    with init_distributed(device=args.device) as dist:
        return _index(args, dist)


def _index(args: argparse.Namespace, dist) -> int:  # noqa: ANN001 - a DistContext
    from .data import open_dataset
    from .index import build_index, default_index_dir
    from .kernels.filters import FilterIndex
    from .models import load_model
    from .store import StatsError, default_stats_dir, load_stats

    if args.out:
        _check_out(Path(args.out))
    model = load_model(args.model, weights=args.weights, device=dist.device_for(args.device))
    dataset = open_dataset(args.data, labels=model.labels, preprocess=model.preprocess, limit=args.limit)
    # Statistics are only read, for the summary line: the index itself never depends on them.
    stats = None
    try:
        stats_dir = args.stats or default_stats_dir(model.name, model.weights_id)
        if stats_dir is not None:
            stats = load_stats(stats_dir, index=FilterIndex(model.module), weights_id=model.weights_id)
    except StatsError:
        if args.stats:
            raise
    out = Path(args.out) if args.out else default_index_dir(model, dataset)
    idx = build_index(model, dataset, out, batch_size=args.batch_size, progress=not args.quiet and dist.is_main,
                      overwrite=args.force, strict=args.strict, dist=dist)
    if not dist.is_main:
        return 0  # rank 0 wrote the manifest and speaks for the run
    info = idx.build_info
    n = len(idx)
    if info["status"] == "up to date":
        skipped = f" ({len(idx.skipped)} more were unreadable and skipped)" if idx.skipped else ""
        print(f"{out}: already complete for these {n} images{skipped} ({model.name}); --force rebuilds it")
    else:
        resumed = f", resumed at row {info['resumed_from']}" if info["resumed_from"] else ""
        secs = info["seconds"]
        skipped = f" ({len(idx.skipped)} unreadable, skipped: listed in meta.json)" if idx.skipped else ""
        print(f"{model.name}: {n} images from {dataset.description}{resumed}{skipped}")
        print(f"{secs:.1f} s ({secs / max(1, info['rows_computed']):.3f} s/image) on {model.device}{_ranks(dist)}")
    print(f"top-1 accuracy {float(idx.correct.mean()):.1%} ({int((~idx.correct).sum())} mistakes)")
    if stats is not None and idx.correct.any() and (~idx.correct).any():
        z = idx.standardized(stats).mean(axis=1)
        print(f"mean standardized saliency: incorrect {z[~idx.correct].mean():+.2f}, correct "
              f"{z[idx.correct].mean():+.2f} (statistics: {stats.meta.get('dataset', stats_dir)})")
    if idx.shards:
        feats = ", features.npy" if idx.meta.get("feature_dim") else ""
        print(f"wrote {out}/: manifest.json and {len(idx.shards)} shards (shard-RRRR/: profiles.npy float16{feats}, "
              f"table.csv, meta.json), read as one index of [{n}, {idx.n_filters}]")
    else:
        feats = f", features.npy [{n}, {idx.features.shape[1]}]" if idx.features is not None else ""
        print(f"wrote {out}/: profiles.npy [{n}, {idx.n_filters}] float16{feats}, table.csv, meta.json")
    return 0


# -- psal import-legacy ------------------------------------------------------------------
def cmd_import_legacy(args: argparse.Namespace) -> int:
    from .kernels.filters import FilterIndex
    from .models import load_model
    from .store import import_legacy, load_stats, user_helper_objects

    model = load_model(args.model, random_weights=True, device="meta")
    index = FilterIndex(model.module)
    out = Path(args.out) if args.out else user_helper_objects() / model.name.replace(":", "_")
    _check_out(out)
    import_legacy(args.file, index=index, model_name=model.name, out_dir=out)
    stats = load_stats(out, index=index)
    print(f"imported {stats.n_filters} filters of {model.name} "
          f"({stats.meta.get('dead_filters')} with std 0) into {out}")
    return 0


# -- psal dashboard ----------------------------------------------------------------------
def _upload_mb(text: str) -> float:
    """``--upload-limit``: a positive, finite number of megabytes."""
    import math

    try:
        mb = float(text)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise argparse.ArgumentTypeError(f"give a positive size in MB like 20; got {text!r}")
    return mb


def cmd_dashboard(args: argparse.Namespace) -> int:
    import signal

    from .dashboard import DashboardError, launch

    # A plain `kill` of this command must stop Voila too (it runs in its own process group).
    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    dash = None
    # Ctrl-C at any moment is a normal stop, also right after the URL was printed (launch()
    # prints it, then returns): launch() stops Voila itself when interrupted before returning.
    try:
        try:
            dash = launch(port=args.port, model=args.model, image=args.image, data=args.data, device=args.device,
                          weights=args.weights, stats=args.stats, index=args.index, open_browser=args.open,
                          preheat=not args.no_preheat, allow_remote=args.allow_remote,
                          upload_limit=int(round(args.upload_limit * 1_000_000)), export_dir=args.export_dir)
        except DashboardError as err:
            raise CliError(str(err)) from err
        print(f"psal dashboard: log in {dash.log_path}; press Ctrl-C to stop", flush=True)
        code = dash.wait()
    except KeyboardInterrupt:
        if dash is not None:
            dash.stop()
        print("psal dashboard: stopped", flush=True)
        return 0
    raise CliError(f"Voila stopped by itself (exit code {code}); see {dash.log_path}")


# -- psal experiment ---------------------------------------------------------------------
def cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments.base import EXPERIMENTS, ExperimentConfig, ExperimentContext

    spec = EXPERIMENTS[args.name].load()
    shared = {"data", "model", "weights", "stats", "device", "limit", "seed", "out", "index", "batch_size"}
    own = {k: v for k, v in vars(args).items()
           if k not in shared | {"name", "func", "debug", "command", "quiet"}}
    out = Path(args.out) if args.out else Path("psal_out") / "experiments" / args.name
    _check_out(out)
    config = ExperimentConfig(
        data=args.data, model=args.model, weights=args.weights, stats=args.stats, device=args.device,
        limit=args.limit, seed=args.seed, out=out, index=args.index, batch_size=args.batch_size,
        progress=not args.quiet, options=own, argv=["psal", *sys.argv[1:]],
    )
    ctx = ExperimentContext(args.name, config)
    assert spec.run is not None
    t0 = time.perf_counter()
    with _output_folder(out):  # a failing run leaves no empty or partial folder behind
        result = ctx.writer.write(spec.run(ctx), ctx)
    print(f"psal experiment {args.name}: {len(ctx.dataset)} images, {time.perf_counter() - t0:.1f} s")
    for line in result.get("summary", []):
        print(f"  {line}")
    print(f"wrote {out}/: " + ", ".join(result["files"]))
    return 0


# -- psal bench --------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    report = run_bench(args.what, model_name=args.model, repeat=args.repeat, device=args.device,
                       random_weights=args.random_weights, clicks=args.clicks, n=args.n, n_filters=args.filters,
                       naive_n=args.naive_n)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ._types import CAM_METHODS
    from .checks import float_arg, int_arg

    # Checked at parse time: a meaningless number fails before any model is loaded.
    POSITIVE_INT = int_arg(low=1)
    SEED = int_arg(low=0, high=2**32 - 1)
    PORT = int_arg(low=1, high=65535)
    BOOST = float_arg(low=0.0, low_open=True)
    # The map is clipped at the 99th percentile: the threshold must lie below it.
    PERCENTILE = float_arg(low=0.0, high=99.0, high_open=True)

    parser = _Parser(
        prog="psal",
        description="Parameter-space saliency: which filters malfunction on an image, and which pixels drive them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_opts(p: argparse.ArgumentParser, *, weights: bool = True) -> None:
        p.add_argument(
            "--model",
            default="efficientnet_lite0",
            help="efficientnet_lite0 (default, embedded), a torchvision name or timm:NAME",
        )
        if weights:
            p.add_argument(
                "--weights", default=None, help="weights file (.pth/.safetensors) instead of the default place"
            )
            p.add_argument("--offline", action="store_true",
                           help="never download a named model's weights (also PSAL_OFFLINE=1); the default never does")

    p = sub.add_parser("explain", help="profile, input-space saliency and GradCAM of one image")
    p.add_argument("image")
    model_opts(p)
    p.add_argument(
        "--label", default=None, help="class index, WordNet id or name (default: known label, else prediction)"
    )
    p.add_argument("--k", type=POSITIVE_INT, default=10, help="number of top filters to boost (default 10)")
    p.add_argument("--boost", type=BOOST, default=100.0, help="boost factor of the chosen filters (default 100)")
    p.add_argument("--filters", default=None, help="comma-separated filter ids to boost instead of the top k")
    p.add_argument("--mode", choices=["std", "raw", "norm"], default="std", help="what ranks the filters (default std)")
    p.add_argument("--percentile", type=PERCENTILE, default=90.0, help="threshold percentile of the map (default 90)")
    p.add_argument("--cam", choices=list(CAM_METHODS), default="gradcam", help="CAM method (default gradcam)")
    p.add_argument("--stats", default=None, help="helper-objects folder (default: the model's own)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="output folder (default psal_out/IMAGE_STEM)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("layers", help="list conv layers, filter counts and offsets")
    model_opts(p, weights=False)
    p.add_argument("--random-weights", action="store_true", help="accepted for scripts; the layout never needs weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("stats", help="per-filter validation statistics (helper objects) over a dataset")
    p.add_argument("--data", required=True, help="ImageFolder tree, CSV (file,label) or flat ILSVRC2012 val folder")
    model_opts(p)
    p.add_argument("--out", default=None,
                   help="output folder (default: the user cache, MODEL or, with --weights, MODEL@FINGERPRINT, "
                        "where explain and the explorer look)")
    p.add_argument(
        "--limit", type=POSITIVE_INT, default=None, help="use N images, evenly spaced over the dataset order"
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--profiles", action="store_true",
                   help="also keep every image's profile (profiles.safetensors, float16) for neighbour search")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: skip it with a warning, listed in meta.json)")
    p.add_argument("--checkpoint-every", type=POSITIVE_INT, default=8,
                   help="batches between checkpoints (.OUT.partial; the same command resumes there; default 8)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("index", help="per-image raw profiles, predictions and features of a dataset (for experiments)")
    p.add_argument("--data", required=True, help="ImageFolder tree, CSV (file,label) or flat ILSVRC2012 val folder")
    model_opts(p)
    p.add_argument("--stats", default=None,
                   help="statistics for the summary line only (default: the model's own); the index never uses them")
    p.add_argument("--out", default=None, help="index folder (default: the user cache, where experiments look)")
    p.add_argument(
        "--limit", type=POSITIVE_INT, default=None, help="use N images, evenly spaced over the dataset order"
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="rebuild even when --out already holds this index")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: skip it with a warning, listed in meta.json)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("import-legacy", help="convert the original code's *_filter_wise.pth statistics")
    p.add_argument("file")
    p.add_argument("--model", required=True, help="architecture the file belongs to (resnet50, vgg19, ...)")
    p.add_argument("--out", default=None)
    p.set_defaults(func=cmd_import_legacy)

    p = sub.add_parser("dashboard", help="serve the interactive explorer as a web page (Voila) on 127.0.0.1")
    p.add_argument("--port", type=PORT, default=None, help="TCP port (default: a free one)")
    p.add_argument("--model", default=None, help="efficientnet_lite0 (default), a torchvision name or timm:NAME")
    p.add_argument("--image", default=None, help="image to open first (default: the first of raw_images/)")
    p.add_argument("--data", default=None,
                   help="labelled image set for the dataset browser, dataset view and neighbours (CSV, ImageFolder, "
                        "ILSVRC val); its profile index is found or built at start (see --index)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--weights", default=None, help="weights file of a named model (.pth/.safetensors)")
    p.add_argument("--stats", default=None, help="helper-objects folder of the model (default: its own)")
    p.add_argument("--index", default=None,
                   help="profile-index folder of --data (psal index --out DIR; default: found or built at start)")
    p.add_argument("--offline", action="store_true",
                   help="never download a named model's weights (also PSAL_OFFLINE=1); the default never does")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")
    p.add_argument("--no-preheat", action="store_true",
                   help="do not prepare the explorer before the first visit (saves memory, slower first page)")
    p.add_argument("--allow-remote", action="store_true",
                   help="serve every network interface, not only 127.0.0.1 (still with the token in the URL)")
    p.add_argument("--upload-limit", type=_upload_mb, default=20.0, metavar="MB",
                   help="largest image a visitor may upload, in MB (default 20)")
    p.add_argument("--export-dir", default=None, metavar="DIR",
                   help="the only folder 'save on the server' writes under (default ./psal_export)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("experiment", help="the paper's dataset-level experiments (profiles, pruning, neighbors, ...)")
    exp = p.add_subparsers(dest="name", required=True, metavar="NAME")
    from .experiments.base import EXPERIMENTS

    for spec in EXPERIMENTS.values():
        q = exp.add_parser(spec.name, help=spec.help)
        q.add_argument(
            "--data", required=True, help="labelled dataset: CSV (file,label), ImageFolder or ILSVRC val folder"
        )
        model_opts(q)
        q.add_argument("--stats", default=None, help="helper-objects folder (default: the model's own)")
        q.add_argument("--index", default=None, help="profile-index folder (default: found or built for the data)")
        q.add_argument("--limit", type=POSITIVE_INT, default=None, help="use N images, evenly spaced over the dataset")
        q.add_argument("--seed", type=SEED, default=0, help="seed of every random choice (default 0)")
        q.add_argument("--batch-size", type=POSITIVE_INT, default=16)
        q.add_argument("--device", default=None)
        q.add_argument("--out", default=None, help="output folder (default psal_out/experiments/NAME)")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        try:
            loaded = spec.load()
        except ImportError:
            loaded = spec  # not implemented in this build: the command says so when run
        if loaded.add_arguments is not None:
            loaded.add_arguments(q)
        q.set_defaults(func=cmd_experiment)

    p = sub.add_parser("bench", help="benchmarks (figures for docs/benchmarks.md)")
    p.add_argument("what", choices=["kernels", "click", "stats", "neighbors", "dashboard"], nargs="?",
                   default="kernels",
                   help="kernels (compute core), click (filter click -> new map, in process), stats (per-image "
                        "cost of psal stats / index), neighbors (top-10 queries over a synthetic memory-mapped "
                        "index), dashboard (page load and clicks in Chromium)")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--repeat", type=POSITIVE_INT, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--clicks", type=POSITIVE_INT, default=10, help="timed filter clicks (click, dashboard; default 10)")
    p.add_argument(
        "--n", type=POSITIVE_INT, default=50_000, help="neighbors: rows of the synthetic index (default 50,000)"
    )
    p.add_argument("--filters", type=POSITIVE_INT, default=26_560,
                   help="neighbors: filters of the synthetic index (default 26,560, ResNet-50)")
    p.add_argument("--naive-n", type=int, default=5_000,
                   help="neighbors: rows of the side-by-side run of the in-memory path (default 5,000; 0 skips it)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or a parse error (2, already printed)
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "offline", False):
        # An environment variable, so that the dashboard's kernel inherits it too.
        os.environ["PSAL_OFFLINE"] = "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("psal: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the single place that turns errors into exit codes
        if args.debug:
            raise
        user_error = isinstance(err, (CliError, ValueError, FileNotFoundError, PermissionError, KeyError, IndexError))
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"psal: error: {message}", file=sys.stderr)
        if not user_error:
            print("psal: this looks like a bug; run again with --debug for the traceback", file=sys.stderr)
        return 2 if user_error else 1


if __name__ == "__main__":
    sys.exit(main())
