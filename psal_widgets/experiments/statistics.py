"""Small statistics shared by the experiments: bootstrap intervals and paired tests."""
from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci", "mean_ci", "sign_flip_test"]


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


def sign_flip_test(
    differences: np.ndarray, *, rng: np.random.Generator, n_perm: int = 10000, exact_max: int = 16
) -> float:
    """Two-sided paired permutation (sign-flip) test that the mean difference is zero.

    Under the null hypothesis each paired difference is symmetric around 0, so flipping its
    sign leaves the distribution unchanged; the p-value is the share of sign patterns whose
    ``|mean|`` reaches the observed one. With ``n <= exact_max`` every one of the ``2**n``
    patterns is enumerated (exact); otherwise ``n_perm`` random patterns are drawn and
    ``p = (1 + hits) / (1 + n_perm)`` (never 0, as recommended for Monte-Carlo p-values).

    Parameters
    ----------
    differences : np.ndarray, shape [n]
        One paired difference per image (e.g. change after masking the salient pixels minus the
        change after masking random ones, or a change against 0); NaNs are dropped.
    rng : np.random.Generator
    n_perm : int
    exact_max : int

    Returns
    -------
    float
        p-value in (0, 1]; 1.0 when every difference is 0, nan for an empty sample.
    """
    d = np.asarray(differences, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    # A relative tolerance so that float noise in sums of the same values counts as a tie.
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if n <= exact_max:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        means = np.abs(patterns @ d) / n
        return float(np.mean(means >= observed - tol))
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, n))
    means = np.abs(signs @ d) / n
    return float((1 + np.sum(means >= observed - tol)) / (1 + n_perm))
