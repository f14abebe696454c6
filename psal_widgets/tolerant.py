"""Reading a dataset that may hold bad images (truncated, not an image, empty), for long runs.

``psal stats`` and ``psal index`` go through :class:`TolerantImages`: an image that cannot be
read becomes a placeholder with its reason instead of an exception (an exception inside a
DataLoader worker would end the whole run, and its message would arrive wrapped). The run
skips it with a warning and records it in its metadata; ``strict=True`` keeps the stop.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .data import ImageError, LabeledImages, Preprocess

__all__ = ["Skipped", "TolerantImages", "report_skipped"]


@dataclass(frozen=True)
class Skipped:
    """An image left out of a run: its path relative to the dataset root, and why."""

    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


class TolerantImages(Dataset):
    """``dataset`` whose items are ``(image, label, reason)``; ``reason`` is ``""`` for a good
    image, else the one-line error (with the file named relative to the dataset root, so that
    metadata carries no absolute path) and ``image`` is a zero placeholder of the right shape.

    Parameters
    ----------
    dataset : LabeledImages
    """

    def __init__(self, dataset: LabeledImages) -> None:
        self.dataset = dataset
        self.relative = dataset.relative_files()
        pre = dataset.preprocess or Preprocess()
        self.shape = (3, int(pre.crop), int(pre.crop))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            x, y = self.dataset[i]
        except ImageError as err:
            reason = str(err).replace(os.fspath(self.dataset.files[i]), self.relative[i])
            return torch.zeros(self.shape), int(self.dataset.labels[i]), reason.strip().splitlines()[0]
        return x, y, ""


def report_skipped(item: Skipped, *, strict: bool, command: str, bar: Any = None) -> None:
    """Stop on a bad image (``strict``) or print one warning line without breaking a progress bar.

    Raises
    ------
    ImageError
        With ``strict``: the image's own message and how to go on without it.
    """
    if strict:
        raise ImageError(f"{item.reason} (stopped by --strict; without it `{command}` skips bad images)")
    line = f"psal: warning: skipped {item.file}: {item.reason}"
    if bar is not None and not getattr(bar, "disable", True):
        bar.write(line, file=sys.stderr)  # tqdm.write keeps the bar intact below the message
    else:
        print(line, file=sys.stderr)
