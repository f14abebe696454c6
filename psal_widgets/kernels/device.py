"""Device choice: CUDA, then Apple MPS, then CPU, unless the user names one."""
from __future__ import annotations

import torch

__all__ = ["pick_device", "same_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``... ``None`` or ``"auto"`` picks the first
        available of CUDA, MPS and CPU.

    Raises
    ------
    ValueError
        If the named device does not exist on this machine.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N, mps or auto") from err
    if dev.type == "meta":
        return dev  # shapes only, used to read filter layouts
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here: use --device cpu")
    return dev


def same_device(actual: str | torch.device, wanted: str | torch.device) -> bool:
    """Whether ``wanted`` names the device ``actual`` (``cuda`` is the current CUDA device).

    Parameters
    ----------
    actual : str or torch.device
        Where something lives.
    wanted : str or torch.device
        What a caller asks for; ``auto`` matches the device :func:`pick_device` would choose.
    """
    a = torch.device(actual)
    w = pick_device(wanted) if wanted == "auto" else torch.device(wanted)
    if a.type != w.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (w.index if w.index is not None else current)
