"""One background thread that runs the explorer's computations in order.

Every Session call that may compute (forward/backward passes, maps, CAM, pruning, export)
runs here, so the kernel's main thread stays free to receive clicks and mouse events, and the
Session is only ever used from one thread. That matters for speed as well: once two threads
have run torch operations, each keeps its own pool of compute threads, and on a 2-core CPU the
two pools halve each other's speed even while one is idle (measured: a new input map took
1.0 s instead of 0.5 s). So the Session is even *built* here (:meth:`Worker.call`).

Two kinds of job:

- ``run(fn, then=...)``: an action (set the image, brush, toggle a filter). Never dropped,
  executed in submission order.
- ``latest(key, fn, then=..., delay=...)``: a view refresh (the input map, the CAM). Debounced
  (it waits ``delay`` seconds, and a newer request with the same key replaces a pending one),
  and *latest wins*: when a request finishes while a newer one with the same key was made,
  its result is dropped, so a stale map never replaces a newer one.

- ``background(step)``: idle-time work (building the instant-map basis). ``step()`` runs only
  when no other job is queued, one call at a time, until it returns False; a new
  ``background`` call replaces (cancels) the previous one between two steps. Steps start only
  once the foreground has been quiet for ``idle_grace`` seconds: people click in bursts, and a
  click that arrives while a step runs waits for it (at most one step). ``wait_idle`` does not
  wait for background work (``wait_background`` does). ``hold_background(seconds)`` pauses it
  (a browser page loading the explorer needs the CPU more), ``release_background()`` resumes.

``then(result)`` is called on the worker thread right after ``fn`` returns (ipywidgets trait
updates are sent from any thread). Exceptions of ``fn`` or ``then`` go to ``on_error``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Worker"]


@dataclass
class _Job:
    fn: Callable[[], Any]
    then: Callable[[Any], None] | None
    what: str
    key: str | None = None
    generation: int = 0
    due: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    background: int = 0  # the background generation this step belongs to; 0: a normal job


class Worker:
    """A single daemon thread with ordered actions and debounced latest-wins refreshes.

    Parameters
    ----------
    on_error : callable(exc, what), optional
        Receives every exception raised by a job or its ``then``; the worker keeps running.
    on_busy : callable(bool), optional
        Called with True when the worker starts working after being idle, False when its
        queue is empty again.
    name : str
        Thread name.
    """

    def __init__(
        self,
        *,
        on_error: Callable[[BaseException, str], None] | None = None,
        on_busy: Callable[[bool], None] | None = None,
        name: str = "psal-worker",
        idle_grace: float = 1.0,
    ) -> None:
        self.on_error = on_error
        self.idle_grace = float(idle_grace)
        self._last_foreground = 0.0  # time.monotonic() when the last job ended
        self._hold_until = 0.0  # background steps wait until then (hold_background)
        self.on_busy = on_busy
        self._queue: deque[_Job] = deque()
        self._generation: dict[str, int] = {}
        self._cond = threading.Condition()
        self._running = False  # a job is executing now
        self._busy = False
        self._closed = False
        self.dropped = 0  # results discarded because a newer request of the same key existed
        self._bg: tuple[Callable[[], bool], str] | None = None
        self._bg_generation = 0
        self._bg_running = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- submission -----------------------------------------------------------------------
    def run(
        self, fn: Callable[[], Any], *, then: Callable[[Any], None] | None = None, what: str = ""
    ) -> threading.Event:
        """Queue an action; returns an Event set when it has finished (or failed)."""
        job = _Job(fn=fn, then=then, what=what or getattr(fn, "__name__", "job"))
        with self._cond:
            self._check_open()
            self._queue.append(job)
            self._cond.notify_all()
        return job.done

    def call(self, fn: Callable[[], Any], *, timeout: float | None = None) -> Any:
        """Run ``fn`` on the worker thread, wait for it and return its result (or raise its error).

        For work whose result the caller needs (e.g. building the Session), so that every torch
        operation stays on the worker thread.
        """
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["result"] = fn()
            except BaseException as exc:  # handed back to the caller, not to on_error
                box["error"] = exc

        done = self.run(job, what=getattr(fn, "__name__", "call"))
        if not done.wait(timeout):
            raise TimeoutError(f"the worker did not finish {getattr(fn, '__name__', 'the call')} in {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def latest(
        self,
        key: str,
        fn: Callable[[], Any],
        *,
        then: Callable[[Any], None] | None = None,
        delay: float = 0.15,
        what: str = "",
    ) -> threading.Event:
        """Queue a refresh that supersedes any earlier request with the same ``key``.

        The job runs no earlier than ``delay`` seconds from now and after every action queued
        before it; a pending job with the same key is dropped, and a running one will have its
        result discarded (its ``then`` is not called).
        """
        with self._cond:
            self._check_open()
            gen = self._generation.get(key, 0) + 1
            self._generation[key] = gen
            for old in [j for j in self._queue if j.key == key]:
                self._queue.remove(old)
                self.dropped += 1
                old.done.set()
            job = _Job(
                fn=fn,
                then=then,
                what=what or key,
                key=key,
                generation=gen,
                due=time.monotonic() + max(0.0, delay),
            )
            self._queue.append(job)
            self._cond.notify_all()
        return job.done

    def background(self, step: Callable[[], bool] | None, *, what: str = "background work") -> None:
        """Run ``step()`` in idle time until it returns False; replaces earlier background work.

        ``None`` cancels. Errors go to ``on_error`` and end that background work.
        """
        with self._cond:
            self._check_open()
            self._bg_generation += 1
            self._bg = None if step is None else (step, what)
            self._cond.notify_all()

    def hold_background(self, seconds: float) -> None:
        """Start no background step for ``seconds`` (a running step finishes); foreground jobs run."""
        with self._cond:
            self._hold_until = max(self._hold_until, time.monotonic() + float(seconds))

    def release_background(self) -> None:
        """End a :meth:`hold_background` now."""
        with self._cond:
            self._hold_until = 0.0
            self._cond.notify_all()

    @property
    def background_pending(self) -> bool:
        with self._cond:
            return self._bg is not None or self._bg_running

    def wait_background(self, timeout: float | None = 120.0) -> None:
        """Block until the queue is empty AND the background work has finished (tests, benchmarks).

        Raises
        ------
        TimeoutError
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running or self._bg is not None or self._bg_running:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"background work still running after {timeout} s")
                self._cond.wait(left if left is not None else 1.0)

    def is_current(self, key: str, generation: int) -> bool:
        """Whether ``generation`` is still the newest request made for ``key``."""
        with self._cond:
            return self._generation.get(key, 0) == generation

    # -- waiting --------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._running

    def wait_idle(self, timeout: float | None = 60.0) -> None:
        """Block until no job is queued or running.

        Raises
        ------
        TimeoutError
            When still busy after ``timeout`` seconds.
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"the explorer is still computing after {timeout} s "
                        f"({len(self._queue)} job(s) queued); wait longer or check the status line"
                    )
                self._cond.wait(left)

    def close(self, *, wait: bool = True) -> None:
        """Stop accepting jobs; the thread ends once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this worker was closed; create a new Explorer")

    # -- the thread -----------------------------------------------------------------------
    def _next_job(self) -> _Job | None:
        """Pop the next job, waiting for debounce deadlines; None once closed and drained."""
        with self._cond:
            while True:
                if self._queue:
                    head = self._queue[0]
                    wait = head.due - time.monotonic()
                    if wait <= 0:
                        self._queue.popleft()
                        self._running = True
                        return head
                    # A newer request (or an action) may arrive meanwhile: re-check on notify.
                    self._cond.wait(wait)
                    continue
                if self._busy:
                    self._set_busy(False)
                self._cond.notify_all()  # wake wait_idle
                if self._closed:
                    return None
                if self._bg is not None:
                    quiet_in = max(self._last_foreground + self.idle_grace, self._hold_until) - time.monotonic()
                    if quiet_in > 0:  # a job just ended: more clicks may follow
                        self._cond.wait(quiet_in)
                        continue
                    step, what = self._bg
                    self._bg_running = True
                    return _Job(fn=step, then=None, what=what, background=self._bg_generation)
                self._cond.wait()

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        if self.on_busy is not None:
            try:
                self.on_busy(busy)
            except Exception as exc:  # a broken indicator must not stop the worker
                self._report(exc, "busy indicator")

    def _count_dropped(self) -> None:
        with self._cond:  # read by other threads (tests, benchmarks)
            self.dropped += 1

    def _report(self, exc: BaseException, what: str) -> None:
        if self.on_error is not None:
            try:
                self.on_error(exc, what)
            except Exception:  # pragma: no cover - last resort, never kill the thread
                pass

    def _loop(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            if job.background:
                self._run_background(job)
                continue
            try:
                if not self._busy:
                    with self._cond:
                        self._set_busy(True)
                if job.key is not None and not self.is_current(job.key, job.generation):
                    self._count_dropped()
                    continue
                result = job.fn()
                if job.key is not None and not self.is_current(job.key, job.generation):
                    # A newer request was made while this one ran: its result is stale.
                    self._count_dropped()
                    continue
                if job.then is not None:
                    job.then(result)
            except Exception as exc:
                self._report(exc, job.what)
            finally:
                with self._cond:
                    self._running = False
                    self._last_foreground = time.monotonic()
                    job.done.set()
                    self._cond.notify_all()

    def _run_background(self, job: _Job) -> None:
        """One step of background work; its end (False or an error) clears it unless replaced."""
        more = False
        try:
            more = bool(job.fn())
        except Exception as exc:
            self._report(exc, job.what)
        finally:
            with self._cond:
                self._bg_running = False
                if not more and self._bg_generation == job.background:
                    self._bg = None
                self._cond.notify_all()
