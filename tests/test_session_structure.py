"""The session package's structure and behaviour on the tiny model (fast): no torch import,
F modes, label resolution shared with Explainer.analyze, random pruning per image, device,
close()."""

from __future__ import annotations

import ast
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psal_widgets.data import Preprocess
from psal_widgets.explainer import Explainer
from psal_widgets.kernels.interventions import select_filters
from psal_widgets.labels import UnknownLabelError
from psal_widgets.models import ModelError, from_module
from psal_widgets.session import Session, SessionError, Stroke

from .conftest import ROOT, make_tiny

SESSION_DIR = ROOT / "psal_widgets" / "session"
NAMES = ["ant", "bee", "cat"]


# -- structure -------------------------------------------------------------------------------------
def _torch_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "torch" or a.name.startswith("torch.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "torch" or node.module.startswith("torch."):
                found.append(node.module)
    return found


def test_the_session_package_imports_no_torch():
    modules = sorted(SESSION_DIR.glob("*.py"))
    assert {p.name for p in modules} >= {"core.py", "settings.py", "state.py", "resolve.py", "cache.py"}
    offenders = {p.name: _torch_imports(p) for p in modules if _torch_imports(p)}
    assert offenders == {}


def test_torch_import_checker_catches_both_forms(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy\nimport torch.nn as nn\nfrom torch.func import vmap\nfrom . import torch_free\n")
    assert _torch_imports(f) == ["torch.nn", "torch.func"]


def test_settings_validate_and_stay_frozen():
    from psal_widgets.session import Settings

    s = Settings(13, k=3, boost=50, percentile=80)
    assert (s.k, s.boost, s.percentile) == (3, 50.0, 80.0) and isinstance(s.boost, float)
    assert s.replace(k=5).k == 5 and s.k == 3
    for bad in ({"k": 0}, {"k": 14}, {"k": True}, {"k": 2.5}):
        with pytest.raises(ValueError, match="k must"):
            s.replace(**bad)
    with pytest.raises(ValueError, match="boost"):
        s.replace(boost=float("inf"))
    with pytest.raises(ValueError, match="percentile"):
        s.replace(percentile=99)
    with pytest.raises(AttributeError):
        s.k = 4  # type: ignore[misc]


def test_one_lru_cache():
    from psal_widgets.session.cache import LRUCache

    c: LRUCache[int] = LRUCache(2)
    calls = []
    assert c.get_or_compute("a", lambda: calls.append("a") or 1) == 1
    assert c.get_or_compute("a", lambda: calls.append("a2") or 9) == 1  # hit, not recomputed
    c.put("b", 2)
    c.get("a")  # a is now the most recent
    c.put("c", 3)  # evicts b
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and calls == ["a"]


# -- the tiny model behind a session ----------------------------------------------------------------
def _tiny_explainer() -> Explainer:
    model = from_module(make_tiny(), labels=NAMES, preprocess=Preprocess(resize=16, crop=16), device="cpu")
    return Explainer(model, stats=None, mode="raw")


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8))


@pytest.fixture
def tiny_session() -> Session:
    return Session(model=_tiny_explainer(), image=_picture(0), k=3)


def _top(s: Session) -> list[int]:
    return np.argsort(-s.profile(), kind="stable")[: s.k].tolist()


def test_top_k_mode_follows_label_and_masks(tiny_session):
    s = tiny_session
    assert s.filter_mode == "top-k" and s.filters == _top(s)
    other = next(i for i in range(3) if i != s.label)
    s.set_label(other)
    assert s.label == other and s.filter_mode == "top-k" and s.filters == _top(s)
    f_label = s.filters
    s.brush(Stroke(kind="box", points=[(0, 0), (10, 12)], fill="black"))
    assert s.filters == _top(s) and s.filter_mode == "top-k"
    assert not np.array_equal(s.image, s.original)
    s.undo_mask()
    assert s.filters == f_label


def test_custom_mode_is_kept_across_label_and_masks_but_not_a_new_image(tiny_session):
    s = tiny_session
    v = s.version
    chosen = [12, 0] if 12 not in s.filters else [11, 0]
    s.set_filters(chosen)
    assert s.filter_mode == "custom" and s.filters == chosen and s.version == v + 1
    s.set_label(next(i for i in range(3) if i != s.label))
    assert s.filters == chosen and s.filter_mode == "custom"
    report = s.brush(Stroke(kind="box", points=[(2, 2), (9, 9)], fill="black"))
    assert [r["id"] for r in report["filters"]] == chosen
    assert s.filters == chosen
    s.reset_mask()
    assert s.filters == chosen and s.filter_mode == "custom"
    # Back to top-k by choice...
    assert s.set_filter_mode("top-k") == _top(s) and s.filter_mode == "top-k"
    v = s.version
    assert s.set_filter_mode("custom") == _top(s) and s.version == v + 1  # mode changed, F kept
    s.toggle_filter(5 if 5 not in s.filters else 6)
    s.set_k(2)
    assert s.filter_mode == "top-k" and s.filters == _top(s) and len(s.filters) == 2
    s.add_filters([1])
    assert s.filter_mode == "custom"
    # ...and by a new image (the hand-picked filters belonged to another image).
    s.set_image(_picture(1))
    assert s.filter_mode == "top-k" and s.filters == _top(s)
    with pytest.raises(ValueError, match="filter mode"):
        s.set_filter_mode("manual")  # type: ignore[arg-type]


def test_label_resolution_is_shared_with_the_explainer(tmp_path):
    ex = _tiny_explainer()
    img = tmp_path / "pic.png"
    _picture(3).save(img)
    (tmp_path / "labels.csv").write_text("file,label\npic.png,cat\n")
    a = ex.analyze(img)
    s = Session(model=ex, image=img, k=2)
    assert (a.label, a.label_source) == (2, "known") == (s.label, s.label_source)
    np.testing.assert_array_equal(a.profile, s.profile())
    # A labels.csv of another label set: both study the prediction instead of failing.
    (tmp_path / "labels.csv").write_text("file,label\npic.png,zebra\n")
    a2 = ex.analyze(img)
    s.set_image(img)
    pred = int(np.argmax(ex.predict(a2.image)))
    assert (a2.label, a2.label_source) == (pred, "prediction") == (s.label, s.label_source)
    with pytest.raises(UnknownLabelError):
        ex.analyze(img, label="bea")
    with pytest.raises(UnknownLabelError):
        s.set_label("bea")
    assert ex.analyze(img, label="bee").label_source == "given"


def test_random_pruning_depends_on_the_image(tiny_session):
    s = tiny_session
    r0 = s.prune("random", n=4, seed=7)
    image_seed = zlib.crc32(np.ascontiguousarray(s.image).tobytes())
    expected = select_filters("random", s.profile(), 4, seed=[7, image_seed])  # type: ignore[arg-type]
    assert r0["filters"] == expected.tolist()
    assert s.prune("random", n=4, seed=7)["filters"] == r0["filters"]  # same image, same draw
    draws = set()
    for i in range(1, 6):
        s.set_image(_picture(i))
        draws.add(tuple(s.prune("random", n=4, seed=7)["filters"]))
    assert len(draws) > 1  # other images, other filters (with one seed)
    # The report: probabilities of the class predicted before, both ways.
    r = s.prune("selected")
    probs = s.probabilities()
    pred = int(np.argmax(probs))
    assert r["pred"]["index"] == pred and r["prob_pred"][0] == pytest.approx(probs[pred])
    assert r["label"] == {"index": s.label, "name": NAMES[s.label]}
    assert r["prediction_before"] == s.prediction(5)
    after = {c["index"]: c["prob"] for c in r["prediction"]}  # 3 classes: all of them
    assert r["prob_pred"][1] == pytest.approx(after[pred])
    assert r["prob_label"] == (pytest.approx(probs[s.label]), pytest.approx(after[s.label]))
    with pytest.raises(ValueError, match="seed"):
        s.prune("random", n=2, seed=-1)
    with pytest.raises(ValueError, match="kind"):
        s.prune("biggest")  # type: ignore[arg-type]


def test_a_callers_model_is_never_moved():
    ex = _tiny_explainer()
    with pytest.raises(SessionError, match="cpu") as err:
        Session(model=ex, image=_picture(0), device="meta")
    assert "meta" in str(err.value)
    with pytest.raises(SessionError, match="meta"):
        Session(model=ex.model, image=_picture(0), device="meta")
    assert str(ex.model.device) == "cpu"
    assert all(p.device.type == "cpu" for p in ex.model.module.parameters())
    assert Session(model=ex, image=_picture(0), device="cpu", k=2).model is ex.model
    with pytest.raises(SessionError, match="weights="):
        Session(model=ex, image=_picture(0), weights="w.pth")


def test_weights_reach_the_loader(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ModelError, match="nowhere.pth"):
        Session(model="efficientnet_lite0", weights=missing, stats=None)


def test_close_releases_everything_and_refuses_later_calls(tiny_session):
    s = tiny_session
    s.input_map()
    s.cam()
    s.prune("salient", n=2)
    analysis = s._state.analysis
    assert len(s._cache) >= 2 and s._pruner is not None
    s.close()
    assert s.closed and s._state is None and len(s._cache) == 0 and s._pruner is None
    with pytest.raises(RuntimeError, match="released"):
        analysis.input_gradient([0])  # the kept graph is gone
    s.close()  # idempotent
    for call in (lambda: s.input_map(), lambda: s.filters, lambda: s.image, lambda: s.toggle_filter(1)):
        with pytest.raises(SessionError, match="session closed"):
            call()
    assert "closed" in repr(s)
