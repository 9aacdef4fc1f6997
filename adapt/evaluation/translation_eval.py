"""Translation quality against ground truth on a paired split (night -> day), as a JSON-able dict + table.

For every paired scene the night render is translated to day and compared with the true day render:
PSNR and SSIM (adapt.evaluation.image_quality) of the translation, beside the same figures for the raw
night image (the do-nothing baseline); the gain is translated minus raw. Distribution distance: the
Frechet distance between global-average-pooled features of the true day images and of the translations
(and of the raw night images), on one of our own backbones (`FrozenFeatures`): NOT comparable with
published Inception FID. `InceptionFeatures` gives Inception FID features when the user supplies a
Keras InceptionV3 weights file (no download is possible here); with so few images it is biased upwards
(FID needs thousands of samples for 2048-d features), so compare it only between runs of equal size.
`evaluate_unit` scores the generator of a UNIT preset (experiments/configs/unit_*.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from adapt.datasets.tf_options import without_autotune
from adapt.evaluation.image_quality import frechet_distance_of, psnr, ssim
from adapt.models.unit import UNITConfig, make_translate_fn
from adapt.training.config import image_size

PAIRED_SOURCE = 'image_night'   # daynight_synth `paired`: Sequence holding the night render
PAIRED_TARGET = 'image'         # ... and the day render of the same scene


def paired_images(builder, split: str = 'paired', image_size=None, batch_size: int = 50, limit: int = 0):
    """Yields (target01, source01) NumPy batches [B, H, W, 3] in [0, 1]: (day, night) for daynight_synth.

    Images are resized (antialiased) to `image_size` (h, w) when given and different.
    """
    features = builder.info.features
    if PAIRED_SOURCE not in features:
        raise ValueError(f'{builder.info.full_name} has no {PAIRED_SOURCE!r} feature: not a paired split')
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if limit:
        ds = ds.take(limit)

    def prep(ex):
        pair = []
        for image in (ex[PAIRED_TARGET], ex[PAIRED_SOURCE][0]):
            image = tf.image.convert_image_dtype(image, tf.float32)
            if image_size is not None:
                image = tf.clip_by_value(tf.image.resize(image, image_size, antialias=True), 0.0, 1.0)
            pair.append(image)
        return tuple(pair)

    ds = without_autotune(ds.filter(lambda ex: tf.shape(ex[PAIRED_SOURCE])[0] > 0).map(prep).batch(batch_size))
    yield from ds.as_numpy_iterator()


def pooled_levels_fn(features, levels):
    """jit-ed images01 -> {level: [B, C]}: the global-average-pooled features of a FrozenFeatures at each of
    `levels` (one program for all of them)."""
    extractor = features.with_levels(tuple(levels))
    return jax.jit(lambda images01: {k: jnp.mean(v, axis=(1, 2)) for k, v in extractor(images01).items()})


def pooled_features_fn(features, level: str):
    """jit-ed images01 -> [B, C] global-average-pooled `level` features of a FrozenFeatures."""
    pooled = pooled_levels_fn(features, (level,))
    return lambda images01: pooled(images01)[level]


class InceptionFeatures:
    """2048-d pool features of a Keras InceptionV3 from a user-supplied weights file (FID's features).

    The file is keras.applications' `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5` (or any
    weights of that architecture without the top). Images are resized to 299x299 (bilinear) and scaled to
    [-1, 1]. FID computed with these ImageNet weights is close to, not identical with, the reference TF
    FID graph (pytorch-fid's `pt_inception-2015-12-05`).
    """

    def __init__(self, weights_path: str):
        import keras
        self.model = keras.applications.InceptionV3(include_top=False, weights=weights_path, pooling='avg',
                                                    input_shape=(299, 299, 3))

    def __call__(self, images01) -> np.ndarray:
        x = tf.image.resize(tf.convert_to_tensor(images01, tf.float32), (299, 299), method='bilinear')
        return np.asarray(self.model(x * 2.0 - 1.0, training=False))


def evaluate_paired(translate, pairs, features=None, fd_level: str = 'C5', inception=None) -> dict:
    """Scores `translate(source01) -> target01` on (target01, source01) batches from `paired_images`.

    Returns num_images, psnr_{raw,translated,gain} (dB), ssim_{raw,translated,gain} and, with `features`
    (a FrozenFeatures), fd_{raw,translated} on its `fd_level` features (+ fid_{raw,translated} with an
    `InceptionFeatures`). 'raw' compares the untranslated source image with the target.
    """
    pool = pooled_features_fn(features, fd_level) if features is not None else None
    scores = {k: [] for k in ('psnr_raw', 'psnr_translated', 'ssim_raw', 'ssim_translated')}
    feats = {k: [] for k in ('target', 'source', 'translated', 'i_target', 'i_source', 'i_translated')}
    for target, source in pairs:
        translated = np.asarray(translate(source), np.float32)
        for name, image in (('raw', source), ('translated', translated)):
            scores[f'psnr_{name}'].append(psnr(image, target))
            scores[f'ssim_{name}'].append(ssim(image, target))
        for name, image in (('target', target), ('source', source), ('translated', translated)):
            if pool is not None:
                feats[name].append(np.asarray(pool(image)))
            if inception is not None:
                feats[f'i_{name}'].append(inception(image))
    out = {k: float(np.mean(np.concatenate(v))) for k, v in scores.items()}
    out['num_images'] = int(sum(len(v) for v in scores['psnr_raw']))
    out['psnr_gain'] = out['psnr_translated'] - out['psnr_raw']
    out['ssim_gain'] = out['ssim_translated'] - out['ssim_raw']
    for prefix, key in (('fd', ''), ('fid', 'i_')):
        if feats[f'{key}target']:
            ref = np.concatenate(feats[f'{key}target'])
            for name in ('raw', 'translated'):
                other = np.concatenate(feats[f'{key}source' if name == 'raw' else f'{key}translated'])
                out[f'{prefix}_{name}'] = frechet_distance_of(other, ref)
    if features is not None:
        out['fd_features'] = f'{features.source}, {fd_level} global average pool (not Inception FID)'
    return out


def evaluate_unit(config, gen_params, eval_builder, fd_features=None, inception=None) -> dict:
    """Night -> day (b -> a) translation quality of a UNIT preset's generator on `config.eval_split` of
    `eval_builder`, at the training resolution, deterministic translations (`evaluate_paired`)."""
    translate = make_translate_fn(UNITConfig.from_mapping(config.model), 'b', 'a')
    pairs = paired_images(eval_builder, config.eval_split, image_size(config), config.eval_batch_size,
                          config.eval_examples)
    return evaluate_paired(lambda x: translate(gen_params, x), pairs, fd_features, config.fd_level, inception)


def format_table(metrics: dict, source: str = 'night', target: str = 'day') -> str:
    """A Markdown table: metric | raw source vs target | translated vs target | gain."""
    rows = [f'| {source} -> {target} ({metrics["num_images"]} images) | raw {source} | translated | gain |',
            '|---|---|---|---|',
            f'| PSNR (dB, higher is better) | {metrics["psnr_raw"]:.2f} | {metrics["psnr_translated"]:.2f} | '
            f'{metrics["psnr_gain"]:+.2f} |',
            f'| SSIM (higher is better) | {metrics["ssim_raw"]:.4f} | {metrics["ssim_translated"]:.4f} | '
            f'{metrics["ssim_gain"]:+.4f} |']
    for prefix, label in (('fd', 'Frechet distance, own backbone'), ('fid', 'Inception FID')):
        if f'{prefix}_raw' in metrics:
            raw, tr = metrics[f'{prefix}_raw'], metrics[f'{prefix}_translated']
            rows.append(f'| {label} (lower is better) | {raw:.4g} | {tr:.4g} | {tr - raw:+.4g} |')
    return '\n'.join(rows)
