"""Tests of the viz layer: heat-map post-processing, overlays, masks and PNG writers."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from psal_widgets._types import SortedProfile
from psal_widgets.viz import (
    COLORMAPS,
    image_png,
    mask_top_percent,
    overlay,
    profile_png,
    saliency_heatmap,
    triptych_png,
)


def _known_grad() -> np.ndarray:
    """A [3, 10, 10] gradient whose channel-max of |.| is exactly arange(100).

    The dominant value sits in a different channel per pixel and is negative on odd
    pixels, while the other channels hold smaller values: only abs-then-max recovers it.
    """
    v = np.arange(100, dtype=np.float64)
    grad = np.empty((3, 100))
    for c in range(3):
        grad[c] = 0.3 * v * (-1.0) ** c
    dominant = np.arange(100) % 3
    sign = np.where(np.arange(100) % 2 == 1, -1.0, 1.0)
    grad[dominant, np.arange(100)] = sign * v
    return grad.reshape(3, 10, 10)


def _expected(percentile: float, upper: float) -> np.ndarray:
    v = np.arange(100, dtype=np.float64).reshape(10, 10)
    lo, hi = np.percentile(v, percentile), np.percentile(v, upper)
    return (np.clip(v, lo, hi) - lo) / (hi - lo)


# --------------------------------------------------------------------------- saliency_heatmap


def test_heatmap_matches_hand_computed_percentiles():
    out = saliency_heatmap(_known_grad(), percentile=90, upper=99, blur=0)
    assert out.dtype == np.float32 and out.shape == (10, 10)
    np.testing.assert_allclose(out, _expected(90, 99), atol=1e-6)
    flat = out.reshape(-1)
    # p90 of arange(100) is 89.1: pixels 0..89 are clipped to zero, 90..99 survive.
    assert np.all(flat[:90] == 0.0)
    assert np.all(flat[90:] > 0.0)
    # p99 is 98.01: only the largest pixel reaches the top.
    assert flat[99] == 1.0 and np.all(flat[:99] < 1.0)


def test_heatmap_uses_abs_and_channel_max():
    grad = _known_grad()
    reduced = np.abs(grad).max(axis=0)
    np.testing.assert_array_equal(reduced.reshape(-1), np.arange(100))
    a = saliency_heatmap(grad, blur=0)
    b = saliency_heatmap(-grad, blur=0)
    c = saliency_heatmap(reduced, blur=0)  # already reduced [H, W] input
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_heatmap_blur_is_opencv_gaussian_of_unblurred():
    grad = _known_grad()
    sharp = saliency_heatmap(grad, blur=0)
    blurred = saliency_heatmap(grad, blur=3)
    np.testing.assert_allclose(blurred, cv2.GaussianBlur(sharp, (3, 3), 0), atol=1e-7)
    assert not np.array_equal(blurred, sharp)
    assert blurred.min() >= 0.0 and blurred.max() <= 1.0
    np.testing.assert_array_equal(saliency_heatmap(grad, blur=1), sharp)


def test_heatmap_constant_input_gives_zeros_not_nan():
    out = saliency_heatmap(np.full((3, 8, 6), 0.25), blur=3)
    assert out.shape == (8, 6) and out.dtype == np.float32
    assert np.all(out == 0.0)
    assert np.all(saliency_heatmap(np.zeros((3, 4, 4))) == 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_heatmap_rejects_non_finite(bad):
    grad = _known_grad()
    grad[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        saliency_heatmap(grad)


def test_heatmap_percentile_monotone_in_nonzero_count():
    grad = _known_grad()
    counts = [
        int(np.count_nonzero(saliency_heatmap(grad, percentile=p, upper=99, blur=0)))
        for p in (0, 25, 50, 75, 90, 95)
    ]
    assert counts == sorted(counts, reverse=True)
    assert len(set(counts)) == len(counts)  # strictly decreasing on this map
    assert counts[0] == 99 and counts[4] == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percentile": 99, "upper": 90},
        {"percentile": 50, "upper": 50},
        {"percentile": -1},
        {"upper": 101},
        {"blur": 2},
        {"blur": -3},
        {"blur": 3.0},
    ],
)
def test_heatmap_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        saliency_heatmap(_known_grad(), **kwargs)


def test_heatmap_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        saliency_heatmap(np.zeros((2, 3, 4, 5)))


def test_heatmap_keeps_resolution_of_tiny_gradients():
    # Real input gradients are often ~1e-8; the map must not collapse to zeros.
    out = saliency_heatmap(_known_grad() * 1e-9, blur=0)
    np.testing.assert_allclose(out, _expected(90, 99), atol=1e-6)


# --------------------------------------------------------------------------- overlay


def _photo(h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_overlay_shape_dtype_and_alpha_zero():
    img = _photo()
    heat = np.linspace(0, 1, 12 * 16).reshape(12, 16)
    out = overlay(img, heat)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(img, heat, alpha=0.0), img)


def test_overlay_alpha_one_is_rgb_colormap():
    img = _photo()
    heat = np.zeros((12, 16))
    heat[:, :4] = 0.3  # above the ramp: full opacity, jet's blue end
    heat[:, 8:] = 1.0
    out = overlay(img, heat, alpha=1.0, colormap="jet")
    # jet: low -> blue, 1 -> dark red; in RGB order the blue/red channels must dominate.
    assert out[0, 0, 2] > 100 and out[0, 0, 0] < 10
    assert out[0, -1, 0] > 100 and out[0, -1, 2] < 10


@pytest.mark.parametrize("ramp", [0.0, 0.15, 0.5])
def test_overlay_keeps_the_photo_where_the_heat_is_zero(ramp):
    # A thresholded map is 0 below the threshold percentile: the photo must show there, not
    # jet's navy low end (which used to darken most of the image).
    img = _photo()
    heat = np.zeros((12, 16))
    heat[2:5, 3:7] = 1.0
    out = overlay(img, heat, alpha=0.8, colormap="jet", ramp=ramp)
    cold = heat == 0
    np.testing.assert_array_equal(out[cold], img[cold])
    hot = ~cold
    expected = np.round(0.2 * img[hot].astype(np.float64) + 0.8 * np.array([128, 0, 0]))
    np.testing.assert_allclose(out[hot], expected, atol=1.0)  # jet(1) = RGB (128, 0, 0)


def test_overlay_opacity_ramps_up_to_alpha():
    img = np.full((1, 3, 3), 200, dtype=np.uint8)
    heat = np.array([[0.0, 0.05, 0.3]])
    out = overlay(img, heat, alpha=0.6, colormap="jet", ramp=0.1).astype(np.float64)
    coloured = cv2.applyColorMap(np.array([[0, 13, 76]], dtype=np.uint8), cv2.COLORMAP_JET)[0, :, ::-1]
    for j, a in enumerate([0.0, 0.3, 0.6]):  # 0, alpha * 0.05 / 0.1, alpha (saturated)
        np.testing.assert_allclose(out[0, j], np.round((1 - a) * 200 + a * coloured[j]), atol=1.0)


def test_colormap_stops_are_the_opencv_colours():
    from psal_widgets.viz.heatmap import colormap_stops

    stops = colormap_stops("jet", 3)
    assert [t for t, _ in stops] == [0.0, 0.5, 1.0]
    assert stops[0][1] == (0, 0, 128) and stops[-1][1] == (128, 0, 0)
    with pytest.raises(ValueError, match="colormap"):
        colormap_stops("nope")


def test_overlay_weighted_leaves_cold_pixels_untouched():
    img = _photo()
    heat = np.zeros((12, 16))
    heat[3:6, 4:9] = 0.8
    out = overlay(img, heat, alpha=0.7, weighted=True)
    cold = heat == 0
    np.testing.assert_array_equal(out[cold], img[cold])
    assert not np.array_equal(out[~cold], img[~cold])


def test_overlay_resizes_small_heat():
    img = _photo(32, 48)
    out = overlay(img, np.eye(4), alpha=0.5, colormap="turbo")
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("name", COLORMAPS)
def test_overlay_all_colormaps(name):
    out = overlay(_photo(), np.random.default_rng(1).random((12, 16)), colormap=name)
    assert out.shape == (12, 16, 3)


def test_overlay_rejects_bad_input():
    img = _photo()
    with pytest.raises(ValueError, match="colormap"):
        overlay(img, np.zeros((12, 16)), colormap="rainbowz")
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, np.zeros((12, 16)), alpha=1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(img.astype(np.float32), np.zeros((12, 16)))
    with pytest.raises(ValueError, match="NaN"):
        overlay(img, np.full((12, 16), np.nan))


# --------------------------------------------------------------------------- mask_top_percent


@pytest.mark.parametrize("percent", [0, 1, 5, 10, 33.3, 50, 99.9, 100])
def test_mask_top_percent_exact_count(percent):
    heat = np.random.default_rng(2).random((20, 30))
    mask = mask_top_percent(heat, percent=percent)
    assert mask.dtype == bool and mask.shape == heat.shape
    k = round(percent / 100 * heat.size)
    assert mask.sum() == k
    if 0 < k < heat.size:
        assert heat[mask].min() >= heat[~mask].max()


def test_mask_top_percent_ties_still_exact():
    heat = np.zeros((10, 10))
    heat[0, :3] = 1.0  # three clear winners, then 97 tied zeros
    mask = mask_top_percent(heat, percent=10)
    assert mask.sum() == 10
    assert mask[0, :3].all()


def test_mask_top_percent_rejects_bad_percent():
    with pytest.raises(ValueError):
        mask_top_percent(np.zeros((4, 4)), percent=120)
    with pytest.raises(ValueError):
        mask_top_percent(np.zeros((4, 4)), percent=-1)


# --------------------------------------------------------------------------- PNG writers


def _profile(n_layers: int = 30, per_layer: int = 8) -> SortedProfile:
    rng = np.random.default_rng(3)
    xs, ys, ids, layers = [], [], [], []
    for i in range(n_layers):
        xs.append(i + (np.arange(per_layer) + 0.5) / per_layer)
        ys.append(np.sort(rng.normal(size=per_layer))[::-1])
        ids.append(i * per_layer + rng.permutation(per_layer))
        layers.append(np.full(per_layer, i))
    y = np.concatenate(ys)
    rank = np.empty(y.size, dtype=np.int64)
    rank[np.argsort(-y, kind="stable")] = np.arange(y.size)
    return SortedProfile(
        x=np.concatenate(xs),
        y=y,
        filter_id=np.concatenate(ids),
        layer=np.concatenate(layers),
        rank=rank,
        layer_names=[f"layer{i}.conv" for i in range(n_layers)],
    )


def _read_png(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"could not read {path}"
    return img


@pytest.mark.parametrize("highlight", [None, np.array([0, 5, 17, 100])])
def test_profile_png_writes_sane_png(tmp_path, highlight):
    path = profile_png(_profile(), tmp_path / "sub" / "profile.png", highlight=highlight, title="test")
    assert path.exists() and path.stat().st_size > 1000
    img = _read_png(path)
    h, w = img.shape[:2]
    assert abs(w - 14 * 120) <= 2  # ~14 in at 120 dpi
    assert 300 <= h <= 1000


def test_profile_png_highlight_changes_pixels(tmp_path):
    plain = _read_png(profile_png(_profile(), tmp_path / "a.png"))
    marked = _read_png(profile_png(_profile(), tmp_path / "b.png", highlight=np.array([3, 50])))
    assert plain.shape == marked.shape and not np.array_equal(plain, marked)


def test_profile_png_rejects_inconsistent_profile(tmp_path):
    p = _profile()
    bad = SortedProfile(x=p.x[:-1], y=p.y, filter_id=p.filter_id, layer=p.layer, rank=p.rank, layer_names=p.layer_names)
    with pytest.raises(ValueError, match="length"):
        profile_png(bad, tmp_path / "bad.png")


def test_image_png_round_trips_rgb(tmp_path):
    red = np.zeros((5, 7, 3), dtype=np.uint8)
    red[..., 0] = 255
    back = _read_png(image_png(red, tmp_path / "red.png"))
    # OpenCV reads BGR: pure red must land in the last channel.
    np.testing.assert_array_equal(back[..., 2], 255)
    np.testing.assert_array_equal(back[..., :2], 0)

    photo = _photo()
    back = _read_png(image_png(photo, tmp_path / "deep" / "dir" / "photo.png"))
    np.testing.assert_array_equal(back[..., ::-1], photo)


def test_image_png_float_grayscale(tmp_path):
    heat = np.linspace(0, 1, 20).reshape(4, 5)
    back = _read_png(image_png(heat, tmp_path / "gray.png"))
    assert back.shape == (4, 5) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, np.round(heat * 255).astype(np.uint8))


def test_triptych_png(tmp_path):
    img = _photo(24, 24)
    heat = saliency_heatmap(np.random.default_rng(4).normal(size=(3, 24, 24)))
    panels = [("image", img), ("saliency", heat), ("overlay", overlay(img, heat))]
    path = triptych_png(panels, tmp_path / "t.png", suptitle="three panels")
    back = _read_png(path)
    assert back.shape[1] > back.shape[0] > 100  # wide: three panels side by side
    with pytest.raises(ValueError):
        triptych_png([], tmp_path / "none.png")


def test_viz_does_not_import_torch():
    code = (
        "import sys; import psal_widgets.viz; "
        "bad = [m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
