"""Small statistics shared by the experiments: bootstrap intervals and paired tests."""
from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "mean_ci"]


def bootstrap_ci(
    values: np.ndarray, *, rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean.

    Parameters
    ----------
    values : np.ndarray, shape [n]
        One number per image (NaNs are dropped).
    rng : np.random.Generator
    n_boot : int
        Resamples.
    level : float
        Coverage, e.g. 0.95.

    Returns
    -------
    (low, high) : floats; (nan, nan) for an empty sample.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"), float("nan"))
    # Resample indices in one [n_boot, n] draw: vectorised, no Python loop.
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # The percentile interval of a skewed sample can miss the sample mean by rounding; widen to it.
    m = float(v.mean())
    return (min(float(low), m), max(float(high), m))


def mean_ci(values: np.ndarray, *, rng: np.random.Generator, n_boot: int = 2000) -> dict[str, float]:
    """``{"mean", "ci_low", "ci_high", "n"}`` of ``values`` (95% bootstrap interval)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    low, high = bootstrap_ci(v, rng=rng, n_boot=n_boot)
    return {"mean": float(v.mean()) if v.size else float("nan"), "ci_low": low, "ci_high": high, "n": int(v.size)}
