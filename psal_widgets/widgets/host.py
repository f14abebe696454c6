"""What a panel may use of the app: the :class:`Host` protocol, the "state changed" signal and the
thread-correct ``watch`` / ``quiet`` pair.

Panels import this module (never ``app.py`` nor each other). A panel receives the host at
construction, queues Session work through it, and redraws itself when the host's
:attr:`Host.changed` signal says which part of the state changed. Actions that belong to a
sibling panel (open a dataset row, write the chart to HTML) come in as plain callables.

Quiet syncing: the worker thread shows the Session's values in controls (k, boost, the label
picker...) without running their ``observe`` actions. Traitlets calls observers synchronously on
the thread that sets the value, so the "quiet" mark is per thread: a user edit that arrives on
the kernel's main thread while the worker syncs the same control still runs its action.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import ipywidgets as W

__all__ = ["ALL_STATE", "Change", "Host", "QuietWatcher", "Signal", "StateEvent"]

#: What a state change touched. ``profile``: the analysis (new image, label or mask: every point
#: of the chart moves); ``filters``: the boosted set F; ``image``: the picture the model sees;
#: ``label``: the label under study; ``settings``: k, boost or the threshold percentile.
Change = Literal["profile", "filters", "image", "label", "settings"]
ALL_STATE: frozenset[Change] = frozenset(("profile", "filters", "image", "label", "settings"))


@dataclass(frozen=True)
class StateEvent:
    """One state change, emitted on the worker thread after the Session has changed.

    Attributes
    ----------
    changes : frozenset of Change
    report : dict, optional
        A before / after comparison of a mask change (paper Fig. 7c), for the brush panel.
    """

    changes: frozenset[Change]
    report: dict[str, Any] | None = None

    def __contains__(self, change: object) -> bool:
        return change in self.changes

    def touches(self, *changes: Change) -> bool:
        """Whether any of ``changes`` is part of this event."""
        return any(c in self.changes for c in changes)


@dataclass
class Signal:
    """A tiny observer: ``connect(fn)`` then ``emit(event)`` calls every ``fn(event)`` in order.

    A failing listener does not stop the others: its exception goes to ``on_error`` (the status
    line) and the next listener runs.
    """

    on_error: Callable[[BaseException, str], None] | None = None
    _listeners: list[tuple[Callable[[StateEvent], None], str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self, fn: Callable[[StateEvent], None], what: str = "") -> Callable[[], None]:
        """Subscribe ``fn``; returns a function that unsubscribes it."""
        entry = (fn, what or getattr(fn, "__qualname__", "listener"))
        with self._lock:
            self._listeners.append(entry)

        def disconnect() -> None:
            with self._lock:
                if entry in self._listeners:
                    self._listeners.remove(entry)

        return disconnect

    def emit(self, event: StateEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn, what in listeners:
            try:
                fn(event)
            except Exception as exc:
                if self.on_error is None:
                    raise
                self.on_error(exc, what)

    def clear(self) -> None:
        """Drop every listener (the app is closing)."""
        with self._lock:
            self._listeners.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._listeners)


class QuietWatcher:
    """``watch(widget, fn)`` runs ``fn`` on value changes, except those made inside ``quiet(widget)``
    *on the same thread*.

    Parameters
    ----------
    guard : callable(fn, what) -> fn
        Wraps each action so that its exceptions reach the status line.
    """

    def __init__(self, guard: Callable[[Callable[..., Any], str], Callable[..., Any]]) -> None:
        self._guard = guard
        self._local = threading.local()
        self._handlers: list[tuple[W.Widget, Callable[[dict[str, Any]], None]]] = []

    def _quiet_ids(self) -> set[int]:
        ids = getattr(self._local, "ids", None)
        if ids is None:
            ids = self._local.ids = set()
        return ids

    @contextlib.contextmanager
    def quiet(self, widget: W.Widget) -> Iterator[None]:
        """Set ``widget``'s value from code (this thread) without running its watched action."""
        ids = self._quiet_ids()
        nested = id(widget) in ids
        ids.add(id(widget))
        try:
            yield
        finally:
            if not nested:
                ids.discard(id(widget))

    def is_quiet(self, widget: W.Widget) -> bool:
        """Whether the current thread is inside ``quiet(widget)``."""
        return id(widget) in self._quiet_ids()

    def watch(self, widget: W.Widget, fn: Callable[[dict[str, Any]], None], what: str) -> None:
        """``widget.observe(fn, names="value")``, guarded, skipped inside this thread's ``quiet``."""
        guarded = self._guard(fn, what)

        def handler(change: dict[str, Any]) -> None:
            if not self.is_quiet(widget):
                guarded(change)

        widget.observe(handler, names="value")
        self._handlers.append((widget, handler))

    def unwatch_all(self) -> None:
        """Remove every observer installed by :meth:`watch`."""
        for widget, handler in self._handlers:
            with contextlib.suppress(ValueError):
                widget.unobserve(handler, names="value")
        self._handlers.clear()


@runtime_checkable
class Host(Protocol):
    """What panels use of the app (``Explorer`` implements it; tests may pass a stand-in).

    Attributes
    ----------
    session : Session
        The middle tier (``docs/session-contract.md``); call it only from worker jobs.
    worker : Worker
        The single background thread (``run`` for actions, ``latest`` for views).
    status : StatusPanel
        Status line, busy flag and the callback guard.
    changed : Signal
        Emitted on the worker thread after each state change (:class:`StateEvent`).
    """

    session: Any
    worker: Any
    status: Any
    changed: Signal

    def watch(self, widget: W.Widget, fn: Callable[[dict[str, Any]], None], what: str) -> None:
        """Observe a control's value, guarded, skipped while the worker syncs it quietly."""

    def quiet(self, widget: W.Widget) -> contextlib.AbstractContextManager[None]:
        """Set a control's value from code without running its action."""

    def change_filters(self, fn: Callable[[], Any], *, what: str) -> None:
        """Queue a change of F (or k / boost) on the worker, then emit ``filters`` + ``settings``."""

    def change_state(
        self,
        fn: Callable[[], Any],
        *,
        what: str,
        changes: frozenset[Change] = ALL_STATE,
        report: bool = False,
    ) -> None:
        """Queue a change of the analysis on the worker, then emit ``changes`` (with ``fn``'s
        result as the event's report when ``report``)."""
