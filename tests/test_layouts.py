"""Filter layouts of the four architectures of the original code (GUIDE §2, §6).

The counts are an independent reference twice over: the numbers quoted by the paper's code
and the lengths of the statistics that code saved (when ../shared/data is present).
"""
from __future__ import annotations

import pytest
import torch

from psal_widgets.kernels import FilterIndex
from psal_widgets.models import load_model

from .conftest import REFERENCE

ARCHS = {"resnet50": 26560, "vgg19": 5504, "densenet121": 10240, "inception_v3": 18112}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch_index(request) -> tuple[str, FilterIndex]:
    # Layouts depend on the architecture only: build on the meta device, no weights needed.
    model = load_model(request.param, random_weights=True, device="meta")
    return request.param, FilterIndex(model.module)


def test_filter_count_matches_the_original_code(arch_index):
    arch, index = arch_index
    assert index.n_filters == ARCHS[arch]
    assert sum(index.sizes) == index.n_filters
    offsets = [layer.offset for layer in index.layers]
    assert offsets == [sum(index.sizes[:i]) for i in range(len(index.sizes))]


def test_order_is_named_parameters_order(arch_index):
    arch, index = arch_index
    model = load_model(arch, random_weights=True, device="meta").module
    four_d = [name for name, p in model.named_parameters() if p.dim() == 4]
    # Every 4-D parameter of these architectures is a conv weight, so the index must list
    # exactly those, in the same order (the original code's flattening order).
    assert list(index.param_names) == four_d


@pytest.mark.data
def test_lengths_match_the_legacy_statistics(arch_index):
    arch, index = arch_index
    folder = REFERENCE / "original-helper-objects" / arch
    files = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"legacy statistics for {arch} not present")
    legacy = torch.load(files[0], map_location="cpu", weights_only=True)
    assert legacy["mean"].numel() == legacy["std"].numel() == index.n_filters
