"""Checks of user-given values, shared by the CLI, the Python API and the loaders (NumPy only).

Every bad value is refused where it enters, before any work, with a message that names the
value, what is allowed and (where it helps) the fix: the same rule for a command-line flag
(:func:`int_arg`, :func:`float_arg`, used as argparse ``type=``), a Python argument
(:func:`filter_ids`, :func:`boost_factor`, :func:`profile_mode`) and a file's numbers
(:func:`stats_problem`).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._types import MODES

__all__ = [
    "boost_factor",
    "filter_ids",
    "float_arg",
    "int_arg",
    "profile_mode",
    "stats_problem",
]


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _bounds(low: float | None, high: float | None, *, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return "finite"


def int_arg(*, low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer option in ``[low, high]``.

    ``--k 0`` or ``--batch-size -3`` then fail at parse time, as argparse's own errors do
    (``psal: error: argument --k: ...``, exit 2), instead of after the model has loaded.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            want = _bounds(low, high, low_open=False, high_open=False)
            raise argparse.ArgumentTypeError(f"must be an integer {want}; got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def float_arg(
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type=`` for a finite number in the given range (``nan`` and ``inf`` refused).

    Parameters
    ----------
    low, high : float, optional
        Bounds; ``None``: unbounded on that side (the value must still be finite).
    low_open, high_open : bool
        Exclude the bound itself (``--boost 0`` is meaningless: ``low=0, low_open=True``).
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and (value >= high if high_open else value > high))
        if bad:
            want = _bounds(low, high, low_open=low_open, high_open=high_open)
            raise argparse.ArgumentTypeError(f"must be a finite number {want}; got {text}")
        return value

    parse.__name__ = "number"
    return parse


def boost_factor(value: Any) -> float:
    """The boost factor of a filter set as a float; positive and finite, else ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"boost must be a number; got {value!r}")
    try:
        boost = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"boost must be a number; got {value!r}") from None
    if not (math.isfinite(boost) and boost > 0.0):
        raise ValueError(f"boost must be a positive finite number (the paper uses 100); got {value!r}")
    return boost


def profile_mode(mode: Any) -> str:
    """A profile mode (``std``, ``raw``, ``norm``, ``signed``), else ``ValueError`` naming them."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    return str(mode)


def filter_ids(filters: Sequence[Any] | np.ndarray | int, *, n_filters: int | None = None) -> np.ndarray:
    """Filter ids as int64 [K]: integers only (``1.7`` is refused, never truncated), in range.

    Parameters
    ----------
    filters : int, sequence of int or integer array
        Integral floats such as ``2.0`` (from JSON, say) are accepted as ``2``.
    n_filters : int, optional
        The model's filter count: ids must lie in ``[0, n_filters)``.

    Returns
    -------
    np.ndarray, shape [K], int64

    Raises
    ------
    ValueError
        A non-integer, non-finite or boolean id, or one out of range.
    """
    if hasattr(filters, "detach"):  # a torch tensor, without importing torch here
        filters = filters.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(filters)
    if arr.dtype.kind not in "iuf":  # booleans, strings, objects: only plain Python ints pass
        bad = [v for v in arr.ravel().tolist() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            raise ValueError(f"filter ids must be integers; got {bad[:5]}")
    flat = arr.reshape(-1)
    if flat.dtype.kind == "f":
        wrong = flat[~np.isfinite(flat) | (flat != np.round(flat))]
        if wrong.size:
            raise ValueError(
                f"filter ids must be integers; got {wrong[:5].tolist()} (ids are never rounded: "
                "pass the integer ids, e.g. from top_filters())"
            )
    try:
        ids = flat.astype(np.int64)
    except OverflowError:  # a Python int past 2**63: out of any model's range
        raise ValueError(f"filter ids must be in range; got {flat[:5].tolist()}") from None
    if n_filters is not None and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_filters):
        out = ids[(ids < 0) | (ids >= n_filters)]
        raise ValueError(f"filter ids {out[:5].tolist()} are out of range: this model has {n_filters} filters "
                         f"(0..{n_filters - 1})")
    return ids


def stats_problem(mean: Any, std: Any) -> str | None:
    """What makes a statistics pair unusable, or ``None`` when it is fine.

    NaN or infinite entries in either, or a negative std, would turn every standardized profile
    into NaN or flip signs silently; they are refused on load and on import.

    Parameters
    ----------
    mean, std : array-like, shape [F]
        NumPy arrays or CPU tensors.
    """
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    for name, a in (("mean", m), ("std", s)):
        n_bad = int((~np.isfinite(a)).sum())
        if n_bad:
            first = int(np.flatnonzero(~np.isfinite(a))[0])
            return f"{n_bad} {name} values are NaN or infinite (first: filter {first}, {a[first]})"
    n_neg = int((s < 0).sum())
    if n_neg:
        first = int(np.flatnonzero(s < 0)[0])
        return f"{n_neg} std values are negative (first: filter {first}, {s[first]:g})"
    return None
