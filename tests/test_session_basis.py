"""The instant-map basis inside the Session: maps from the basis equal the direct computation,
filters outside it are added on the fly, a new analysis starts a new plan, and a set that cannot
move the target gets an all-zero map with a reason."""
from __future__ import annotations

import numpy as np
import pytest

from psal_widgets.session.basis import plan_candidates

pytestmark = pytest.mark.slow


def test_plan_lists_global_top_then_each_layer_best_without_repeats() -> None:
    profile = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 0.5])
    layer_of = np.array([0, 0, 1, 1, 2, 2])
    assert plan_candidates(profile, layer_of, k=2, per_layer=1) == [2, 4, 0]
    assert plan_candidates(profile, layer_of, k=0, per_layer=2) == [2, 4, 0, 3, 1, 5]
    assert plan_candidates(profile, layer_of, k=3, per_layer=0) == [2, 4, 0]


@pytest.fixture(scope="module")
def session(default_explainer):
    from psal_widgets.session import Session

    s = Session(default_explainer, image="raw_images/chelsea.png", basis_k=4, basis_per_layer=0)
    yield s
    s.close()


def _direct(s, ids):
    return s._st.analysis.input_gradient(np.asarray(ids, dtype=np.int64), boost=s.boost)


def test_basis_maps_equal_the_direct_ones(session) -> None:
    s = session
    steps = 0
    while s.basis_step(2):
        steps += 1
    status = s.basis_status()
    assert status["built"] == status["planned"] == 4 and steps == 1
    top = s.filters[:4]
    # (Every set, boost and sign is compared on the tiny model in test_exact_maps.py.)
    for ids, boost in ((top[:1], 100.0), (top, 3.0)):
        s.set_boost(boost)
        fast = s._compute_gradient(s._st.analysis, list(ids), boost)
        direct = _direct(s, ids)
        assert np.linalg.norm(fast - direct) <= 1e-4 * np.linalg.norm(direct)
    s.set_boost(100.0)
    # Two filters outside the basis: added on the fly, then answered from it.
    outside = [int(i) for i in np.argsort(s.profile())[:2]]  # negative saliencies
    s.set_filters(outside)
    s.input_map()
    assert set(outside) <= set(s._st.analysis.basis_candidates())
    fast = s._compute_gradient(s._st.analysis, outside, 100.0)
    direct = _direct(s, outside)
    assert np.linalg.norm(fast - direct) <= 1e-4 * np.linalg.norm(direct)
    s.reset_filters()


def test_a_new_label_starts_a_new_plan(session) -> None:
    s = session
    before = s.basis_status()["built"]
    assert before >= 4
    s.set_label("tiger cat")
    assert s.basis_status()["built"] == 0
    assert s.basis_step(4) is False and s.basis_status()["built"] == 4
    s.set_label(None)


def test_dead_filters_give_a_zero_map_and_say_why(session) -> None:
    s = session
    dead = np.flatnonzero(s.explainer.stats.std.numpy() <= 1e-14)[:2].tolist()
    assert s.input_map(dead).max() == 0.0
    assert "dead filters" in s.map_note(dead)
    assert s.map_note(s.filters) is None
