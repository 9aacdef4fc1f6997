"""PSNR / SSIM / Frechet distance against closed forms, a direct NumPy re-derivation, TensorFlow's
independent implementations (tf.image.psnr / tf.image.ssim) and scipy's sqrtm; the paired evaluation
and Inception features (random weights written to a file, as a user-supplied weights file would be)."""
import jax
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from adapt.evaluation import image_quality as iq
from adapt.evaluation import translation_eval


def _images(seed, shape=(3, 24, 20, 3)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_psnr_closed_form_and_tensorflow():
    x = _images(0) * 0.8
    np.testing.assert_allclose(iq.psnr(x, x + 0.1), 20.0, rtol=1e-5)       # MSE 0.01 -> 10 log10(1/0.01)
    np.testing.assert_allclose(iq.psnr(x * 255, x * 255 + 25.5, 255.0), 20.0, rtol=1e-5)
    assert np.all(np.isinf(iq.psnr(x, x)))
    y = _images(1)
    np.testing.assert_allclose(iq.psnr(x, y), tf.image.psnr(x, y, max_val=1.0).numpy(), rtol=1e-4)
    assert iq.psnr(x[0], y[0]).shape == (1,)  # a single [H, W, C] image is a batch of one


def _ssim_direct(x, y, size=11, sigma=1.5, k1=0.01, k2=0.03, data_range=1.0):
    """SSIM by its definition: weighted statistics in every fully-inside window, mean over windows and
    channels (Wang et al. 2004, population covariances)."""
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = []
    for c in range(x.shape[-1]):
        for i in range(x.shape[0] - size + 1):
            for j in range(x.shape[1] - size + 1):
                a, b = x[i:i + size, j:j + size, c], y[i:i + size, j:j + size, c]
                ma, mb = np.sum(w * a), np.sum(w * b)
                va, vb = np.sum(w * (a - ma) ** 2), np.sum(w * (b - mb) ** 2)
                cov = np.sum(w * (a - ma) * (b - mb))
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_definition_and_tensorflow():
    x = _images(2, (2, 14, 13, 3))
    y = np.clip(x + np.random.default_rng(3).normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    ours = iq.ssim(x, y)
    np.testing.assert_allclose(ours, [_ssim_direct(x[k], y[k]) for k in range(2)], rtol=1e-6)
    big_x, big_y = _images(4, (2, 32, 40, 3)), _images(5, (2, 32, 40, 3))
    big_y = (0.7 * big_x + 0.3 * big_y).astype(np.float32)
    tf_ssim = tf.image.ssim(big_x, big_y, max_val=1.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)
    np.testing.assert_allclose(iq.ssim(big_x, big_y), tf_ssim.numpy(), rtol=1e-4)
    np.testing.assert_allclose(iq.ssim(big_x, big_x), 1.0, rtol=1e-9)
    assert np.all(iq.ssim(big_x, big_y) < 1.0)
    with pytest.raises(ValueError, match='smaller than'):
        iq.ssim(x[:, :10], y[:, :10])


def test_frechet_distance_closed_forms_and_scipy():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    np.testing.assert_allclose(iq.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]), 4.0 + 1.0, rtol=1e-12)
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T, b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    np.testing.assert_allclose(iq.frechet_distance(m1, s1, m2, s2), expected, rtol=1e-8)
    np.testing.assert_allclose(iq.frechet_distance(m1, s1, m1, s1), 0.0, atol=1e-9)
    f, g = rng.normal(size=(40, 3)), rng.normal(1.0, 2.0, size=(30, 3))
    manual = iq.frechet_distance(f.mean(0), np.cov(f.T), g.mean(0), np.cov(g.T))
    np.testing.assert_allclose(iq.frechet_distance_of(f, g), manual, rtol=1e-10)
    # Fewer samples than dimensions: the nuclear-norm route equals the covariance route (and scipy).
    f, g = rng.normal(size=(12, 30)), rng.normal(0.5, 1.5, size=(9, 30))
    s1, s2 = np.cov(f.T), np.cov(g.T)
    expected = np.sum((f.mean(0) - g.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    np.testing.assert_allclose(iq.frechet_distance_of(f, g), expected, rtol=1e-6)
    np.testing.assert_allclose(iq.frechet_distance_of(f, g), iq.frechet_distance(f.mean(0), s1, g.mean(0), s2),
                               rtol=1e-8)
    np.testing.assert_allclose(iq.frechet_distance_of(f, f), 0.0, atol=1e-9)


def test_evaluate_paired_scores_raw_and_translated():
    rng = np.random.default_rng(7)
    day = [rng.random((4, 16, 16, 3)).astype(np.float32) for _ in range(2)]
    night = [(d * 0.2).astype(np.float32) for d in day]
    translate = lambda x: np.clip(x * 4.0, 0, 1)  # noqa: E731  (brightens: closer to the day images)
    m = translation_eval.evaluate_paired(translate, zip(day, night))
    d, n = np.concatenate(day), np.concatenate(night)
    assert m['num_images'] == 8
    np.testing.assert_allclose(m['psnr_raw'], np.mean(iq.psnr(n, d)), rtol=1e-6)
    np.testing.assert_allclose(m['psnr_translated'], np.mean(iq.psnr(translate(n), d)), rtol=1e-6)
    np.testing.assert_allclose(m['ssim_gain'], np.mean(iq.ssim(translate(n), d)) - np.mean(iq.ssim(n, d)), rtol=1e-6)
    assert m['psnr_gain'] > 5 and 'fd_raw' not in m
    table = translation_eval.format_table(m)
    assert f"{m['psnr_raw']:.2f}" in table and 'SSIM' in table


def test_backbone_frechet_distance_in_paired_evaluation():
    from adapt.models.frozen_features import random_features
    features = random_features('resnet18', 0.25, seed=0)
    rng = np.random.default_rng(8)
    day = rng.random((6, 32, 32, 3)).astype(np.float32)
    m = translation_eval.evaluate_paired(lambda x: day, [(day, day * 0.1)], features, 'C5')
    pool = translation_eval.pooled_features_fn(features, 'C5')
    np.testing.assert_allclose(m['fd_raw'], iq.frechet_distance_of(pool(day * 0.1), pool(day)), rtol=1e-5)
    np.testing.assert_allclose(m['fd_translated'], 0.0, atol=1e-6 * m['fd_raw'])   # identical feature sets
    assert 'not Inception FID' in m['fd_features']


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras 3 saving code, not ours
def test_inception_features_from_a_weights_file(tmp_path):
    import keras
    reference = keras.applications.InceptionV3(include_top=False, weights=None, pooling='avg',
                                               input_shape=(299, 299, 3))
    path = str(tmp_path / 'inception_notop.weights.h5')
    reference.save_weights(path)
    features = translation_eval.InceptionFeatures(path)
    images = _images(9, (2, 40, 40, 3))
    x = tf.image.resize(images, (299, 299), method='bilinear') * 2.0 - 1.0
    out = features(images)
    assert out.shape == (2, 2048)
    np.testing.assert_allclose(out, reference(x, training=False).numpy(), rtol=1e-4, atol=1e-5)
    m = translation_eval.evaluate_paired(lambda x: x, [(images, images * 0.5)], inception=features)
    np.testing.assert_allclose(m['fid_raw'], iq.frechet_distance_of(features(images * 0.5), out), rtol=1e-4)


def test_backbone_features_from_a_detector_workdir(tmp_path):
    """The loader asks the run's detector where its backbone lives (here an SSD's
    params['features']['backbone']): it must give the same features as the saved backbone."""
    from adapt.models.families import build_detector
    from adapt.models.frozen_features import random_features
    from adapt.run_models import detector_features
    from adapt.runs import RunError, write_run
    from adapt.training import Checkpointer
    from tests.tiny_config import tiny_config
    saved = random_features('resnet18', 0.125, levels=('C3', 'C4'), seed=3)
    config = tiny_config()
    config.ssd.model.backbone_kwargs = {}  # the standard ResNet-18 of random_features
    detector = build_detector(config, 3)
    shapes = jax.eval_shape(detector.init, jax.random.key(0))  # the layout, without compiling init
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    for collection in ('params', 'batch_stats'):
        variables = detector.with_backbone(variables, collection, saved.variables[collection])
    state = {'step': np.int32(7), 'params': {'detector': variables['params']},
             'batch_stats': variables['batch_stats']}
    write_run(str(tmp_path), 'detector', config, class_names=['a', 'b', 'c'])
    ckpt = Checkpointer(str(tmp_path / 'checkpoints'))
    ckpt.save(7, state)
    ckpt.close()
    loaded = detector_features(str(tmp_path), levels=('C3', 'C4'))
    assert 'step 7' in loaded.source
    images = _images(10, (2, 64, 64, 3))
    other = random_features('resnet18', 0.125, levels=('C3', 'C4'), seed=4)
    for level in ('C3', 'C4'):
        np.testing.assert_allclose(loaded(images)[level], saved(images)[level], rtol=1e-5, atol=1e-6)
        assert not np.allclose(other(images)[level], saved(images)[level])
    with pytest.raises(RunError, match='run.json'):
        detector_features(str(tmp_path / 'checkpoints'))
