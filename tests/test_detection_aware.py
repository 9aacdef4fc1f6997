"""Detection-aware UNIT training: the semantic-consistency and labelled-cycle terms equal hand computations,
no gradient reaches the frozen detector, crops are windows of the frames, and a translation run with the
terms on resumes bit-identically and takes the same steps on 1 and 4 devices."""
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))
import unit_tiny  # noqa: E402

from adapt.losses.detection_aware import labelled_cycle, semantic_consistency  # noqa: E402
from adapt.trainers import unit  # noqa: E402
from adapt.trainers.unit_judge import frozen_detector  # noqa: E402
from adapt.trainers.unit_step import crop, paste  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LinearDetector:
    """A stand-in detector: class logits = a linear map of each 2x2 pixel block (4 'anchors' on 4x4 images);
    its loss is a closed form of the outputs and labels."""
    kind: str

    def apply(self, variables, images, train=False, labels=None):
        b = images.shape[0]
        blocks = images.reshape(b, 2, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 4, 12)
        return {'cls_logits': blocks @ variables['w']}, {}, {}

    def dense_scores(self, outputs):
        return outputs['cls_logits'], self.kind

    def loss(self, outputs, batch, axis_name=None, key=None):
        value = jnp.mean((outputs['cls_logits'][:, :, 0] - batch['boxes'][:, :, 0]) ** 2 * batch['mask'])
        return value, {'loss': value}


def _logits(w, images):
    b = images.shape[0]
    blocks = images.reshape(b, 2, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 4, 12)
    return np.einsum('bnk,kc->bnc', blocks.astype(np.float64), w.astype(np.float64))


@pytest.mark.parametrize('kind', ['softmax', 'sigmoid'])
def test_semantic_consistency_equals_hand_kl_and_trains_only_the_images(kind):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 3)).astype(np.float32)
    x, y = rng.random((2, 4, 4, 3), np.float32), rng.random((2, 4, 4, 3), np.float32)
    t, s = _logits(w, x), _logits(w, y)
    if kind == 'softmax':
        p = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
        q = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
        expected = np.mean(np.sum(p * np.log(p / q), -1), axis=1)   # per image: mean over the 4 positions
    else:
        p, q = 1 / (1 + np.exp(-t)), 1 / (1 + np.exp(-s))
        expected = np.mean(np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), -1), axis=1)
    det = LinearDetector(kind)
    got = semantic_consistency(det, {'w': w}, x, y)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    grad_w, grad_y = jax.grad(lambda v, im: semantic_consistency(det, v, x, im).sum(), argnums=(0, 1))({'w': w}, y)
    assert not np.any(grad_w['w'])               # the detector is frozen
    assert np.abs(grad_y).max() > 1e-4           # the translation (the generator's output) is trained


def test_labelled_cycle_equals_hand_loss_and_trains_only_the_images():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(12, 2)).astype(np.float32)
    cycled = rng.random((2, 4, 4, 3), np.float32)
    labels = {'boxes': rng.random((2, 4, 4), np.float32), 'labels': np.zeros((2, 4), np.int32),
              'mask': np.array([[1, 1, 0, 0], [1, 0, 1, 1]], np.float32)}
    expected = np.mean((_logits(w, cycled)[:, :, 0] - labels['boxes'][:, :, 0]) ** 2 * labels['mask'])
    det = LinearDetector('softmax')
    loss, _ = labelled_cycle(det, {'w': w}, cycled, labels)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    grad_w, grad_x = jax.grad(lambda v, im: labelled_cycle(det, v, im, labels)[0], argnums=(0, 1))({'w': w}, cycled)
    assert not np.any(grad_w['w']) and np.abs(grad_x).max() > 1e-4


def test_crop_and_paste_are_windows_of_the_frames():
    rng = np.random.default_rng(2)
    images = rng.random((3, 10, 12, 3), np.float32)
    offsets = np.array([[0, 0], [2, 5], [6, 8]], np.int32)
    crops = np.asarray(crop(images, offsets, 4))
    for i, (top, left) in enumerate(offsets):
        np.testing.assert_array_equal(crops[i], images[i, top:top + 4, left:left + 4])
    patches = rng.random((3, 4, 4, 3), np.float32)
    pasted = np.asarray(paste(images, patches, offsets))
    for i, (top, left) in enumerate(offsets):
        expected = images[i].copy()
        expected[top:top + 4, left:left + 4] = patches[i]
        np.testing.assert_array_equal(pasted[i], expected)


# ------------------------------------------------------------------------- training with the terms on
WEIGHTS = {'semantic': 10.0, 'labelled_cycle': 1.0}


def _config(num_steps):
    cfg = unit_tiny.config(image_size=32, crop_size=16, num_steps=num_steps, dataset_a='daynight_synth/tiny',
                           dataset_b='daynight_synth/tiny', max_boxes=8, checkpoint_every=2, log_every=1,
                           image_every=0, shuffle_buffer=16, batch_size=4)
    cfg.loss.weights.update(WEIGHTS)
    return cfg


def _train(workdir, num_steps, detector, builder, mesh=None, lines=None):
    state = unit.Trainer(_config(num_steps), detector=detector).train(
        builder, builder, str(workdir), mesh=mesh, print_fn=(lines if lines is not None else []).append)
    return jax.device_get(state)


def test_translation_with_detection_terms_resumes_exactly_and_matches_one_device(env, source_run, tmp_path):
    """The tiny day detector of `source_run` (32 px) judges a tiny UNIT trained on 16 px windows of 32 px
    day / night frames, with day labels. A run stopped after its step-2 checkpoint and started again
    reaches the uninterrupted run's state bit for bit (crop windows, noise and sampling are keyed by the
    step; the data position is checkpointed): the stopped run is a copy of the whole one without its
    last (step-3) checkpoint (SIGKILL at any point of the loop: tests/test_training_resume.py). 1 device
    takes the same steps as 4."""
    import shutil

    import tensorflow_datasets as tfds

    import adapt.datasets  # noqa: F401
    from adapt.training import make_mesh
    builder = tfds.builder('daynight_synth/tiny', data_dir=env[1])
    detector = frozen_detector(source_run[0])
    before = jax.tree.map(np.copy, detector.variables)
    whole = _train(tmp_path / 'whole', 3, detector, builder)
    shutil.copytree(tmp_path / 'whole', tmp_path / 'stopped')
    shutil.rmtree(tmp_path / 'stopped' / 'checkpoints' / '3')
    lines = []
    resumed = _train(tmp_path / 'stopped', 3, detector, builder, lines=lines)
    assert any('resumed from' in line and 'step 2' in line for line in lines), lines
    assert int(whole.step) == int(resumed.step) == 3
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    one = _train(tmp_path / 'one', 3, detector, builder, mesh=make_mesh(1))
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(whole.params)[0], jax.tree.leaves(one.params)):
        scale = max(np.abs(a).max(), 1e-6)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-4 * scale, err_msg=jax.tree_util.keystr(path))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(detector.variables)):
        np.testing.assert_array_equal(a, b)  # the judge is never trained
    import json
    logged = [json.loads(line) for line in open(tmp_path / 'whole' / 'metrics.jsonl')]
    assert [row['step'] for row in logged] == [1, 2, 3]
    for row in logged:  # the terms were on: the labelled cycle is the detector's loss, far from zero
        assert row['g_semantic_a'] > 0 and row['g_semantic_b'] > 0 and row['g_labelled_cycle_a'] > 0.1, row
