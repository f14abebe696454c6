"""Pure figure builders (psal_widgets.viz.figures) and PNG encoding (psal_widgets.viz.encode)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from psal_widgets._types import SortedProfile
from psal_widgets.viz.encode import png_bytes, thumbnail
from psal_widgets.viz.figures import (
    DEAD_NAME,
    DEAD_TRACE,
    HIGHLIGHT_TRACE,
    PROFILE_TRACE,
    clipped_note,
    highlight_update,
    layer_groups,
    layer_shapes,
    point_channels,
    positions_of,
    profile_figure,
    profile_layout,
    value_range,
)

SIZES = [3, 2, 5, 1]
NAMES = ["stem", "block1.dw", "block1.pw", "head"]


@pytest.fixture
def profile() -> SortedProfile:
    """A hand-built layout: layers of SIZES filters (contiguous ids), each sorted descending."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=sum(SIZES))
    xs, ids, layers = [], [], []
    offset = 0
    for pos, n in enumerate(SIZES):
        block = np.arange(offset, offset + n)
        order = block[np.argsort(-values[block], kind="stable")]
        ids.append(order)
        xs.append(pos + (np.arange(n) + 0.5) / n)
        layers.append(np.full(n, pos))
        offset += n
    ids_all = np.concatenate(ids)
    rank = np.empty(values.size, dtype=np.int64)
    rank[np.argsort(-values, kind="stable")] = np.arange(values.size)
    return SortedProfile(
        x=np.concatenate(xs),
        y=values[ids_all],
        filter_id=ids_all,
        layer=np.concatenate(layers),
        rank=rank[ids_all],
        layer_names=list(NAMES),
    )


def _expected_channel(fid: int) -> int:
    offsets = np.cumsum([0, *SIZES])
    layer = int(np.searchsorted(offsets, fid, side="right") - 1)
    return fid - int(offsets[layer])


def test_profile_trace_equals_sorted_profile_arrays(profile: SortedProfile) -> None:
    fig = profile_figure(profile, [])
    main = fig["data"][PROFILE_TRACE]
    assert main["type"] == "scattergl"
    np.testing.assert_array_equal(main["x"], profile.x)
    np.testing.assert_array_equal(main["y"], profile.y)
    cd = np.asarray(main["customdata"])
    assert cd.shape == (profile.x.size, 3)
    np.testing.assert_array_equal(cd[:, 0], profile.filter_id)
    np.testing.assert_array_equal(cd[:, 2], profile.rank + 1)  # people count ranks from 1
    assert cd[np.argmax(profile.y), 2] == 1
    assert cd[:, 1].tolist() == [_expected_channel(int(f)) for f in profile.filter_id]
    assert main["text"] == [NAMES[i] for i in profile.layer]
    # The hover names layer, channel, saliency and rank.
    for part in ("%{text}", "%{customdata[1]}", "%{y", "%{customdata[2]}"):
        assert part in main["hovertemplate"]


def test_highlight_positions_are_the_points_of_f(profile: SortedProfile) -> None:
    chosen = [7, 0, 4, 10]  # any order, across layers
    hl = profile_figure(profile, chosen)["data"][HIGHLIGHT_TRACE]
    for j, fid in enumerate(chosen):
        (where,) = np.flatnonzero(profile.filter_id == fid)
        assert hl["x"][j] == profile.x[where]
        assert hl["y"][j] == profile.y[where]
        assert hl["customdata"][j][0] == fid
        assert hl["text"][j] == NAMES[profile.layer[where]]
    assert hl["name"] == "boosted set F (4)"


def test_empty_highlight(profile: SortedProfile) -> None:
    hl = highlight_update(profile, [])
    assert len(hl["x"]) == 0 and np.asarray(hl["customdata"]).shape == (0, 3)


def test_positions_of_and_unknown_ids(profile: SortedProfile) -> None:
    pos = positions_of(profile, [10, 3])
    assert profile.filter_id[pos].tolist() == [10, 3]
    with pytest.raises(ValueError, match="not in the profile"):
        positions_of(profile, [11])
    with pytest.raises(ValueError, match="not in the profile"):
        positions_of(profile, [-1])


def test_point_channels(profile: SortedProfile) -> None:
    assert point_channels(profile).tolist() == [
        _expected_channel(int(f)) for f in profile.filter_id
    ]


def test_layer_boundaries_and_names(profile: SortedProfile) -> None:
    layout = profile_figure(profile, [1])["layout"]
    shapes = layout["shapes"]
    assert len(shapes) == len(SIZES) - 1
    assert [s["x0"] for s in shapes] == [1.0, 2.0, 3.0]
    assert all(s["x0"] == s["x1"] and s["yref"] == "paper" for s in shapes)
    assert layout["xaxis"]["ticktext"] == NAMES
    assert layout["xaxis"]["tickvals"] == [0.5, 1.5, 2.5, 3.5]
    assert layout["xaxis"]["range"] == [0.0, float(len(SIZES))]
    lo, hi = layout["yaxis"]["range"]
    assert lo < profile.y.min() and hi > np.percentile(profile.y, 99.9)
    assert layout["dragmode"] == "select"


def test_value_range_ignores_outliers_but_keeps_f() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=21008)
    y[:3] = [1800.0, 900.0, 650.0]  # a few filters far out, as on a masked flat region
    lo, hi, n_above = value_range(y)
    assert lo < y.min() and 3.0 < hi < 20.0  # the bulk, not the outliers, sets the scale
    assert n_above == int((y > hi).sum()) >= 3
    assert clipped_note(n_above) and clipped_note(0) == []
    lo, hi, n_above = value_range(y, keep=[900.0])  # a boosted filter must stay visible
    assert hi > 900.0 and n_above == 1


def test_every_trace_has_a_legend_entry(profile: SortedProfile) -> None:
    fig = profile_figure(profile, [1, 2], dead=[4])
    assert fig["layout"]["showlegend"] is True
    for trace in fig["data"]:
        assert trace["showlegend"] is True and trace["name"]
    # A model without dead filters gets no "dead filter" legend entry (an empty trace).
    plain = profile_figure(profile, [1, 2])["data"][DEAD_TRACE]
    assert plain["showlegend"] is False and len(plain["x"]) == 0


def test_dead_filters_are_drawn_apart_exactly(profile: SortedProfile) -> None:
    dead = [7, 0, 10]  # in three different layers, given in no particular order
    fig = profile_figure(profile, [1, 7], dead=dead)
    assert [t["type"] for t in fig["data"]] == ["scattergl"] * 3
    tr = fig["data"][DEAD_TRACE]
    cd = np.asarray(tr["customdata"])
    assert cd[:, 0].tolist() == dead  # point j of the trace is dead[j], nothing else
    where = {int(f): p for p, f in enumerate(profile.filter_id)}
    pos = [where[f] for f in dead]
    # Drawn exactly over the filters' own points, with their layer, channel and rank.
    np.testing.assert_array_equal(tr["x"], profile.x[pos])
    np.testing.assert_array_equal(tr["y"], profile.y[pos])
    assert cd[:, 1].tolist() == [_expected_channel(f) for f in dead]
    np.testing.assert_array_equal(cd[:, 2], profile.rank[pos] + 1)
    assert tr["text"] == [NAMES[profile.layer[p]] for p in pos]
    assert tr["name"] == DEAD_NAME == "dead filter (σ = 0)"
    # A style of its own: hollow (white fill, grey ring), unlike the blue dots and the red F.
    main, boosted = fig["data"][PROFILE_TRACE], fig["data"][HIGHLIGHT_TRACE]
    assert tr["marker"]["color"] == "white" and tr["marker"]["line"]["width"] > 0
    assert tr["marker"]["color"] not in (main["marker"]["color"], boosted["marker"]["color"])
    assert tr["marker"]["size"] < boosted["marker"]["size"]
    # The hover says why the filter sits at 0.
    assert "dead filter" in tr["hovertemplate"] and "σ = 0" in tr["hovertemplate"]
    assert "%{customdata[0]}" in tr["hovertemplate"]
    # Trace 0 keeps every filter's place but leaves the dead ones to this trace (NaN: neither
    # drawn nor hovered there, so the hover reaches the dead trace); F stays on trace 1.
    assert len(main["x"]) == profile.x.size
    y0 = np.asarray(main["y"])
    assert np.isnan(y0[pos]).all()
    np.testing.assert_array_equal(np.delete(y0, pos), np.delete(profile.y, pos))
    np.testing.assert_array_equal(np.asarray(boosted["customdata"])[:, 0], [1, 7])
    with pytest.raises(ValueError, match="not in the profile"):
        profile_figure(profile, [], dead=[99])


EFFNET = (
    ["conv_stem", "blocks.0.0.conv_dw", "blocks.0.0.conv_pw"]
    + [f"blocks.1.{b}.{c}" for b in range(2) for c in ("conv_pw", "conv_dw", "conv_pwl")]
    + [f"blocks.2.0.{c}" for c in ("conv_pw", "conv_dw", "conv_pwl")]
    + ["conv_head"]
)


def test_layer_groups_name_stages() -> None:
    assert layer_groups(EFFNET) == [
        (0, 1, "conv_stem"),
        (1, 3, "blocks.0"),
        (3, 9, "blocks.1"),
        (9, 12, "blocks.2"),
        (12, 13, "conv_head"),
    ]
    resnet = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2)]
    assert [g[2] for g in layer_groups(resnet)] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    # Groups tile the layers in order; a name prefix that comes back later starts a new group.
    assert layer_groups(["a.x", "b.x", "a.y"], min_groups=3) == [(0, 1, "a"), (1, 2, "b"), (2, 3, "a")]
    assert layer_groups([]) == []


def test_axis_names_stages_and_marks_their_boundaries() -> None:
    n = len(EFFNET)
    prof = SortedProfile(
        x=np.arange(n) + 0.5,
        y=np.zeros(n),
        filter_id=np.arange(n),
        layer=np.arange(n),
        rank=np.arange(n),
        layer_names=EFFNET,
    )
    xaxis = profile_layout(prof)["xaxis"]
    assert xaxis["ticktext"] == ["conv_stem", "blocks.0", "blocks.1", "blocks.2", "conv_head"]
    assert xaxis["tickvals"] == [0.5, 2.0, 6.0, 10.5, 12.5]
    shapes = profile_layout(prof)["shapes"]
    colours = {s["line"]["color"] for s in shapes}
    assert len(shapes) == n - 1 and len(colours) == 2
    strong = max(colours, key=lambda c: float(c.rsplit(",", 1)[1].rstrip(") ")))  # the darker one
    assert [s["x0"] for s in shapes if s["line"]["color"] == strong] == [1.0, 3.0, 9.0, 12.0]


def test_layer_labels_are_thinned(profile: SortedProfile) -> None:
    layout = profile_layout(profile, max_layer_labels=2)
    assert layout["xaxis"]["ticktext"] == ["stem", "block1.pw"]
    assert layer_shapes(1) == []
    with pytest.raises(ValueError):
        layer_shapes(-1)


def test_mismatched_arrays_are_refused(profile: SortedProfile) -> None:
    bad = SortedProfile(
        x=profile.x,
        y=profile.y[:-1],
        filter_id=profile.filter_id,
        layer=profile.layer,
        rank=profile.rank,
    )
    with pytest.raises(ValueError, match="differ in length"):
        profile_figure(bad, [])


def test_png_round_trip_keeps_rgb_order() -> None:
    img = np.zeros((5, 7, 3), dtype=np.uint8)
    img[..., 0] = 200  # red
    img[2, 3] = (1, 2, 3)
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., ::-1], img)  # OpenCV decodes to BGR
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(
        cv2.imdecode(np.frombuffer(png_bytes(grey), np.uint8), cv2.IMREAD_UNCHANGED), grey
    )


def test_png_refuses_float_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        png_bytes(np.zeros((4, 4, 2), dtype=np.uint8))


def test_thumbnail() -> None:
    img = np.zeros((200, 100, 3), dtype=np.uint8)
    assert thumbnail(img, max_side=50).shape == (50, 25, 3)
    assert thumbnail(img, max_side=500).shape == (200, 100, 3)  # never enlarged
