"""The explorer's dataset view on a tiny model: session dataset methods (read from the profile
index) against independent NumPy computations on the index arrays, and the panel headless."""

from __future__ import annotations

import numpy as np
import pytest

from psal_widgets.index import ProfileIndex, build_index
from psal_widgets.session import Session, SessionError

from .tinydata import tiny_setup

N = 18


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(explainer, dataset, csv path, index folder): 18 generated images, their index built here."""
    folder = tmp_path_factory.mktemp("dsview")
    explainer, ds, csv_path = tiny_setup(folder, n=N, seed=3)
    build_index(explainer.model, ds, folder / "idx", batch_size=6, progress=False)
    return explainer, ds, csv_path, folder / "idx"


@pytest.fixture(scope="module")
def session(built):
    explainer, ds, csv_path, idx = built
    s = Session(model=explainer, data=csv_path, index=idx, image=ds.files[0], k=3)
    yield s
    s.close()


def _standardized(built) -> np.ndarray:
    """The index's profiles standardized by hand, float64 [N, F]."""
    explainer, _, _, folder = built
    raw = np.load(folder / "profiles.npy").astype(np.float64)
    st = explainer.stats
    std = st.std.double().numpy()
    std = np.where(std <= 1e-14, 1.0, std)
    return (raw - st.mean.double().numpy()) / std


def test_table_sorts_and_filters_like_the_index(built, session):
    idx = ProfileIndex.open(built[3])
    z = _standardized(built)
    mean_sal = z.mean(axis=1)
    assert 0 < idx.correct.sum() < N  # both groups present, or the filters test nothing
    rows = session.dataset_rows()
    assert [r["i"] for r in rows] == list(range(N))
    for r in rows:
        i = r["i"]
        assert r["label"] == idx.label[i] and r["pred"] == idx.pred[i] and r["correct"] == bool(idx.correct[i])
        assert r["loss"] == pytest.approx(float(idx.loss[i]), rel=1e-6)
        assert r["mean_saliency"] == pytest.approx(mean_sal[i], rel=1e-4, abs=1e-5)
        assert r["prob_pred"] == pytest.approx(float(idx.top5_prob[i, 0]), rel=1e-6)
        # p(label) from the loss agrees with the top-5 probability where the label is in the top 5.
        where = np.flatnonzero(idx.top5[i] == idx.label[i])
        if where.size:
            assert r["prob_label"] == pytest.approx(float(idx.top5_prob[i, where[0]]), rel=1e-4)

    by_loss = session.dataset_table(sort="loss")
    assert [r["i"] for r in by_loss] == sorted(range(N), key=lambda i: (-float(idx.loss[i]), i))
    up = session.dataset_table(sort="mean_saliency", descending=False)
    assert [r["i"] for r in up] == sorted(range(N), key=lambda i: (mean_sal[i], i))
    wrong = session.dataset_table(sort="mean_saliency", only="incorrect", limit=3)
    ref = sorted((i for i in range(N) if not idx.correct[i]), key=lambda i: (-mean_sal[i], i))[:3]
    assert [r["i"] for r in wrong] == ref
    bees = session.dataset_table(sort="loss", cls="bee", only="correct")
    ref = [i for i in sorted(range(N), key=lambda i: (-float(idx.loss[i]), i))
           if idx.label[i] == 1 and idx.correct[i]]
    assert [r["i"] for r in bees] == ref
    with pytest.raises(ValueError, match="sort must be"):
        session.dataset_table(sort="name")  # type: ignore[arg-type]


def test_summary_is_fig2_of_the_index(built, session):
    explainer = built[0]
    idx = ProfileIndex.open(built[3])
    z = _standardized(built)
    summary = session.dataset_summary()
    assert summary["n_correct"] == int(idx.correct.sum()) and summary["n_incorrect"] == N - summary["n_correct"]
    mean_sal = z.mean(axis=1)
    assert summary["mean_saliency_correct"] == pytest.approx(mean_sal[idx.correct].mean(), rel=1e-4)
    assert summary["mean_saliency_incorrect"] == pytest.approx(mean_sal[~idx.correct].mean(), rel=1e-4)
    for key, group in (("y_correct", idx.correct), ("y_incorrect", ~idx.correct)):
        mean = z[group].mean(axis=0)
        # Sorted per layer by hand, layers left to right.
        ref = np.concatenate([np.sort(mean[layer.offset : layer.offset + layer.n_filters])[::-1]
                              for layer in explainer.index.layers])
        np.testing.assert_allclose(summary[key], ref, rtol=1e-4, atol=1e-6)
    assert summary["x"].shape == (explainer.index.n_filters,) and np.all(np.diff(summary["x"]) > 0)


def test_pca_map_is_the_svd_projection(built, session):
    z = _standardized(built)
    centred = z - z.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    ref = u[:, :2] * s[:2]
    got = session.dataset_map("pca")
    assert got.shape == (N, 2)
    for j in range(2):
        sign = np.sign(got[:, j] @ ref[:, j])
        np.testing.assert_allclose(got[:, j], sign * ref[:, j], rtol=1e-3, atol=1e-4)
    assert session.dataset_map("pca") is got  # cached


def test_umap_needs_umap_learn(session):
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(SessionError, match="umap-learn"):
            session.dataset_map("umap")
    else:
        assert session.dataset_map("umap").shape == (N, 2)


def test_neighbours_exclude_the_image_and_match_brute_force(built, session):
    z = _standardized(built)
    session.open_dataset_image(4)
    assert session.dataset_index == 4
    query = session.profile()  # standardized: the live analysis of image 4
    found = session.neighbours(k=5)
    ref = np.array([q @ query / (np.linalg.norm(q) * np.linalg.norm(query)) for q in z])
    assert ref[4] > 0.999  # the index row of the same image is (almost) the query
    ref[4] = -np.inf
    assert [r["i"] for r in found] == np.argsort(-ref, kind="stable")[:5].tolist()
    np.testing.assert_allclose([r["similarity"] for r in found], np.sort(ref)[::-1][:5], rtol=1e-4)
    assert 4 not in [r["i"] for r in session.neighbours(k=N)]
    assert len(session.neighbours(k=N)) == N - 1


def test_index_from_env_and_data_stats_refused(built, monkeypatch):
    explainer, ds, csv_path, idx = built
    monkeypatch.setenv("PSAL_INDEX", str(idx))
    s = Session(model=explainer, data=csv_path, image=ds.files[0], k=3)
    assert s.index_dir == idx and len(s.dataset_rows()) == N
    s.close()
    with pytest.raises(SessionError, match="psal index"):
        Session(model=explainer, data=csv_path, data_stats=idx, image=ds.files[0], k=3)


def test_pca_of_a_wide_matrix_matches_the_svd():
    """More filters than images (the real case: 800 x 21k) takes the Gram-matrix route."""
    from psal_widgets.session.dataset import pca_2d

    rng = np.random.default_rng(1)
    z = rng.normal(size=(25, 300)) * np.linspace(4.0, 0.1, 300)
    centred = z - z.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    got = pca_2d(z)
    for j in range(2):
        sign = np.sign(got[:, j] @ u[:, j])
        np.testing.assert_allclose(got[:, j], sign * u[:, j] * s[j], rtol=1e-8, atol=1e-9)


# -- the panel, headless ---------------------------------------------------------------------------
def _click(figure, trace: int, point: int) -> None:
    """What plotly's FigureWidget front end sends for a click on one point."""
    data = figure.data[trace]
    figure._js2py_pointsCallback = {
        "event_type": "plotly_click",
        "points": {"trace_indexes": [trace], "point_indexes": [point],
                   "xs": [float(data.x[point])], "ys": [float(data.y[point])]},
        "device_state": None,
        "selector": None,
    }


@pytest.fixture(scope="module")
def app(built):
    from psal_widgets.widgets import Explorer

    explainer, ds, csv_path, idx = built
    s = Session(model=explainer, data=csv_path, index=idx, image=ds.files[0], k=3)
    explorer = Explorer(session=s)
    explorer.wait_idle(120)
    yield explorer
    explorer.close()
    s.close()


def test_panel_shows_the_session_and_opens_clicked_images(app):
    from psal_widgets.viz.dataset import CORRECT_TRACE, CURRENT_TRACE, INCORRECT_TRACE
    from psal_widgets.widgets.dataset_view import map_point

    panel, s = app.dataset_panel, app.session
    assert panel is not None and not panel.loaded
    assert panel.widget in app.tabs.children
    app.tabs.selected_index = list(app.tabs.children).index(panel.widget)  # first showing loads it
    app.wait_idle(120)
    assert panel.loaded
    summary = s.dataset_summary()
    fig = panel.summary_figure
    np.testing.assert_allclose(fig.data[CORRECT_TRACE].y, summary["y_correct"])
    np.testing.assert_allclose(fig.data[INCORRECT_TRACE].y, summary["y_incorrect"])
    assert fig.data[CORRECT_TRACE].name == f"correct (n={summary['n_correct']})"
    assert fig.data[INCORRECT_TRACE].name == f"incorrect (n={summary['n_incorrect']})"
    # The map: every image once, on the trace of its group, at its PCA coordinates.
    coords = s.dataset_map("pca")
    rows = s.dataset_rows()
    for i in range(N):
        t, j = map_point(panel, i)
        assert t == (CORRECT_TRACE if rows[i]["correct"] else INCORRECT_TRACE)
        assert (panel.map_figure.data[t].x[j], panel.map_figure.data[t].y[j]) == pytest.approx(tuple(coords[i]))
    assert panel.map_figure.layout.dragmode == "pan"
    # The table lists the session's error table.
    assert [v for _, v in panel.table.options] == [r["i"] for r in s.dataset_table(sort="loss")]
    panel.only.value = "incorrect"
    panel.sort.value = "mean_saliency"
    app.wait_idle(60)
    assert [v for _, v in panel.table.options] == [
        r["i"] for r in s.dataset_table(sort="mean_saliency", only="incorrect")]
    # A click on a map point opens that image; the star follows.
    target = 7 if s.dataset_index != 7 else 8
    t, j = map_point(panel, target)
    _click(panel.map_figure, t, j)
    app.wait_idle(60)
    assert s.dataset_index == target and s.label_source == "known"
    star = panel.map_figure.data[CURRENT_TRACE]
    assert (star.x[0], star.y[0]) == pytest.approx(tuple(coords[target]))
    # Picking a table row opens that image.
    row = panel.table.options[-1][1]
    panel.table.value = row
    app.wait_idle(60)
    assert s.dataset_index == row


def test_dashboard_passes_the_index(tmp_path):
    from pathlib import Path

    from psal_widgets import dashboard
    from psal_widgets.cli import build_parser

    env = dashboard.dashboard_env(data="d.csv", index="idx", base={"PSAL_INDEX": "leaked"})
    assert env["PSAL_INDEX"] == str(Path("idx").resolve())
    assert "PSAL_INDEX" not in dashboard.dashboard_env(data="d.csv", base={"PSAL_INDEX": "leaked"})
    args = build_parser().parse_args(["dashboard", "--data", "d.csv", "--index", "idx"])
    assert args.index == "idx"
    with pytest.raises(ValueError, match="--index needs --data"):
        dashboard.launch(index=tmp_path, check=False, quiet=True)
