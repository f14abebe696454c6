"""kernels.threads.single_threaded: one thread inside, the caller's settings restored after."""
from __future__ import annotations

import cv2
import pytest
import torch

from psal_widgets.kernels.threads import single_threaded


def test_one_thread_inside_and_settings_restored() -> None:
    before_torch, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    with single_threaded():
        assert torch.get_num_threads() == 1
        assert cv2.getNumThreads() == 1
    assert (torch.get_num_threads(), cv2.getNumThreads()) == (before_torch, before_cv)


def test_restored_after_an_error_too() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), single_threaded():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
