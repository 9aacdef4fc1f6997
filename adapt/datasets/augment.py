"""Box-aware augmentation ops for one example, as TF graph ops with explicit stateless seeds.

Images are float32 [H, W, 3] in [0, 1]; boxes are float32 [N, 4] normalised yxyx. Every random op takes a
`seed` (shape [2] int) and uses only `tf.random.stateless_*`, so an input stream is a pure function of the
seeds the pipeline derives from (seed, epoch, example index).
"""
import dataclasses
import math
from typing import Optional, Tuple

import tensorflow as tf

BOX_KEEP_RULES = ("center", "area")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (defaults follow SSD / torchvision `RandomIoUCrop`).

    Random crop (SSD): one minimum IoU is drawn from `crop_min_ious` (None = keep the whole image); up to
    `crop_trials` windows with sides in `crop_scale` of the image sides and width/height (pixels) in
    `crop_aspect` are drawn at once; the first window in which some box is kept (see below) with IoU >= the
    minimum is taken, else the whole image. Boxes are clipped to the window; a box is kept when
    `box_keep='center'`: its centre lies strictly inside the window, or `box_keep='area'`: at least
    `min_visible` of its area lies inside. Boxes with no area left are always dropped. Without boxes (an
    unlabelled image: its labels must not steer its augmentation) the crop is box-free: a drawn minimum
    other than None takes the first window of the allowed aspect.
    Colour jitter, in this order, each clipped to [0, 1]: brightness + U(-b, b), contrast x U(1-c, 1+c),
    saturation x U(1-s, 1+s), hue + U(-h, h) (hue in turns, h <= 0.5). A strength of 0 turns that op off.
    """

    flip_prob: float = 0.5
    crop_min_ious: Tuple[Optional[float], ...] = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
    crop_scale: Tuple[float, float] = (0.3, 1.0)
    crop_aspect: Tuple[float, float] = (0.5, 2.0)
    crop_trials: int = 50
    box_keep: str = "center"
    min_visible: float = 0.5
    brightness: float = 32.0 / 255.0
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 18.0 / 360.0

    def __post_init__(self):
        if self.box_keep not in BOX_KEEP_RULES:
            raise ValueError(f"box_keep={self.box_keep!r}; valid: {', '.join(BOX_KEEP_RULES)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue} must lie in [0, 0.5]")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale={self.crop_scale} must satisfy 0 < lo <= hi <= 1")
        if min(self.contrast, self.saturation, self.brightness) < 0 or max(self.contrast, self.saturation) > 1:
            raise ValueError("brightness must be >= 0; contrast and saturation must lie in [0, 1]")

    @property
    def crops(self) -> bool:
        return any(t is not None for t in self.crop_min_ious)

    @property
    def jitters(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))


NO_AUGMENT = AugmentConfig(flip_prob=0.0, crop_min_ious=(None,), brightness=0.0, contrast=0.0,
                           saturation=0.0, hue=0.0)


def flip_left_right(image, boxes):
    """Mirror the image horizontally; x -> 1 - x for the boxes (xmin and xmax swap roles)."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.reverse(image, axis=[1]), tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def random_flip(image, boxes, seed, prob):
    flip = tf.random.stateless_uniform([], seed) < prob
    return tf.cond(flip, lambda: flip_left_right(image, boxes), lambda: (image, boxes))


def _iou(a, b):
    """IoU [A, B] of yxyx boxes; the TF twin of adapt.boxes.pairwise_iou, for use inside tf.data."""
    a, b = a[:, None, :], b[None, :, :]
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = inter_h * inter_w
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return tf.math.divide_no_nan(inter, area(a) + area(b) - inter)


def boxes_in_window(boxes, windows, box_keep="center", min_visible=0.5):
    """Boxes re-expressed in each crop window, clipped to it, and which of them are kept.

    boxes [N, 4] and windows [..., 4] (normalised yxyx in the full image).
    Returns (clipped boxes [..., N, 4] in window coordinates, keep [..., N] bool).
    """
    w = windows[..., None, :]
    y0, x0, y1, x1 = w[..., 0], w[..., 1], w[..., 2], w[..., 3]
    scale = tf.stack([y1 - y0, x1 - x0, y1 - y0, x1 - x0], axis=-1)
    shifted = (boxes - tf.stack([y0, x0, y0, x0], axis=-1)) / scale
    clipped = tf.clip_by_value(shifted, 0.0, 1.0)
    has_area = (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])
    if box_keep == "center":
        cy = (boxes[:, 0] + boxes[:, 2]) / 2
        cx = (boxes[:, 1] + boxes[:, 3]) / 2
        keep = (cy > y0) & (cy < y1) & (cx > x0) & (cx < x1)
    elif box_keep == "area":
        inside = (clipped[..., 2] - clipped[..., 0]) * (clipped[..., 3] - clipped[..., 1])  # in window units
        visible = inside * scale[..., 0] * scale[..., 1]
        keep = visible >= min_visible * (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    else:
        raise ValueError(f"box_keep={box_keep!r}; valid: {', '.join(BOX_KEEP_RULES)}")
    return clipped, keep & has_area


def sample_crop_window(boxes, height, width, seed, cfg: AugmentConfig):
    """SSD random crop window as int32 pixels [top, left, crop_height, crop_width] (see AugmentConfig);
    `boxes` None: the box-free crop (the same draws, no box constraint).

    Candidates are snapped to whole pixels before they are tested, so the constraints hold for the exact
    window that is cut out.
    """
    option_seed, box_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    thresholds = tf.constant([2.0 if t is None else t for t in cfg.crop_min_ious], tf.float32)  # 2.0: never met
    pick = tf.random.stateless_uniform([], option_seed, maxval=len(cfg.crop_min_ious), dtype=tf.int32)
    threshold = thresholds[pick]
    u = tf.random.stateless_uniform([cfg.crop_trials, 4], box_seed)
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    lo, hi = cfg.crop_scale
    ch = tf.clip_by_value(tf.round((lo + (hi - lo) * u[:, 0]) * hf), 1.0, hf)
    cw = tf.clip_by_value(tf.round((lo + (hi - lo) * u[:, 1]) * wf), 1.0, wf)
    top = tf.minimum(tf.floor(u[:, 2] * (hf - ch + 1.0)), hf - ch)
    left = tf.minimum(tf.floor(u[:, 3] * (wf - cw + 1.0)), wf - cw)
    windows = tf.stack([top / hf, left / wf, (top + ch) / hf, (left + cw) / wf], axis=-1)
    aspect_ok = (cw / ch >= cfg.crop_aspect[0]) & (cw / ch <= cfg.crop_aspect[1])
    if boxes is None:
        valid = aspect_ok & (threshold <= 1.0)
    else:
        _, keep = boxes_in_window(boxes, windows, cfg.box_keep, cfg.min_visible)
        valid = aspect_ok & tf.reduce_any(keep & (_iou(windows, boxes) >= threshold), axis=1)
    first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
    chosen = tf.cast(tf.stack([top, left, ch, cw], axis=-1)[first], tf.int32)
    full = tf.stack([0, 0, tf.cast(height, tf.int32), tf.cast(width, tf.int32)])
    return tf.where(tf.reduce_any(valid), chosen, full)


def crop(image, boxes, window_px, box_keep="center", min_visible=0.5):
    """Cut window_px = [top, left, h, w] out of the image; returns (image, boxes in the crop, keep [N])."""
    image = tf.convert_to_tensor(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    top, left, h, w = tf.unstack(tf.cast(window_px, tf.float32))
    window = tf.stack([top / shape[0], left / shape[1], (top + h) / shape[0], (left + w) / shape[1]])
    new_boxes, keep = boxes_in_window(boxes, window, box_keep, min_visible)
    t, l, hh, ww = tf.unstack(window_px)
    return image[t:t + hh, l:l + ww, :], new_boxes, keep


def random_crop(image, boxes, seed, cfg: AugmentConfig):
    """(image, boxes, keep) of `sample_crop_window`'s crop; `boxes` None: the box-free crop of the image alone
    (then (image, None, None))."""
    shape = tf.shape(image)
    window_px = sample_crop_window(boxes, shape[0], shape[1], seed, cfg)
    if boxes is None:
        top, left, h, w = tf.unstack(window_px)
        return image[top:top + h, left:left + w, :], None, None
    return crop(image, boxes, window_px, cfg.box_keep, cfg.min_visible)


def jitter_factors(seed, cfg: AugmentConfig):
    """[brightness delta, contrast factor, saturation factor, hue delta] drawn uniformly (see AugmentConfig)."""
    u = tf.random.stateless_uniform([4], seed, minval=-1.0, maxval=1.0)
    return tf.stack([cfg.brightness * u[0], 1.0 + cfg.contrast * u[1], 1.0 + cfg.saturation * u[2], cfg.hue * u[3]])


def adjust_colour(image, factors):
    """Apply jitter_factors in a fixed order, clipping to [0, 1] after each step."""
    clip = lambda x: tf.clip_by_value(x, 0.0, 1.0)
    image = clip(tf.image.adjust_brightness(image, factors[0]))
    image = clip(tf.image.adjust_contrast(image, factors[1]))
    image = clip(tf.image.adjust_saturation(image, factors[2]))
    return clip(tf.image.adjust_hue(image, factors[3]))


def random_colour_jitter(image, seed, cfg: AugmentConfig):
    return adjust_colour(image, jitter_factors(seed, cfg)) if cfg.jitters else image


def resize_geometry(height, width, target_h: int, target_w: int, letterbox: bool):
    """(new_h, new_w, top, left) int32 placing an image of (height, width) on a target canvas.

    Stretch: fill the canvas. Letterbox: largest aspect-preserving size that fits, centred; the rest is padding.
    """
    if not letterbox:
        return tf.constant(target_h), tf.constant(target_w), tf.constant(0), tf.constant(0)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    s = tf.minimum(target_h / h, target_w / w)
    nh = tf.clip_by_value(tf.cast(tf.round(h * s), tf.int32), 1, target_h)
    nw = tf.clip_by_value(tf.cast(tf.round(w * s), tf.int32), 1, target_w)
    return nh, nw, (target_h - nh) // 2, (target_w - nw) // 2


def place_boxes(boxes, new_h, new_w, top, left, target_h: int, target_w: int):
    """Normalised boxes of an image resized to (new_h, new_w) and pasted at (top, left) on the canvas."""
    f = lambda v: tf.cast(v, tf.float32)
    scale = tf.stack([f(new_h) / target_h, f(new_w) / target_w] * 2)
    offset = tf.stack([f(top) / target_h, f(left) / target_w] * 2)
    return boxes * scale + offset


def pad_to_canvas(image, top, left, target_h: int, target_w: int, pad_value: float):
    shape = tf.shape(image)
    paddings = [[top, target_h - shape[0] - top], [left, target_w - shape[1] - left], [0, 0]]
    image = tf.pad(image, paddings, constant_values=pad_value)
    return tf.ensure_shape(image, [target_h, target_w, 3])


# ------------------------------------------------------------------------------------ strong view
ERASE_FILLS = ('mean', 'uniform')


@dataclasses.dataclass(frozen=True)
class StrongAugmentConfig:
    """The strong view of self-training (Unbiased / Adaptive Teacher's torchvision recipe), photometric only
    and drawn on the weak view's pixels, so both views keep one geometry (the same boxes).

    With `jitter_prob`: colour jitter as torchvision's ColorJitter in a fixed order: brightness x U(1-b, 1+b),
    then contrast, saturation and hue as AugmentConfig's. With `greyscale_prob`: greyscale. With `blur_prob`: a
    Gaussian blur, sigma ~ U(blur_sigma) pixels. Then every `erasing` entry (p, min_area, max_area,
    min_aspect, max_aspect) is torchvision's RandomErasing(p, scale, ratio): up to 10 draws of an area fraction
    and a height/width aspect (log-uniform); the first that fits is filled as `erase_fill` says: 'mean', the
    image's own mean colour (what is erased is hidden without adding anything brighter than the frame: on a
    night frame of mean 0.1, U(0, 1) noise of mean 0.5 is the brightest thing in it), or 'uniform', U(0, 1)
    noise (torchvision's value='random').
    """

    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    greyscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    erasing: Tuple[Tuple[float, float, float, float, float], ...] = (
        (0.7, 0.05, 0.2, 0.3, 3.3), (0.5, 0.02, 0.2, 0.1, 6.0), (0.3, 0.02, 0.2, 0.05, 8.0))
    erase_fill: str = 'mean'

    def __post_init__(self):
        if self.erase_fill not in ERASE_FILLS:
            raise ValueError(f"erase_fill {self.erase_fill!r}; valid choices: {', '.join(ERASE_FILLS)}")
        if not (0.0 <= min(self.brightness, self.contrast, self.saturation) <= max(
                self.brightness, self.contrast, self.saturation) <= 1.0 and 0.0 <= self.hue <= 0.5):
            raise ValueError("strong brightness, contrast and saturation must lie in [0, 1], hue in [0, 0.5]")
        probs = [self.jitter_prob, self.greyscale_prob, self.blur_prob] + [e[0] for e in self.erasing]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ValueError(f"strong augmentation probabilities {probs} must lie in [0, 1]")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma={self.blur_sigma} must satisfy 0 < lo <= hi")
        for e in self.erasing:
            if len(e) != 5 or not (0.0 < e[1] <= e[2] <= 1.0 and 0.0 < e[3] <= e[4]):
                raise ValueError(f"erasing entry {e} must be (p, min_area, max_area, min_aspect, max_aspect) "
                                 "with 0 < min_area <= max_area <= 1 and 0 < min_aspect <= max_aspect")


def greyscale(image):
    """ITU-R 601 luma (tf.image.rgb_to_grayscale) in all three channels."""
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def gaussian_blur(image, sigma, radius: int):
    """Separable Gaussian blur of [H, W, 3] with a (2 radius + 1)-tap kernel, symmetric padding."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-0.5 * tf.square(x / sigma))
    taps /= tf.reduce_sum(taps)
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")[None]
    rows = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, tf.reshape(rows, [1, -1, 3, 1]), [1, 1, 1, 1], "VALID")
    return out[0]


def random_erase(image, seed, prob, min_area, max_area, min_aspect, max_aspect, trials: int = 10, fill='mean'):
    """torchvision's RandomErasing(prob, (min_area, max_area), (min_aspect, max_aspect)), the rectangle filled
    with the image's mean colour (`fill` 'mean') or U(0, 1) noise ('uniform': value='random')."""
    coin_seed, box_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    u = tf.random.stateless_uniform([trials, 4], box_seed)
    area = (min_area + (max_area - min_area) * u[:, 0]) * h * w
    log_lo, log_hi = math.log(min_aspect), math.log(max_aspect)
    aspect = tf.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    eh, ew = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
    fits = (eh >= 1.0) & (ew >= 1.0) & (eh < h) & (ew < w)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    eh, ew = eh[first], ew[first]
    top, left = tf.floor(u[first, 2] * (h - eh + 1.0)), tf.floor(u[first, 3] * (w - ew + 1.0))
    on = (tf.random.stateless_uniform([], coin_seed) < prob) & tf.reduce_any(fits)
    ys, xs = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = (ys >= top) & (ys < top + eh) & (xs >= left) & (xs < left + ew) & on
    if fill == 'mean':
        patch = tf.broadcast_to(tf.reduce_mean(image, axis=[0, 1]), shape)
    else:
        patch = tf.random.stateless_uniform(shape, noise_seed)
    return tf.where(inside[..., None], patch, image)


def strong_view(image, seed, cfg: StrongAugmentConfig):
    """The strong view of a weak-view image [H, W, 3] in [0, 1] (see StrongAugmentConfig)."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 3 + len(cfg.erasing)))
    coins = tf.random.stateless_uniform([3], seeds[0])
    factors = jitter_factors(seeds[1], cfg)
    jitter = lambda: adjust_colour(tf.clip_by_value(image * (1.0 + factors[0]), 0.0, 1.0),  # noqa: E731
                                   tf.concat([[0.0], factors[1:]], 0))
    image = tf.cond(coins[0] < cfg.jitter_prob, jitter, lambda: image)
    image = tf.cond(coins[1] < cfg.greyscale_prob, lambda: greyscale(image), lambda: image)
    lo, hi = cfg.blur_sigma
    sigma = lo + (hi - lo) * tf.random.stateless_uniform([], seeds[2])
    image = tf.cond(coins[2] < cfg.blur_prob, lambda: gaussian_blur(image, sigma, math.ceil(3 * hi)), lambda: image)
    for entry, erase_seed in zip(cfg.erasing, seeds[3:]):
        image = random_erase(image, erase_seed, *entry, fill=cfg.erase_fill)
    return image
