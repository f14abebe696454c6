"""Helper objects on disk: round trip, layout and weights checks, legacy import."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from psal_widgets.kernels import FilterIndex, FilterStats
from psal_widgets.store import (
    SampleResults,
    StatsError,
    import_legacy,
    layout_meta,
    load_samples,
    load_stats,
    save_stats,
)

from .conftest import REFERENCE, make_tiny, needs_data


def _stats(index: FilterIndex, weights_id: str = "sha256:abc") -> FilterStats:
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(index.n_filters, generator=g, dtype=torch.float64)
    std = torch.rand(index.n_filters, generator=g, dtype=torch.float64)
    return FilterStats(mean, std, {"model": "tiny", "weights_id": weights_id, "layout": layout_meta(index), "n": 3})


def test_round_trip_with_samples(tmp_path):
    index = FilterIndex(make_tiny())
    stats = _stats(index)
    samples = SampleResults(np.array([0, 1, 2]), np.array([0, 2, 2]), np.array([0.9, 0.1, 0.5], np.float32),
                            np.array([0.9, 0.7, 0.5], np.float32), ["a.jpg", "b.jpg", "c.jpg"],
                           profiles=np.arange(39, dtype=np.float16).reshape(3, 13))
    save_stats(tmp_path / "h", stats, samples=samples)
    meta = json.loads((tmp_path / "h" / "meta.json").read_text())
    assert meta["format"] == "psal-helper-objects/1" and meta["files"] == ["a.jpg", "b.jpg", "c.jpg"]
    assert meta["accuracy"] == pytest.approx(2 / 3)
    back = load_stats(tmp_path / "h", index=index, weights_id="sha256:abc")
    assert back.mean.dtype == torch.float64
    assert torch.equal(back.mean, stats.mean) and torch.equal(back.std, stats.std)
    got = load_samples(tmp_path / "h")
    np.testing.assert_array_equal(got.correct, [True, False, True])
    np.testing.assert_array_equal(got.profiles, np.arange(39, dtype=np.float16).reshape(3, 13))
    assert meta["profiles"] == "profiles.safetensors"


def test_mismatches_are_refused_with_a_clear_message(tmp_path):
    index = FilterIndex(make_tiny())
    save_stats(tmp_path / "h", _stats(index))
    other = make_tiny()
    other.pw = torch.nn.Conv2d(4, 6, 1)
    with pytest.raises(StatsError, match="made for tiny .* this model has 14 filters"):
        load_stats(tmp_path / "h", index=FilterIndex(other))
    with pytest.raises(StatsError, match="other weights"):
        load_stats(tmp_path / "h", index=index, weights_id="sha256:zzz")
    with pytest.raises(StatsError, match="psal stats"):
        load_stats(tmp_path / "missing", index=index)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "stats.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StatsError, match="cannot read"):
        load_stats(tmp_path / "bad")


def test_import_legacy_synthetic_and_refuses_pickled_code(tmp_path):
    index = FilterIndex(make_tiny())
    path = tmp_path / "tiny_saliency_stat_filter_wise.pth"
    torch.save({"mean": torch.arange(13.0), "std": torch.zeros(13)}, path)
    import_legacy(path, index=index, model_name="tiny", out_dir=tmp_path / "out")
    stats = load_stats(tmp_path / "out", index=index)
    assert torch.equal(stats.mean, torch.arange(13.0, dtype=torch.float64))
    assert stats.meta["dead_filters"] == 13
    torch.save({"mean": torch.zeros(12), "std": torch.ones(12)}, path)
    with pytest.raises(StatsError, match="holds 12 filters but tiny has 13"):
        import_legacy(path, index=index, model_name="tiny", out_dir=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # nothing is written on a mismatch

    class Evil:  # an object whose unpickling would run code
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"mean": Evil(), "std": torch.ones(13)}, path, _use_new_zipfile_serialization=True)
    with pytest.raises(StatsError, match="cannot read"):
        import_legacy(path, index=index, model_name="tiny", out_dir=tmp_path / "out3")


LEGACY = {"resnet50": 26560, "vgg19": 5504, "densenet121": 10240, "inception_v3": 18112}


@pytest.mark.parametrize("arch", sorted(LEGACY))
def test_torchvision_filter_counts(arch):
    kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    assert FilterIndex(model).n_filters == LEGACY[arch]


@needs_data(REFERENCE / "original-helper-objects")
@pytest.mark.data
@pytest.mark.parametrize("arch", sorted(LEGACY))
def test_legacy_statistics_import(arch, tmp_path):
    folder = REFERENCE / "original-helper-objects" / arch
    files = sorted(folder.glob("*filter_wise*.pth"))
    assert files, f"no legacy file in {folder}"
    kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    with torch.device("meta"):
        index = FilterIndex(torchvision.models.get_model(arch, weights=None, **kwargs))
    import_legacy(files[0], index=index, model_name=arch, out_dir=tmp_path)
    stats = load_stats(tmp_path, index=index)
    assert stats.n_filters == LEGACY[arch]
    if arch == "resnet50":
        assert stats.meta["dead_filters"] == 280  # GUIDE §6
