"""Shared fixtures: a tiny seeded CNN, the shared data folder, the default model (loaded once)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PSAL_SHARED_DATA", ROOT.parent / "shared" / "data"))
VAL800 = SHARED / "imagenet-val-800"
REFERENCE = SHARED / "reference"

torch.set_num_threads(min(2, torch.get_num_threads()))


class TinyNet(nn.Module):
    """Plain conv, batch norm, a depthwise (grouped) conv and a 1x1 conv: 4 + 4 + 5 = 13 filters.

    ``tanh`` keeps the network smooth so that finite differences are a valid reference.
    """

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.pw = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.bn1(self.conv1(x)))
        x = torch.tanh(self.pw(torch.tanh(self.dw(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make_tiny(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    # Non-trivial running statistics, as a trained network would have.
    net.bn1.running_mean.uniform_(-0.5, 0.5)
    net.bn1.running_var.uniform_(0.5, 2.0)
    return net.to(dtype).eval()


@pytest.fixture
def tiny() -> TinyNet:
    return make_tiny()


@pytest.fixture(scope="session")
def default_explainer():
    from psal_widgets.explainer import Explainer

    return Explainer()


def needs_data(path: Path = VAL800):
    return pytest.mark.skipif(not path.exists(), reason=f"shared data not present ({path.name})")
