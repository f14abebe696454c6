"""Notice a browser page connecting to this kernel, before any widget of it has loaded.

A Jupyter front end (a Voila page, a JupyterLab tab) that connects to a kernel first asks for
``kernel_info`` and then for the open comms (``comm_info``), about two seconds before its first
widget starts loading. The explorer pauses its idle-time work (the instant-map basis, two CPU
cores' worth) from that moment until the page has drawn the chart: on a 2-core machine the
page's own work (plotly.js, the first draw) otherwise waits for the kernel's.

ipykernel dispatches shell messages through ``kernel.shell_handlers`` (message type -> handler);
:func:`on_page_contact` wraps the two handlers once per kernel, and the wrappers call every
registered callback before handing the message on, unchanged. Outside a kernel nothing happens.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CONTACT_MESSAGES", "on_page_contact"]

#: Shell messages a connecting front end sends before loading widgets.
CONTACT_MESSAGES = ("kernel_info_request", "comm_info_request")

_lock = threading.Lock()
_callbacks: dict[int, Callable[[], None]] = {}
_next_key = 0


def _notify() -> None:
    with _lock:
        callbacks = list(_callbacks.values())
    for callback in callbacks:
        try:
            callback()
        except Exception:  # a listener's failure must never cost the front end its reply
            pass


def _wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _notify()
        return handler(*args, **kwargs)  # a coroutine for async handlers: ipykernel awaits it

    wrapped._psal_page_watch = True  # type: ignore[attr-defined]
    return wrapped


def _install(kernel: Any) -> bool:
    handlers = getattr(kernel, "shell_handlers", None)
    if not isinstance(handlers, dict):
        return False
    for name in CONTACT_MESSAGES:
        handler = handlers.get(name)
        if handler is not None and not getattr(handler, "_psal_page_watch", False):
            handlers[name] = _wrap(handler)
    return True


def _current_kernel() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def on_page_contact(callback: Callable[[], None], *, kernel: Any = None) -> Callable[[], None]:
    """Call ``callback()`` (kernel main thread) whenever a front end connects to the kernel.

    Parameters
    ----------
    callback : callable
        Called with no argument; its exceptions are swallowed.
    kernel : ipykernel Kernel, optional
        Default: the kernel running this code, if any.

    Returns
    -------
    callable
        Removes the callback.
    """
    global _next_key
    kernel = kernel if kernel is not None else _current_kernel()
    if kernel is None or not _install(kernel):
        return lambda: None
    with _lock:
        key = _next_key
        _next_key += 1
        _callbacks[key] = callback

    def remove() -> None:
        with _lock:
            _callbacks.pop(key, None)

    return remove
