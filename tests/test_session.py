"""The explorer's middle tier (Session) with the real default model, and the neighbour kernel."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import cv2
import numpy as np
import pytest
import torch

from psal_widgets.data import ImageError
from psal_widgets.kernels import FilterIndex
from psal_widgets.kernels.neighbours import cosine_neighbours, layer_columns, standardize_bank
from psal_widgets.labels import UnknownLabelError
from psal_widgets.session import CamView, Session, SessionError, Stroke
from psal_widgets.viz.heatmap import overlay

from .conftest import ROOT, VAL800, make_tiny, needs_data

GRACE = ROOT / "raw_images" / "grace_hopper.jpg"


# -- neighbour kernel (fast, NumPy references) --------------------------------------------------
def _loop_cosine(q: np.ndarray, bank: np.ndarray) -> np.ndarray:
    out = []
    for row in bank:
        out.append(float(np.dot(q, row) / (np.linalg.norm(q) * np.linalg.norm(row))))
    return np.array(out)


def test_neighbours_match_a_plain_loop_and_layer_slicing():
    index = FilterIndex(make_tiny())  # layers: conv1 0..3, dw 4..7, pw 8..12
    rng = np.random.default_rng(0)
    raw = rng.gamma(2.0, 1.0, size=(30, 13)).astype(np.float16)
    mean, std = rng.uniform(1, 2, 13), rng.uniform(0.5, 1.5, 13)
    std[5] = 0.0  # a dead filter is divided by 1
    bank = standardize_bank(raw, mean, std)
    safe = np.where(std == 0, 1.0, std)
    np.testing.assert_allclose(bank, (raw.astype(np.float64) - mean) / safe, rtol=1e-6, atol=1e-6)
    query = rng.normal(size=13)

    idx, sims = cosine_neighbours(query, bank, k=5)
    ref = _loop_cosine(query, bank.astype(np.float64))
    np.testing.assert_array_equal(idx, np.argsort(-ref)[:5])
    np.testing.assert_allclose(sims, ref[idx], rtol=1e-5)

    cols = layer_columns(index, (1, 2))
    assert cols == slice(4, 13)
    idx2, sims2 = cosine_neighbours(query, bank, k=30, columns=cols)
    ref2 = _loop_cosine(query[4:13], bank[:, 4:13].astype(np.float64))
    np.testing.assert_array_equal(idx2, np.argsort(-ref2))
    np.testing.assert_allclose(sims2, ref2[idx2], rtol=1e-5)
    assert layer_columns(index, (0, 0)) == slice(0, 4)
    assert layer_columns(index, (-1, -1)) == slice(8, 13)

    best = int(idx[0])
    idx3, _ = cosine_neighbours(query, bank, k=5, exclude=[best])
    assert best not in idx3 and len(idx3) == 5
    with pytest.raises(ValueError, match="first <= last"):
        layer_columns(index, (2, 1))
    with pytest.raises(ValueError, match="another model"):
        standardize_bank(raw[:, :5], mean, std)


# -- Session with the real default model ----------------------------------------------------------
@pytest.fixture
def session(default_explainer) -> Session:
    return Session(model=default_explainer, image=GRACE)


@pytest.mark.slow
def test_initial_state_is_the_known_label_and_top_k(session):
    s = session
    assert s.image_name == "grace_hopper.jpg"
    assert s.label_name == "military uniform" and s.label_source == "known"
    assert s.image.shape == (224, 224, 3) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.image, s.original)
    top = s.prediction(5)
    assert top[0]["name"] == "academic gown"  # GUIDE §3: a real mistake
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    profile = s.profile()
    assert profile.shape == (s.n_filters,)
    assert s.filters == np.argsort(-profile, kind="stable")[:10].tolist()
    info = s.filter_info(s.filters[0])
    assert info["rank"] == 0 and info["saliency"] == pytest.approx(profile.max())
    layout = s.layout()
    assert layout.rank[layout.filter_id == s.filters[1]] == 1
    assert s.masks == [] and s.cam_layers()[-1] == "conv_head"
    with pytest.raises(SessionError, match="data="):
        s.dataset_rows()
    with pytest.raises(SessionError, match="data="):
        s.neighbours()


@pytest.mark.slow
def test_filter_edits_bump_the_version(session):
    s = session
    f0 = s.filters
    v = s.version
    extra = next(i for i in range(100) if i not in f0)
    assert s.toggle_filter(extra) == [*f0, extra] and s.version == v + 1
    assert s.toggle_filter(f0[0]) == [*f0[1:], extra] and s.version == v + 2
    assert s.add_filters([extra, 5, 5]) == [*f0[1:], extra] + ([5] if 5 not in f0 else [])
    v = s.version
    assert s.set_filters([3, 1, 3]) == [1, 3][::-1] and s.version == v + 1
    assert s.set_filters([3, 1]) == [3, 1] and s.version == v + 1  # no change, no bump
    s.set_boost(50)
    s.set_percentile(80)
    assert s.version == v + 3 and (s.boost, s.percentile) == (50.0, 80.0)
    s.set_k(3)
    assert s.filters == f0[:3] and s.k == 3
    with pytest.raises(ValueError, match="out of range"):
        s.toggle_filter(s.n_filters)
    with pytest.raises(ValueError, match="percentile"):
        s.set_percentile(99.5)
    with pytest.raises(ValueError, match="boost"):
        s.set_boost(0)


@pytest.mark.slow
def test_map_equals_the_analysis_map_and_follows_F(session, default_explainer):
    s = session
    heat = s.input_map()
    assert heat.shape == (224, 224) and heat.dtype == np.float32
    reference = default_explainer.analyze(GRACE, label="military uniform")
    try:
        expected = reference.input_map(filters=s.filters)
    finally:
        reference.release()
    np.testing.assert_allclose(heat, expected, atol=1e-5)
    np.testing.assert_array_equal(s.input_map(), heat)  # cached, same answer
    s.set_filters(s.filters[:3])
    assert not np.allclose(s.input_map(), heat)
    s.set_percentile(95)
    assert (s.input_map() == 0).mean() > (heat == 0).mean()  # a higher threshold zeroes more
    assert np.all(s.input_map([]) == 0)
    over = s.input_overlay()
    assert over.shape == (224, 224, 3) and over.dtype == np.uint8


@pytest.mark.slow
def test_brush_then_undo_restores_exactly(session):
    s = session
    probs0, profile0, f0, v0 = s.probabilities(), s.profile(), s.filters, s.version
    report = s.brush(Stroke(kind="box", points=[(50, 60), (125, 105)], fill="mean"))
    assert report["masked_pixels"] == 75 * 45
    assert set(report) >= {"before", "after", "filters"}
    assert report["before"]["prob_label"] == pytest.approx(probs0[s.label])
    assert report["pred"]["name"] == "academic gown"
    assert report["before"]["prob_pred"] == pytest.approx(probs0.max())
    assert report["after"]["prob_label"] == pytest.approx(s.probabilities()[s.label])
    assert report["after"]["prob_label"] != report["before"]["prob_label"]
    # The report is about F as it was; in top-k mode F then follows the masked image's profile.
    assert [r["id"] for r in report["filters"]] == f0
    assert s.filter_mode == "top-k"
    assert s.filters == np.argsort(-s.profile(), kind="stable")[:10].tolist() != f0
    r0 = report["filters"][0]
    assert r0["before"] == pytest.approx(profile0[f0[0]])
    assert r0["change_pct"] == pytest.approx((r0["after"] - r0["before"]) / abs(r0["before"]) * 100)
    # Only the box changed, to the model's mean colour (normalized value 0).
    changed = np.any(s.image != s.original, axis=2)
    assert not changed[:60].any() and not changed[105:].any() and not changed[:, 125:].any()
    assert (s.image[60:105, 50:125] == 127).all()
    assert len(s.masks) == 1 and s.version > v0

    s.brush(Stroke(kind="lasso", points=[(10, 10), (60, 15), (30, 50)], fill="blur"))
    assert len(s.masks) == 2
    s.undo_mask()
    s.undo_mask()
    assert s.undo_mask() is None
    np.testing.assert_array_equal(s.image, s.original)
    np.testing.assert_array_equal(s.probabilities(), probs0)
    np.testing.assert_array_equal(s.profile(), profile0)
    assert s.masks == [] and s.filters == f0


@pytest.mark.slow
def test_reset_and_top_percent_masks(session):
    s = session
    probs0 = s.probabilities()
    report = s.mask_top_percent(5)
    assert report["masked_pixels"] == round(0.05 * 224 * 224)
    assert s.masks[-1].kind == "pixels" and s.masks[-1].note == "top 5%"
    s.brush(Stroke(kind="box", points=[(0, 0), (30, 30)], fill="black"))
    assert (s.image[:30, :30] == 0).all()
    s.reset_mask()
    assert s.masks == []
    np.testing.assert_array_equal(s.image, s.original)
    np.testing.assert_array_equal(s.probabilities(), probs0)
    with pytest.raises(ValueError, match="no pixel"):
        s.brush(Stroke(kind="box", points=[(5, 5), (5, 5)]))
    with pytest.raises(ValueError, match="at least 3 points"):
        s.brush(Stroke(kind="lasso", points=[(5, 5), (9, 9)]))


@pytest.mark.slow
def test_prune_kinds_leave_the_model_untouched(session):
    s = session
    before = {k: v.clone() for k, v in s.model.module.state_dict().items()}
    salient = s.prune("salient")
    random = s.prune("random", seed=1)
    least = s.prune("least", n=5)
    probs = s.probabilities()
    pred = int(np.argmax(probs))
    for r in (salient, random, least):
        assert set(r) >= {"kind", "filters", "prediction", "prob_label", "top1", "prob_pred", "pred", "label"}
        assert r["prob_label"][0] == pytest.approx(probs[s.label])
        assert r["prob_pred"][0] == pytest.approx(probs[pred])
        assert r["pred"] == {"index": pred, "name": "academic gown"}
        assert r["label"] == {"index": s.label, "name": "military uniform"}
        assert r["prediction_before"] == s.prediction(5)
        assert len(r["prediction"]) == 5
        # prob_pred follows the class predicted BEFORE: after pruning, read it from the top 5
        # when it is still there.
        after = {c["index"]: c["prob"] for c in r["prediction"]}
        if pred in after:
            assert r["prob_pred"][1] == pytest.approx(after[pred])
    assert salient["filters"] == s.filters and len(random["filters"]) == len(s.filters)
    assert least["filters"] == np.argsort(s.profile(), kind="stable")[:5].tolist()
    assert (
        random["filters"]
        == s.prune("random", seed=1)["filters"]
        != s.prune("random", seed=2)["filters"]
    )
    assert salient["top1"][0]["name"] == "academic gown"
    assert salient["prob_label"][1] != salient["prob_label"][0]
    for k, v in s.model.module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_label_changes_and_typos(session):
    s = session
    v = s.version
    with pytest.raises(UnknownLabelError) as err:
        s.set_label("militery uniform")
    assert any(name == "military uniform" for _, name in err.value.suggestions)
    assert s.version == v and s.label_name == "military uniform"
    s.set_label("academic gown")
    assert s.label_name == "academic gown" and s.label_source == "given" and s.version > v
    assert s.filters == np.argsort(-s.profile(), kind="stable")[:10].tolist()
    s.set_label(None)
    assert s.label_name == "military uniform" and s.label_source == "known"


@pytest.mark.slow
def test_bad_images_keep_the_state(session, tmp_path):
    s = session
    v, name, image = s.version, s.image_name, s.image.copy()
    with pytest.raises(ImageError):
        s.set_image(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    fake = tmp_path / "notes.jpg"
    fake.write_text("shopping list: milk, eggs")
    with pytest.raises(ImageError, match="text"):
        s.set_image(fake)
    assert (s.version, s.image_name) == (v, name)
    np.testing.assert_array_equal(s.image, image)
    s.set_image((ROOT / "raw_images" / "coffee.png").read_bytes(), name="cup.png")
    assert (
        s.image_name == "cup.png" and s.label_source == "prediction" and s.label_name == "espresso"
    )


@pytest.mark.slow
def test_export_writes_the_files(session, tmp_path):
    s = session
    paths = s.export(tmp_path / "out")
    assert all(p.is_absolute() and p.is_file() for p in paths)
    names = {p.name for p in paths}
    assert names >= {"profile.csv", "filters.json", "input_map.png", "overlay.png", "gradcam.png"}
    with (tmp_path / "out" / "profile.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == s.n_filters and list(rows[0]) == [
        "id",
        "layer",
        "channel",
        "saliency",
        "raw",
    ]
    top = rows[s.filters[0]]
    assert float(top["saliency"]) == pytest.approx(s.profile()[s.filters[0]])
    meta = json.loads((tmp_path / "out" / "filters.json").read_text())
    assert [f["id"] for f in meta["filters"]] == s.filters
    assert meta["k"] == 10 and meta["boost"] == 100.0 and meta["model"] == "efficientnet_lite0"
    for png in ("input_map.png", "overlay.png", "gradcam.png"):
        img = cv2.imread(str(tmp_path / "out" / png), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape[:2] == (224, 224)


@pytest.mark.slow
def test_cam_explains_the_label_under_study_by_default(session):
    """Grace Hopper: labelled 'military uniform', predicted 'academic gown' (GUIDE §3)."""
    s = session
    label, pred = s.label, int(np.argmax(s.probabilities()))
    assert s.labels.name(pred) == "academic gown" and label != pred
    assert s.cam_view == CamView() and s.cam_target() == {"index": label, "name": "military uniform", "source": "label"}
    default = s.cam()
    np.testing.assert_array_equal(default, s.cam(target=label))
    assert not np.allclose(default, s.cam(target=pred), atol=1e-3)  # the two classes differ
    # The view follows the label until a class is chosen.
    s.set_label("academic gown")
    assert s.cam_target()["index"] == pred
    np.testing.assert_array_equal(s.cam(), s.cam(target=pred))
    s.set_label(None)
    v = s.version
    layer = s.cam_layers()[-2]
    view = s.set_cam_view(method="gradcam++", target="academic gown", layer=layer)
    assert view == CamView("gradcam++", pred, layer) == s.cam_view and s.version == v + 1
    assert s.cam_target() == {"index": pred, "name": "academic gown", "source": "chosen"}
    np.testing.assert_array_equal(s.cam(), s.cam(method="gradcam++", target=pred, layer=layer))
    assert s.set_cam_view(layer=None).layer is None and s.cam_view.method == "gradcam++"
    with pytest.raises(ValueError, match="CAM method"):
        s.set_cam_view(method="gradcam+")
    with pytest.raises(ValueError, match="no conv layer"):
        s.set_cam_view(layer="conv_tail")
    with pytest.raises(UnknownLabelError):
        s.set_cam_view(target="academic gwn")


@pytest.mark.slow
def test_export_is_what_is_on_screen_and_the_zip_holds_the_same_bytes(session, tmp_path, monkeypatch):
    s = session
    s.set_filters(s.filters[:4])
    s.set_percentile(80)
    s.set_cam_view(method="gradcam++", target="academic gown")
    monkeypatch.chdir(tmp_path)
    paths = s.export("relative/out", extra={"profile.html": "<html></html>"})
    folder = (tmp_path / "relative" / "out").resolve()
    assert [p.parent for p in paths] == [folder] * len(paths)  # absolute, whatever the cwd
    names = [p.name for p in paths]
    assert names == ["profile.csv", "filters.json", "image.png", "input_map.png", "overlay.png",
                     "gradcam.png", "profile.html"]

    def png(name):
        bgr = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else bgr

    np.testing.assert_array_equal(png("gradcam.png"), overlay(s.image, s.cam()))
    # Not what export wrote before (plain GradCAM for the predicted class, here the same class).
    plain = overlay(s.image, s.cam(method="gradcam", target=int(np.argmax(s.probabilities()))))
    assert not np.array_equal(png("gradcam.png"), plain)
    np.testing.assert_array_equal(png("input_map.png"), np.round(s.input_map() * 255).astype(np.uint8))
    np.testing.assert_array_equal(png("image.png"), s.image)
    meta = json.loads((folder / "filters.json").read_text())
    assert meta["filter_mode"] == "custom" and [f["id"] for f in meta["filters"]] == s.filters
    assert meta["percentile"] == 80.0
    assert meta["cam"] == {
        "method": "gradcam++",
        "target": {"index": s.cam_target()["index"], "name": "academic gown", "source": "chosen"},
        "layer": s.cam_layers()[-1],
    }
    assert meta["files"] == names

    blob = s.export_zip(extra={"profile.html": "<html></html>"})
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.namelist() == names
        for p in paths:
            assert zf.read(p.name) == p.read_bytes(), p.name


# -- dataset browser and neighbours (shared data) -------------------------------------------------
def _subset_csv(folder, rows):
    """A labels CSV listing some of the shared images by absolute path (nothing is copied)."""
    path = folder / "labels.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for file, label in rows:
            writer.writerow([str(VAL800 / file), label])
    return path


def _val_rows():
    with (VAL800 / "labels.csv").open(newline="") as fh:
        return [(r["file"], r["label"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def small_index(default_explainer, tmp_path_factory):
    """(labels CSV, profile-index folder) over 24 shared images, the index built here."""
    from psal_widgets.data import open_dataset
    from psal_widgets.index import build_index

    folder = tmp_path_factory.mktemp("small")
    rows = _val_rows()[::33][:24]
    csv_path = _subset_csv(folder, rows)
    model = default_explainer.model
    ds = open_dataset(csv_path, labels=model.labels, preprocess=model.preprocess)
    build_index(model, ds, folder / "index", batch_size=8, progress=False)
    return csv_path, folder / "index"


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_dataset_rows_and_filters(default_explainer, small_index):
    from psal_widgets.index import ProfileIndex

    csv_path, folder = small_index
    idx = ProfileIndex.open(folder)
    s = Session(model=default_explainer, data=csv_path, index=folder, image=GRACE)
    assert s.index_dir == folder
    rows = s.dataset_rows()
    assert len(rows) == 24 and rows[0]["file"].endswith(_val_rows()[0][0])
    wrong = s.dataset_rows(only="incorrect")
    assert [r["i"] for r in wrong] == np.flatnonzero(~idx.correct).tolist() and wrong
    assert all(not r["correct"] and r["pred"] != r["label"] for r in wrong)
    assert len(s.dataset_rows(only="correct")) == 24 - len(wrong)
    name = rows[0]["label_name"]
    same = s.dataset_rows(cls=name)
    assert same and all(r["label_name"] == name for r in same)
    first = wrong[0]
    s.open_dataset_image(first["i"])
    assert s.dataset_index == first["i"] and s.label == first["label"] and s.label_source == "known"
    # The live analysis agrees with the index: same prediction, same probability of the label.
    assert s.prediction(1)[0]["index"] == first["pred"]
    live = s.probabilities()[first["label"]]
    assert live == pytest.approx(first["prob_label"], rel=1e-3, abs=1e-6)


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_an_index_of_another_dataset_is_refused(default_explainer, small_index, tmp_path):
    from psal_widgets.index import IndexError_

    csv_path = _subset_csv(tmp_path, _val_rows()[1:4])  # none of them is in the small index
    with pytest.raises(IndexError_, match="does not hold 3"):
        Session(model=default_explainer, data=csv_path, index=small_index[1], image=GRACE)


@pytest.mark.slow
@pytest.mark.data
@needs_data()
def test_neighbours_against_numpy(default_explainer, small_index):
    csv_path, folder = small_index
    s = Session(model=default_explainer, data=csv_path, index=folder, image=GRACE)
    raw = np.load(folder / "profiles.npy").astype(np.float64)
    stats = default_explainer.stats
    bank = (raw - stats.mean.numpy()) / stats.safe_std().numpy()

    s.open_dataset_image(3)
    query = s.profile()  # standardized (the default mode)
    found = s.neighbours(k=5)
    ref = _loop_cosine(query, bank)
    ref[3] = -np.inf  # the image itself is left out
    assert [r["i"] for r in found] == np.argsort(-ref)[:5].tolist()
    np.testing.assert_allclose([r["similarity"] for r in found], np.sort(ref)[::-1][:5], rtol=1e-4)
    # Sanity: the indexed profile of the same image is (almost) the query itself.
    assert _loop_cosine(query, bank[3:4])[0] > 0.99

    index = default_explainer.index
    lo, hi = index.layers[40].offset, index.layers[48].offset + index.layers[48].n_filters
    deep = s.neighbours(k=24, layers=(40, 48))
    ref_deep = _loop_cosine(query[lo:hi], bank[:, lo:hi])
    ref_deep[3] = -np.inf
    assert [r["i"] for r in deep] == np.argsort(-ref_deep)[:23].tolist()
    np.testing.assert_allclose(
        [r["similarity"] for r in deep], np.sort(ref_deep)[::-1][:23], rtol=1e-4
    )
    assert set(found[0]) >= {"i", "file", "label_name", "pred_name", "correct", "similarity"}
