"""The worker's idle-time work (the instant-map basis): it runs only between jobs, a job never
waits for more than one step, a new background task cancels the old one, errors end it."""
from __future__ import annotations

import threading
import time

from psal_widgets.widgets.worker import Worker


def test_background_steps_run_until_done_and_yield_to_jobs() -> None:
    w = Worker()
    order: list[str] = []
    steps = iter(range(5))
    gate = threading.Event()

    def step() -> bool:
        i = next(steps)
        order.append(f"bg{i}")
        if i == 1:
            gate.set()
            time.sleep(0.05)  # a job submitted now must run before the next step
        return i < 4

    w.background(step)
    assert gate.wait(10)
    w.run(lambda: order.append("job"))
    w.wait_background(10)
    assert order.index("job") == order.index("bg1") + 1
    assert [o for o in order if o != "job"] == [f"bg{i}" for i in range(5)]
    assert not w.background_pending
    w.close()


def test_a_new_background_task_replaces_the_old_one() -> None:
    w = Worker()
    seen: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def old() -> bool:
        seen.append("old")
        started.set()
        release.wait(10)
        return True  # would run forever if not replaced

    w.background(old)
    assert started.wait(10)
    w.background(lambda: seen.append("new") is None and len(seen) < 4)
    release.set()
    w.wait_background(10)
    assert seen[0] == "old" and set(seen[1:]) == {"new"}
    w.close()


def test_wait_idle_ignores_background_and_errors_end_it() -> None:
    errors: list[str] = []
    w = Worker(on_error=lambda exc, what: errors.append(f"{what}: {exc}"))
    go = threading.Event()

    def forever() -> bool:
        go.wait(0.01)
        return True

    w.background(forever, what="basis")
    w.run(lambda: None)
    w.wait_idle(10)  # returns although the background task never ends
    assert w.background_pending

    def broken() -> bool:
        raise RuntimeError("boom")

    w.background(broken, what="basis")
    w.wait_background(10)
    assert errors == ["basis: boom"]
    w.background(None)
    w.close()


def test_background_starts_only_after_a_quiet_foreground() -> None:
    w = Worker(idle_grace=0.5)
    stamps: dict[str, float] = {}
    w.run(lambda: stamps.setdefault("job_end", time.monotonic()))
    w.wait_idle(10)
    w.background(lambda: stamps.setdefault("step", time.monotonic()) is None)
    w.wait_background(10)
    assert stamps["step"] - stamps["job_end"] >= 0.45
    w.close()


def test_a_burst_of_jobs_runs_before_any_background_step() -> None:
    # The grace is far longer than the pause between the two jobs (a person clicking twice).
    # Without it the step would start at once, 0.1 s before job2.
    w = Worker(idle_grace=3.0)
    order: list[str] = []
    w.run(lambda: order.append("job1"))
    w.wait_idle(10)
    w.background(lambda: order.append("step") is None and len(order) < 5)
    time.sleep(0.1)
    w.run(lambda: order.append("job2"))
    w.wait_background(30)
    assert order == ["job1", "job2", "step", "step", "step"]
    w.close()


def test_hold_pauses_background_steps_and_release_resumes_them() -> None:
    w = Worker(idle_grace=0.0)
    steps: list[float] = []
    w.hold_background(30.0)  # a page is loading the chart
    w.background(lambda: steps.append(time.monotonic()) is None and len(steps) < 3)
    done = threading.Event()
    w.run(done.set)  # foreground jobs are not held
    assert done.wait(10)
    time.sleep(0.5)
    assert steps == []
    released = time.monotonic()
    w.release_background()  # the chart was drawn
    w.wait_background(10)
    assert len(steps) == 3 and steps[0] >= released
    # A hold that runs out ends by itself.
    w.hold_background(0.3)
    start = time.monotonic()
    w.background(lambda: steps.append(time.monotonic()) is None and False)
    w.wait_background(10)
    assert steps[-1] - start >= 0.25
    w.close()
