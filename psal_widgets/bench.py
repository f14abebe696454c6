"""Benchmarks behind ``psal bench`` (figures go to docs/benchmarks.md, never into unit tests).

Each figure is the median of ``repeat`` timed runs after one warm-up run; variants that are
compared run side by side in the same process, so their ratio is what to read.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["run_bench", "time_median"]


def time_median(fn: Callable[[], object], *, repeat: int, warmup: int = 1, sync: torch.device | None = None) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls."""
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        if sync is not None and sync.type == "cuda":
            torch.cuda.synchronize(sync)
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeat))


def _bench_kernels(model_name: str, *, repeat: int, device: str | None, random_weights: bool) -> dict[str, Any]:
    from .kernels.filters import FilterIndex
    from .kernels.profiles import filter_profiles
    from .kernels.saliency import InputSaliency
    from .kernels.stats import FilterStats
    from .models import load_model

    model = load_model(model_name, random_weights=random_weights, device=device)
    net, dev = model.module, model.device
    index = FilterIndex(net)
    crop = model.preprocess.crop
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, crop, crop, generator=gen).to(dev)
    y = torch.randint(0, 1000, (8,), generator=gen).to(dev)
    # Unit statistics: the cost of standardizing is the same whatever their values.
    stats = FilterStats(torch.zeros(index.n_filters, dtype=torch.float64), torch.ones(index.n_filters, dtype=torch.float64))
    sync = dev

    def original_style() -> None:
        # The original code's find_testset_saliency: create_graph on every parameter.
        loss = F.cross_entropy(net(x[:1]), y[:1])
        grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=True)
        torch.cat([g.abs().flatten(1).mean(1) for g in grads if g.dim() == 4])

    res: dict[str, Any] = {"model": model.name, "device": str(dev), "threads": torch.get_num_threads(),
                           "n_filters": index.n_filters, "repeat": repeat}
    res["profile_original_s"] = time_median(original_style, repeat=repeat, sync=sync)
    res["profile_conv_only_s"] = time_median(
        lambda: filter_profiles(net, x[:1], y[:1], index=index, mode="raw", strategy="loop"), repeat=repeat, sync=sync)
    res["profile_batch8_loop_s_per_img"] = time_median(
        lambda: filter_profiles(net, x, y, index=index, mode="raw", strategy="loop"), repeat=max(1, repeat // 2), sync=sync) / 8
    res["profile_batch8_vmap_s_per_img"] = time_median(
        lambda: filter_profiles(net, x, y, index=index, mode="raw", strategy="vmap"), repeat=max(1, repeat // 2), sync=sync) / 8

    def new_image() -> None:
        kernel = InputSaliency(net, x[0], int(y[0]), index=index, stats=stats)
        kernel.gradient(k=10)
        kernel.release()

    kernel = InputSaliency(net, x[1], int(y[1]), index=index, stats=stats)
    sets = iter(range(10**6))

    def new_filter_set() -> None:
        i = next(sets)
        kernel.gradient(torch.arange(10) * 97 + i % 50)

    res["saliency_new_image_s"] = time_median(new_image, repeat=repeat, sync=sync)
    res["saliency_new_filter_set_s"] = time_median(new_filter_set, repeat=repeat, sync=sync)
    from .kernels.basis import SaliencyBasis

    t0 = time.perf_counter()
    basis = SaliencyBasis(kernel)
    candidates = kernel.top_filters(10).tolist()
    basis.add(candidates)
    res["basis_build_10_s"] = time.perf_counter() - t0
    res["basis_filter_set_s"] = time_median(lambda: basis.gradient(candidates[:5]), repeat=repeat * 4, sync=sync)
    kernel.release()
    res["ratio_original_over_conv_only"] = res["profile_original_s"] / res["profile_conv_only_s"]
    res["ratio_vmap_over_loop"] = res["profile_batch8_vmap_s_per_img"] / res["profile_batch8_loop_s_per_img"]
    res["ratio_new_image_over_new_set"] = res["saliency_new_image_s"] / res["saliency_new_filter_set_s"]
    res["ratio_new_set_over_basis"] = res["saliency_new_filter_set_s"] / res["basis_filter_set_s"]
    return res


def run_bench(what: str, *, model_name: str, repeat: int = 5, device: str | None = None,
              random_weights: bool = False) -> dict[str, Any]:
    """Run a benchmark, print a table and return the figures."""
    if what != "kernels":
        raise ValueError(f"unknown benchmark {what!r}; available: kernels")
    res = _bench_kernels(model_name, repeat=repeat, device=device, random_weights=random_weights)
    print(f"psal bench kernels: {res['model']} on {res['device']} ({res['threads']} threads), "
          f"{res['n_filters']} filters, median of {repeat} after warm-up")
    rows = [
        ("profile, original style (create_graph, all params)", res["profile_original_s"]),
        ("profile, conv weights only (ours)", res["profile_conv_only_s"]),
        ("profile, batch of 8, loop (per image)", res["profile_batch8_loop_s_per_img"]),
        ("profile, batch of 8, vmap (per image)", res["profile_batch8_vmap_s_per_img"]),
        ("input saliency, new image", res["saliency_new_image_s"]),
        ("input saliency, new filter set, same image", res["saliency_new_filter_set_s"]),
        ("basis maps for 10 candidate filters (once per image)", res["basis_build_10_s"]),
        ("input saliency, filter set from the basis", res["basis_filter_set_s"]),
    ]
    for name, sec in rows:
        print(f"  {name:<52} {sec * 1000:9.1f} ms")
    print(f"  ratios: original/ours {res['ratio_original_over_conv_only']:.2f}, vmap/loop "
          f"{res['ratio_vmap_over_loop']:.2f}, new image/new set {res['ratio_new_image_over_new_set']:.2f}, "
          f"new set/basis {res['ratio_new_set_over_basis']:.0f}")
    return res
