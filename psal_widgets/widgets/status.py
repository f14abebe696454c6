"""Status line, busy indicator, ready flag and the error log; the guard for every callback.

No callback exception is lost: :meth:`StatusPanel.guard` wraps widget callbacks, and the
worker reports its exceptions to :meth:`StatusPanel.error`. Both show a one-line message in
the status line (CSS class ``psal-status``, text starting with ``error``) and append the full
traceback to an ``Output`` log.
"""

from __future__ import annotations

import functools
import html
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import ipywidgets as W

__all__ = ["StatusPanel"]

F = TypeVar("F", bound=Callable[..., Any])

_BUSY_HTML = (
    '<span style="display:inline-block;padding:2px 8px;border-radius:9px;background:#fff3cd;'
    'color:#7a5b00;font-size:12px">computing&hellip;</span>'
)


class StatusPanel:
    """The app's status widgets.

    Attributes
    ----------
    line : ipywidgets.HTML
        ``psal-status``: the latest message; errors read ``error: ...``.
    busy : ipywidgets.HTML
        ``psal-busy``: visible while the worker computes.
    ready : ipywidgets.HTML
        ``psal-ready``: text ``loading`` until the first map is shown, then ``ready``.
    log : ipywidgets.Output
        Full tracebacks of every error (collapsed under "error log").
    errors : list[str]
        One-line messages of all errors so far (tests read it).
    """

    def __init__(self) -> None:
        self.line = W.HTML("")
        self.line.add_class("psal-status")
        self.busy = W.HTML(_BUSY_HTML, layout=W.Layout(visibility="hidden"))
        self.busy.add_class("psal-busy")
        self.ready = W.HTML("loading", layout=W.Layout(margin="0 0 0 8px"))
        self.ready.add_class("psal-ready")
        self.log = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))
        # Hidden until the first error: an empty "error log" bar is only noise.
        self._log_box = W.Accordion(
            children=[self.log],
            titles=("error log",),
            selected_index=None,
            layout=W.Layout(display="none"),
        )
        self.errors: list[str] = []
        self._error_shown = False
        self._lock = threading.Lock()
        self.widget = W.VBox(
            [
                W.HBox(
                    [self.line, self.busy, self.ready],
                    layout=W.Layout(align_items="center", flex_flow="row wrap"),
                ),
                self._log_box,
            ],
            layout=W.Layout(flex="1 1 300px", min_width="0"),
        )

    # -- messages -------------------------------------------------------------------------
    def info(self, message: str) -> None:
        """Show a plain message."""
        self.line.value = f'<span style="color:#333">{html.escape(message)}</span>'
        self._error_shown = False

    def settle(self, message: str) -> None:
        """Show a plain message when a view finishes, unless an error is on show (keep that:
        a map that finishes right after a failed action must not hide the error)."""
        if not self._error_shown:
            self.info(message)

    def success(self, message: str) -> None:
        """An action succeeded: show ``message``, replacing an old error (which stays in the log)."""
        self.info(message)

    def error(self, exc: BaseException | str, what: str = "") -> None:
        """Show ``error: ...`` in the status line and log the traceback."""
        if isinstance(exc, BaseException):
            text = str(exc) or type(exc).__name__
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            text, detail = str(exc), str(exc)
        where = f" ({what})" if what else ""
        one_line = f"error{where}: {text}"
        with self._lock:
            self.errors.append(one_line)
            message = f"<b>error</b>{html.escape(where)}: {html.escape(text)}"
            self.line.value = f'<span style="color:#b00020">{message}</span>'
            self._error_shown = True
            self._log_box.layout.display = None
            # Output.append_stderr works from any thread, unlike `with log:` capture.
            self.log.append_stderr(f"{one_line}\n{detail}\n")

    def set_busy(self, busy: bool) -> None:
        self.busy.layout.visibility = "visible" if busy else "hidden"

    def set_ready(self) -> None:
        if self.ready.value != "ready":
            self.ready.value = "ready"

    # -- the callback guard ---------------------------------------------------------------
    def guard(self, fn: F, what: str = "") -> F:
        """Wrap a widget callback so that any exception lands in the status line and the log."""
        label = what or getattr(fn, "__name__", "callback")

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                self.error(exc, label)
                return None

        return wrapped  # type: ignore[return-value]
