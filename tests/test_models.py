"""The model zoo's weights: the default never touches the network; named models download with the
library's own mechanism unless offline, and the offline error names the file and the folder."""
from __future__ import annotations

import socket

import pytest
import torch

from psal_widgets import models
from psal_widgets.models import ModelError, is_offline, load_model


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    # torch.hub keeps an explicit directory in a module global; put back whatever was there.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    yield tmp_path


def test_offline_flag_and_variable(monkeypatch):
    monkeypatch.delenv("PSAL_OFFLINE", raising=False)
    assert not is_offline()
    monkeypatch.setenv("PSAL_OFFLINE", "1")
    assert is_offline()
    assert not is_offline(False)


@pytest.mark.slow
def test_default_model_loads_with_sockets_blocked(no_network):
    m = load_model()
    assert m.weights_id.startswith("sha256:")


def test_offline_torchvision_error_names_the_file_and_folder(empty_hub, no_network):
    with pytest.raises(ModelError) as err:
        load_model("resnet18", offline=True, device="cpu")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg
    assert str(empty_hub / "torch" / "hub" / "checkpoints") in msg
    assert "offline" in msg


def test_offline_timm_error_names_the_hub_file(empty_hub, no_network):
    with pytest.raises(ModelError) as err:
        load_model("timm:resnet18", offline=True, device="cpu")
    assert "timm/resnet18" in str(err.value) and "--weights" in str(err.value)


def test_torchvision_download_goes_through_the_torch_hub_cache(empty_hub, monkeypatch, tmp_path):
    # A local "server": a state dict published under a file:// URL with torchvision's file name.
    from torchvision.models import resnet18

    torch.manual_seed(3)
    src = tmp_path / "server"
    src.mkdir()
    published = src / "resnet18-f37072fd.pth"
    torch.save(resnet18().state_dict(), published)
    monkeypatch.setattr(models, "_torchvision_url", lambda spec: published.as_uri())
    m = load_model("resnet18", offline=False, device="cpu")
    cached = empty_hub / "torch" / "hub" / "checkpoints" / published.name
    assert cached.is_file()
    assert m.weights_id == models.file_checksum(cached)
    want = torch.load(published, weights_only=True)
    assert torch.equal(m.module.state_dict()["conv1.weight"], want["conv1.weight"])
    # A second load reads the cache, even offline.
    again = load_model("resnet18", offline=True, device="cpu")
    assert again.weights_id == m.weights_id


def test_timm_download_uses_timm_s_own_loader(empty_hub, monkeypatch, tmp_path):
    import timm

    torch.manual_seed(4)
    published = tmp_path / "resnet18_tiny.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), published)
    monkeypatch.setattr(models, "_timm_overlay", lambda name: {"hf_hub_id": None, "url": published.as_uri()})
    m = load_model("timm:resnet18", offline=False, device="cpu")
    want = torch.load(published, weights_only=True)
    assert torch.equal(m.module.state_dict()["conv1.weight"], want["conv1.weight"])


@pytest.mark.parametrize("name", ["convnext_tiny", "vit_small_patch16_224", "resnet50d"])
def test_timm_preprocessing_comes_from_timm_s_transform(name):
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import CenterCrop, Resize

    m = load_model(f"timm:{name}", random_weights=True, device="meta")
    module = __import__("timm").create_model(name, pretrained=False)
    cfg = resolve_data_config(model=module)
    steps = create_transform(**cfg).transforms
    resize = next(t for t in steps if isinstance(t, Resize)).size
    assert m.preprocess.resize == (resize if isinstance(resize, int) else resize[0])
    assert m.preprocess.crop == next(t for t in steps if isinstance(t, CenterCrop)).size[0]
    assert m.preprocess.interpolation == cfg["interpolation"]
    if name == "convnext_tiny":
        assert m.preprocess.resize == 235  # floor(224 / 0.95), where round() gave 236


def test_squash_crop_mode_resizes_both_sides():
    import numpy as np
    from PIL import Image

    from psal_widgets.data import Preprocess

    img = Image.fromarray(np.zeros((100, 300, 3), dtype=np.uint8))
    center = Preprocess(resize=64, crop=64).display(img)
    squash = Preprocess(resize=64, crop=64, crop_mode="squash").display(img)
    assert center.shape == squash.shape == (64, 64, 3)
    # A red stripe at the far left survives a squash but is cropped away by a center crop.
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, :30, 0] = 255
    img = Image.fromarray(arr)
    assert Preprocess(resize=64, crop=64, crop_mode="squash").display(img)[:, 2, 0].mean() > 200
    assert Preprocess(resize=64, crop=64).display(img)[:, 2, 0].mean() < 10
    with pytest.raises(ValueError, match="crop_mode"):
        Preprocess(crop_mode="border")
