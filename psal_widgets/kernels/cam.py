"""Class-activation maps through the ``grad-cam`` package (GradCAM and friends), for comparison.

The package is imported at the first map, not with this module: it imports scikit-learn (for
EigenCAM), about 0.9 s on this project's 2-core CPU, which the dashboard's first chart need not wait for.
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from torch import Tensor, nn

from .._types import CAM_METHODS, CamMethod
from .grad_mode import requires_grad

__all__ = ["cam_map", "conv_layer_names", "default_cam_layer"]

#: CAM method -> class name in ``pytorch_grad_cam``.
_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
}


def _grad_cam(method: str) -> tuple[Any, Any]:
    """The package's class for ``method`` and its ``ClassifierOutputTarget``."""
    package = importlib.import_module("pytorch_grad_cam")
    targets = importlib.import_module("pytorch_grad_cam.utils.model_targets")
    return getattr(package, _METHODS[method]), targets.ClassifierOutputTarget


def conv_layer_names(model: nn.Module) -> list[str]:
    """Names of all ``nn.Conv2d`` modules, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_cam_layer(model: nn.Module) -> str:
    """The last conv layer: the usual GradCAM target (coarse but class-discriminative)."""
    names = conv_layer_names(model)
    if not names:
        raise ValueError("the model has no nn.Conv2d layer to attach a CAM to")
    return names[-1]


def cam_map(
    model: nn.Module,
    image: Tensor,
    *,
    target_class: int,
    method: CamMethod = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """A CAM heat map for one image and class.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode. Its parameters' ``.grad`` and ``requires_grad`` are left as found.
    image : Tensor, shape [3, H, W]
        Preprocessed image on the model's device. Not modified.
    target_class : int
    method : {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam"}
    layer : str, optional
        Module name of the target layer (default: the last conv layer).

    Returns
    -------
    np.ndarray, shape [H, W], float32 in [0, 1]
    """
    if method not in _METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    modules = dict(model.named_modules())
    name = layer if layer is not None else default_cam_layer(model)
    if name not in modules:
        raise ValueError(f"no layer named {name!r}; conv layers are e.g. {conv_layer_names(model)[-3:]}")
    cam_class, classifier_target = _grad_cam(method)
    was_training = model.training
    # An input that requires grad keeps the graph alive through the frozen weights.
    x = image.detach().clone().unsqueeze(0).requires_grad_(True)
    try:
        # Gradients flow from the input instead of the weights, so that the package's backward
        # pass leaves no .grad on the user's parameters.
        with (
            requires_grad(model.parameters(), False),
            cam_class(model=model, target_layers=[modules[name]]) as cam,
        ):
            heat = cam(input_tensor=x, targets=[classifier_target(int(target_class))])
    finally:
        model.train(was_training)
    out = np.nan_to_num(np.asarray(heat[0], dtype=np.float32))
    return np.clip(out, 0.0, 1.0)


