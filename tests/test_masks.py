"""Brush masks: box / lasso rasterization against hand-made arrays, and the fills."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from psal_widgets.viz.masks import apply_fill, box_mask, lasso_mask, region_mask


def test_box_is_half_open_and_corner_order_free():
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 2:7] = True  # rows 1..3, columns 2..6
    np.testing.assert_array_equal(box_mask([(2, 1), (7, 4)], shape=(6, 8)), expected)
    np.testing.assert_array_equal(box_mask([(7, 4), (2, 1)], shape=(6, 8)), expected)
    np.testing.assert_array_equal(box_mask([(7, 1), (2, 4)], shape=(6, 8)), expected)
    # Sub-pixel mouse coordinates round to the nearest pixel edge.
    np.testing.assert_array_equal(box_mask([(1.6, 0.7), (7.2, 4.4)], shape=(6, 8)), expected)


def test_box_clips_to_the_image():
    expected = np.zeros((5, 5), dtype=bool)
    expected[3:, :2] = True
    np.testing.assert_array_equal(box_mask([(-10, 3), (2, 40)], shape=(5, 5)), expected)
    full = box_mask([(-1, -1), (99, 99)], shape=(5, 5))
    assert full.all()


@pytest.mark.parametrize(
    "points",
    [
        [(3, 3), (3, 3)],  # a click without a drag
        [(2, 1), (2, 4)],  # zero width
        [(20, 20), (30, 30)],  # entirely outside: clipped to a line on the border
        [(1, 1)],
    ],
)
def test_degenerate_boxes_raise(points):
    with pytest.raises(ValueError, match="box"):
        box_mask(points, shape=(10, 10))


def test_lasso_square_and_triangle_match_hand_made_masks():
    square = lasso_mask([(1, 1), (4, 1), (4, 3), (1, 3)], shape=(5, 6))
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:4, 1:5] = True  # fillPoly includes the boundary pixels
    np.testing.assert_array_equal(square, expected)

    tri = lasso_mask([(0, 0), (4, 0), (0, 4)], shape=(5, 5))
    # Pixels on or below the anti-diagonal x + y <= 4.
    rows, cols = np.mgrid[0:5, 0:5]
    np.testing.assert_array_equal(tri, rows + cols <= 4)


def test_lasso_clips_points_and_validates():
    clipped = lasso_mask([(-5, -5), (10, -5), (10, 10), (-5, 10)], shape=(4, 4))
    assert clipped.all()
    with pytest.raises(ValueError, match="at least 3 points"):
        lasso_mask([(0, 0), (3, 3)], shape=(5, 5))
    with pytest.raises(ValueError, match="no area"):
        lasso_mask([(0, 0), (1, 1), (2, 2), (3, 3)], shape=(5, 5))
    with pytest.raises(ValueError, match="NaN"):
        lasso_mask([(0, 0), (np.nan, 1), (2, 2)], shape=(5, 5))
    with pytest.raises(ValueError, match="pairs"):
        lasso_mask([(0, 0, 1), (1, 1, 1), (2, 2, 2)], shape=(5, 5))


def test_region_mask_dispatch():
    box = region_mask("box", [(0, 0), (2, 2)], shape=(4, 4))
    np.testing.assert_array_equal(box, box_mask([(0, 0), (2, 2)], shape=(4, 4)))
    with pytest.raises(ValueError, match="unknown region kind"):
        region_mask("circle", [(0, 0), (2, 2)], shape=(4, 4))


def _image(seed: int = 0, shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def test_mean_and_black_fills_change_only_the_region():
    img = _image()
    before = img.copy()
    mask = box_mask([(5, 4), (20, 12)], shape=img.shape[:2])
    out = apply_fill(img, mask, fill="mean", mean=(0.485, 0.456, 0.406))
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out[mask], np.tile([124, 116, 104], (int(mask.sum()), 1)))
    np.testing.assert_array_equal(out[~mask], img[~mask])
    black = apply_fill(img, mask, fill="black")
    assert (black[mask] == 0).all()
    np.testing.assert_array_equal(black[~mask], img[~mask])


def test_mean_fill_normalizes_to_zero_for_the_default_model():
    # EfficientNet-Lite normalizes with mean 127/255: the filled pixels become exactly 0.
    mean = (127 / 255,) * 3
    std = (128 / 255,) * 3
    img = _image(1)
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[3:9, 4:30] = True
    out = apply_fill(img, mask, fill="mean", mean=mean)
    normalized = (out / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(normalized[mask], 0.0, atol=1e-12)


def test_blur_fill_is_the_blurred_image_inside_the_region():
    img = _image(2, (64, 64))
    mask = lasso_mask([(10, 10), (50, 12), (30, 55)], shape=img.shape[:2])
    out = apply_fill(img, mask, fill="blur", sigma=5.0)
    reference = cv2.GaussianBlur(img, (0, 0), sigmaX=5.0, sigmaY=5.0, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(out[mask], reference[mask])
    np.testing.assert_array_equal(out[~mask], img[~mask])
    # Strong: random noise is flattened towards its mean.
    assert out[mask].astype(float).std() < 0.3 * img[mask].astype(float).std()
    default = apply_fill(img, mask, fill="blur")  # default sigma: a twentieth of the side, >= 2
    assert default[mask].astype(float).std() < 0.3 * img[mask].astype(float).std()
    np.testing.assert_array_equal(default[~mask], img[~mask])


def test_fill_validation():
    img = _image()
    mask = np.zeros(img.shape[:2], dtype=bool)
    with pytest.raises(ValueError, match="unknown fill"):
        apply_fill(img, mask, fill="noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not match"):
        apply_fill(img, mask[:-1], fill="black")
    with pytest.raises(ValueError, match="bool"):
        apply_fill(img, mask.astype(np.uint8), fill="black")
    with pytest.raises(ValueError, match="uint8 RGB"):
        apply_fill(img.astype(np.float32), mask, fill="black")
    with pytest.raises(ValueError, match="mean"):
        apply_fill(img, mask, fill="mean", mean=(0.5, 0.5))
