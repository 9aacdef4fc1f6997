"""Box-aware augmentation ops against NumPy re-derivations and hand-computed crops."""
import matplotlib.colors
import numpy as np
import pytest
import tensorflow as tf

from adapt.datasets import augment as aug


def _rng_image(h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (h, w, 3)).astype(np.float32)


def test_flip_mirrors_pixels_and_boxes():
    image = _rng_image(6, 9)
    boxes = np.array([[0.1, 0.2, 0.5, 0.3], [0.0, 0.0, 1.0, 1.0], [0.4, 0.7, 0.9, 0.95]], np.float32)
    out_image, out_boxes = aug.flip_left_right(image, boxes)
    np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1, :])
    expected = np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], -1)
    np.testing.assert_allclose(out_boxes.numpy(), expected, atol=1e-7)
    # The object under a box stays under it: pixel column x maps to W - 1 - x.
    assert out_image.numpy()[2, 9 - 1 - 1, 0] == image[2, 1, 0]


def test_random_flip_is_seeded():
    image, boxes = _rng_image(4, 5), np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    always = aug.random_flip(image, boxes, tf.constant([1, 2]), 1.0)
    never = aug.random_flip(image, boxes, tf.constant([1, 2]), 0.0)
    np.testing.assert_array_equal(np.asarray(always[0]), image[:, ::-1])
    np.testing.assert_array_equal(np.asarray(never[0]), image)
    flipped = lambda s: bool(np.any(np.asarray(aug.random_flip(image, boxes, tf.constant([s, 0]), 0.5)[0]) != image))
    flips, again = [flipped(s) for s in range(40)], [flipped(s) for s in range(40)]
    assert flips == again and 5 < sum(flips) < 35


# Image 40 x 50 px, crop window top=10, left=5, height=20, width=30 (pixels y 10..30, x 5..35).
_H, _W, _WINDOW = 40, 50, (10, 5, 20, 30)
# Boxes in pixels (y0, x0, y1, x1) with their expected fate, derived by hand.
_PIXEL_BOXES = np.array([
    [12, 10, 20, 30],  # A: inside
    [8, 0, 16, 20],    # B: centre (12, 10) inside; visible 6 x 15 = 90 of 160 (0.56)
    [0, 0, 12, 10],    # C: centre (6, 5) outside; visible 2 x 5 = 10 of 120
    [5, 0, 25, 14],    # D: centre (15, 7) inside; visible 15 x 9 = 135 of 280 (0.48)
    [0, 10, 18, 20],   # E: centre (9, 15) outside; visible 8 x 10 = 80 of 180 (0.44)
], np.float32)
_CROPPED = np.array([  # (box - (10, 5, 10, 5)) / (20, 30, 20, 30), clipped to [0, 1]
    [2 / 20, 5 / 30, 10 / 20, 25 / 30],
    [0, 0, 6 / 20, 15 / 30],
    [0, 0, 2 / 20, 5 / 30],
    [0, 0, 15 / 20, 9 / 30],
    [0, 5 / 30, 8 / 20, 15 / 30],
], np.float32)


@pytest.mark.parametrize("rule,min_visible,kept", [
    ("center", 0.5, [True, True, False, True, False]),
    ("area", 0.5, [True, True, False, False, False]),
    ("area", 0.4, [True, True, False, True, True]),
])
def test_crop_boxes_by_hand(rule, min_visible, kept):
    image = _rng_image(_H, _W)
    boxes = _PIXEL_BOXES / np.array([_H, _W, _H, _W], np.float32)
    out_image, out_boxes, keep = aug.crop(image, boxes, tf.constant(_WINDOW), rule, min_visible)
    top, left, h, w = _WINDOW
    np.testing.assert_array_equal(out_image.numpy(), image[top:top + h, left:left + w])
    np.testing.assert_allclose(out_boxes.numpy(), _CROPPED, atol=1e-6)
    assert keep.numpy().tolist() == kept


def _np_iou(a, b):
    inter = (np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
             * np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None))
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return inter / (area(a) + area(b) - inter)


def test_sample_crop_window_meets_ssd_constraints():
    h, w = 60, 80
    boxes = np.array([[0.1, 0.1, 0.4, 0.3], [0.5, 0.6, 0.9, 0.95]], np.float32)
    cfg = aug.AugmentConfig(crop_min_ious=(0.5,), crop_scale=(0.3, 1.0), crop_aspect=(0.5, 2.0))
    cropped = 0
    for s in range(30):
        top, left, ch, cw = aug.sample_crop_window(boxes, h, w, tf.constant([s, 7]), cfg).numpy().tolist()
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        if (top, left, ch, cw) == (0, 0, h, w):
            continue
        cropped += 1
        assert 0.3 * h - 0.5 <= ch and 0.3 * w - 0.5 <= cw and 0.5 <= cw / ch <= 2.0
        window = np.array([top / h, left / w, (top + ch) / h, (left + cw) / w])
        cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        centre_in = (cy > window[0]) & (cy < window[2]) & (cx > window[1]) & (cx < window[3])
        assert np.any(centre_in & (_np_iou(window, boxes) >= 0.5 - 1e-6))
    assert cropped >= 10
    no_crop = aug.AugmentConfig(crop_min_ious=(None,))
    assert aug.sample_crop_window(boxes, h, w, tf.constant([0, 1]), no_crop).numpy().tolist() == [0, 0, h, w]
    no_boxes = np.zeros([0, 4], np.float32)
    assert aug.sample_crop_window(no_boxes, h, w, tf.constant([0, 1]), cfg).numpy().tolist() == [0, 0, h, w]


def _np_colour(x, brightness, contrast, saturation, hue):
    x = np.clip(x + brightness, 0, 1)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = np.clip((x - mean) * contrast + mean, 0, 1)
    hsv = matplotlib.colors.rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
    x = np.clip(matplotlib.colors.hsv_to_rgb(hsv), 0, 1)
    hsv = matplotlib.colors.rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + hue) % 1.0
    return np.clip(matplotlib.colors.hsv_to_rgb(hsv), 0, 1)


@pytest.mark.parametrize("factors", [(0.1, 1.3, 0.6, 0.05), (-0.2, 0.7, 1.4, -0.1), (0.0, 1.0, 1.0, 0.0)])
def test_adjust_colour_matches_numpy(factors):
    image = _rng_image(8, 8, seed=3)
    got = aug.adjust_colour(image, tf.constant(factors, tf.float32)).numpy()
    np.testing.assert_allclose(got, _np_colour(image, *factors), atol=2e-5)
    if factors == (0.0, 1.0, 1.0, 0.0):
        np.testing.assert_allclose(got, image, atol=2e-6)


def test_random_colour_jitter_range_identity_and_determinism():
    image = _rng_image(8, 8, seed=4)
    off = aug.AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    same = aug.random_colour_jitter(tf.constant(image), tf.constant([1, 1]), off)
    np.testing.assert_array_equal(same.numpy(), image)
    strong = aug.AugmentConfig(brightness=0.5, contrast=1.0, saturation=1.0, hue=0.5)
    outs = [aug.random_colour_jitter(image, tf.constant([s, 0]), strong).numpy() for s in range(10)]
    for out in outs:
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.abs(out - image).max() > 1e-3
    np.testing.assert_array_equal(outs[2], aug.random_colour_jitter(image, tf.constant([2, 0]), strong).numpy())
    factors = aug.jitter_factors(tf.constant([5, 5]), strong).numpy()
    assert abs(factors[0]) <= 0.5 and 0 <= factors[1] <= 2 and 0 <= factors[2] <= 2 and abs(factors[3]) <= 0.5


def test_letterbox_geometry_closed_form():
    nh, nw, top, left = (int(v) for v in aug.resize_geometry(20, 40, 32, 32, letterbox=True))
    assert (nh, nw, top, left) == (16, 32, 8, 0)  # scale min(32/20, 32/40) = 0.8
    nh, nw, top, left = (int(v) for v in aug.resize_geometry(30, 10, 24, 24, letterbox=True))
    assert (nh, nw, top, left) == (24, 8, 0, 8)  # scale 0.8 -> 24 x 8, centred
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.75, 1.0]], np.float32)
    placed = aug.place_boxes(boxes, 24, 8, 0, 8, 24, 24).numpy()
    expected = np.stack([boxes[:, 0], (8 + 8 * boxes[:, 1]) / 24, boxes[:, 2], (8 + 8 * boxes[:, 3]) / 24], -1)
    np.testing.assert_allclose(placed, expected, atol=1e-7)
    assert tuple(int(v) for v in aug.resize_geometry(30, 10, 24, 24, letterbox=False)) == (24, 24, 0, 0)


def test_config_validation():
    with pytest.raises(ValueError, match="box_keep"):
        aug.AugmentConfig(box_keep="corner")
    with pytest.raises(ValueError, match="hue"):
        aug.AugmentConfig(hue=0.7)


def _np_blur(image, sigma, radius):
    """Separable Gaussian blur with symmetric padding, in float64."""
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    rows = sum(t * padded[i:i + image.shape[0]] for i, t in enumerate(taps))
    return sum(t * rows[:, i:i + image.shape[1]] for i, t in enumerate(taps))


def test_gaussian_blur_matches_numpy():
    image = _rng_image(9, 12, seed=5)
    got = aug.gaussian_blur(tf.constant(image), tf.constant(1.3), 4).numpy()
    np.testing.assert_allclose(got, _np_blur(image, 1.3, 4), atol=1e-5)


@pytest.mark.parametrize("seed, fill", [(0, "mean"), (1, "uniform"), (2, "mean"), (3, "uniform")])
def test_random_erase_fills_one_rectangle_of_the_drawn_size(seed, fill):
    image = _rng_image(40, 50, seed=6)
    out = aug.random_erase(tf.constant(image), tf.constant([seed, 7]), 1.0, 0.05, 0.2, 0.3, 3.3, fill=fill).numpy()
    ys, xs = np.nonzero(np.any(out != image, axis=-1))
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    inside = np.zeros(image.shape[:2], bool)
    inside[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    np.testing.assert_array_equal(out[~inside], image[~inside])  # one rectangle changed, nothing else
    assert 0.05 * 2000 - 50 <= h * w <= 0.2 * 2000 + 50 and 0.3 / 1.5 <= h / w <= 3.3 * 1.5  # (pixel rounding)
    assert out.min() >= 0 and out.max() <= 1
    never = aug.random_erase(tf.constant(image), tf.constant([seed, 7]), 0.0, 0.05, 0.2, 0.3, 3.3).numpy()
    np.testing.assert_array_equal(never, image)


def test_erasing_a_dark_image_fills_with_its_own_mean_colour():
    """A night-like frame (mean about 0.07) with one lit object: the erased rectangle holds the frame's mean
    colour, per channel (NumPy), so it is never brighter than the frame it hides part of."""
    rng = np.random.default_rng(3)
    image = rng.uniform(0.0, 0.15, (48, 64, 3)).astype(np.float32)
    image[20:28, 30:40] = (0.9, 0.8, 0.3)
    out = aug.random_erase(tf.constant(image), tf.constant([5, 7]), 1.0, 0.05, 0.2, 0.3, 3.3).numpy()
    erased = np.any(out != image, axis=-1)
    assert 0.04 * erased.size <= erased.sum() <= 0.21 * erased.size
    np.testing.assert_allclose(out[erased], np.broadcast_to(image.mean((0, 1), dtype=np.float64), out[erased].shape),
                               rtol=1e-5)
    np.testing.assert_array_equal(out[~erased], image[~erased])
    with pytest.raises(ValueError, match="erase_fill 'noise'; valid choices: mean, uniform"):
        aug.StrongAugmentConfig(erase_fill="noise")


def test_strong_view_is_seeded_and_in_range():
    image = _rng_image(32, 32, seed=8)
    cfg = aug.StrongAugmentConfig()
    views = [aug.strong_view(tf.constant(image), tf.constant([s, 1]), cfg).numpy() for s in range(4)]
    np.testing.assert_array_equal(views[1], aug.strong_view(tf.constant(image), tf.constant([1, 1]), cfg).numpy())
    assert all(0 <= v.min() and v.max() <= 1 for v in views) and not np.array_equal(views[0], views[1])
    with pytest.raises(ValueError, match="erasing entry"):
        aug.StrongAugmentConfig(erasing=((0.5, 0.3, 0.2, 1.0, 2.0),))
