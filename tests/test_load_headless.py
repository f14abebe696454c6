"""Load, headless: the process driving an Explorer (what a dashboard kernel is) does not grow
with use. 200 scripted interactions through the widgets' own entry points (filter clicks, label
changes, masks and undo, threshold, k, CAM method, top-k reset), sent as fast as the widgets take
them (map requests coalesce as they do in the browser; the queue drains every fifty).
"""
from __future__ import annotations

import gc

import pytest

from .conftest import ROOT

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow

#: Allowed growth of the resident set after the warm-up round (issue 10).
MAX_GROWTH = 200 * 1024 * 1024


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.fixture(scope="module")
def explorer(default_explainer, tmp_path_factory):
    from psal_widgets.session import Session
    from psal_widgets.widgets import Explorer

    session = Session(default_explainer, image=ROOT / "raw_images" / "chelsea.png", basis_k=4, basis_per_layer=0)
    app = Explorer(session=session, export_dir=tmp_path_factory.mktemp("exports"))
    app.wait_idle(180)
    yield app
    app.close()
    session.close()


def one_round(app, r: int) -> int:
    """Ten interactions as fast as they can be sent; returns how many were made.

    Seven only change F or the map's settings (their map requests coalesce, as in the browser);
    the other three take turns between a label change, a mask and its undo, and a CAM method.
    """
    s = app.session
    a, b = (7919 * r) % s.n_filters, (104729 * r + 7) % s.n_filters  # two different filters per round
    labels = ["tabby", "tiger cat", "Egyptian cat", None]
    methods = list(app.maps_panel.method.options)
    label = labels[(r // 3) % 4]
    heavy = [
        [lambda: app.prediction_panel.request_label(label, default=label is None),
         lambda: app.profile_panel.on_point_click([b]),
         lambda: app.profile_panel.on_point_click([b])],
        [lambda: app.brush_panel.on_stroke(kind="box", points=[(30 + r % 50, 40), (120, 150 - r % 40)],
                                           fill="mean" if r % 2 else "black"),
         lambda: app.brush_panel.undo_mask(),
         lambda: setattr(app.maps_panel.percentile, "value", 85.0)],
        [lambda: setattr(app.maps_panel.method, "value", methods[(r // 3) % len(methods)]),
         lambda: app.profile_panel.on_point_click([a, b]),
         lambda: app.profile_panel.on_point_click([a, b])],
    ][r % 3]
    steps = [
        lambda: app.profile_panel.on_point_click([a]),
        lambda: app.profile_panel.on_point_click([b]),
        lambda: setattr(app.maps_panel.percentile, "value", 80.0 if r % 2 else 90.0),
        *heavy,
        lambda: app.profile_panel.on_point_click([a]),
        lambda: setattr(app.profile_panel.k, "value", 8 if r % 2 else 10),
        lambda: setattr(app.maps_panel.percentile, "value", 90.0),
        lambda: app.profile_panel.reset_to_top_k(),
    ]
    for step in steps:
        step()
    if r % 5 == 4:  # a fast user: the queue drains every fifty interactions
        app.wait_idle(300)
    return len(steps)


def test_memory_after_200_interactions_grows_by_less_than_200_mb(explorer) -> None:
    n_errors = len(explorer.status.errors)
    for r in range(5):  # warm-up: first backward passes, each kind of step, caches filled
        one_round(explorer, r)
    start = rss()
    done = sum(one_round(explorer, r) for r in range(5, 25))
    explorer.wait_idle(300)
    grown = rss() - start
    assert done == 200
    assert explorer.status.errors[n_errors:] == []  # every interaction was a valid one
    assert not explorer.session.masks  # each mask was undone: the state is as small as at the start
    print(f"RSS {start / 2**20:.0f} MiB after the warm-up, {grown / 2**20:+.0f} MiB after {done} interactions")
    assert grown < MAX_GROWTH, f"RSS grew by {grown / 2**20:.0f} MiB over {done} interactions"
