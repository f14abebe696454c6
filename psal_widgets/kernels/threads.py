"""Run small computations on one thread (torch and OpenCV), restoring the settings after.

A map answered from the instant-map basis is a weighted sum of a few dozen 224x224 maps plus a
blur: a few milliseconds of work. Split over torch's (and OpenCV's) thread pool, each operation
ends on a barrier that waits for every pool thread, and on a 2-core machine where another process
is busy (the browser redrawing the chart right after the click that asked for the map) one
waiting thread stalls the whole step. Measured on this project's CPU, 12 such maps each: 6 ms
median on one thread with a busy core beside it, 14 ms median and 128 ms at worst on two; in the
dashboard the same maps took 300-700 ms while Chromium redrew the chart.

The settings are process-wide: this is meant for the explorer's one worker thread, the only
thread that runs torch there.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["single_threaded"]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Within the block, torch and OpenCV use one thread each (intra-op parallelism off)."""
    torch_threads = torch.get_num_threads()
    try:
        import cv2
    except ImportError:  # OpenCV is a dependency; without it only torch is limited
        cv2 = None  # type: ignore[assignment]
    cv_threads = cv2.getNumThreads() if cv2 is not None else None
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        if cv2 is not None and cv_threads is not None:
            cv2.setNumThreads(cv_threads)
