"""UNIT training: 4 devices == 1 device, the step's objectives equal a host recomputation (noise, alternating
order), the two-domain data iterator resumes exactly, and a NaN stops train_unit cleanly (exit 1) with the
last good checkpoint intact."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))
import unit_tiny  # noqa: E402

from adapt.losses.gan import unit_discriminator_loss, unit_generator_loss  # noqa: E402
from adapt.methods import translation  # noqa: E402
from adapt.models.frozen_features import random_features  # noqa: E402
from adapt.models.unit import UNIT, Discriminators, UNITConfig  # noqa: E402
from adapt.training import Checkpointer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_close(a, b, rtol=2e-4):
    """Leaf-wise closeness relative to each leaf's scale (Adam steps of ~lr on O(1) parameters)."""
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.abs(x).max(), np.abs(y).max(), 1e-6)
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale, err_msg=jax.tree_util.keystr(path))


# The full objective, with the optional feature loss on (a frozen, randomly initialised backbone of ours:
# a width-0.125 ResNet-10, the smallest that has the levels, since its layers are compiled into each step).
WEIGHTS = {'feature': 0.5}
FEATURES = random_features('resnet18', 0.125, levels=('C2', 'C3'), seed=0,
                           backbone_kwargs={'stage_sizes': (1, 1, 1, 1)})


@pytest.fixture(scope='module')
def runs():
    cfg = unit_tiny.config()
    batches = [unit_tiny.batch(0), unit_tiny.batch(1)]
    start = jax.device_get(translation.init_state(cfg))
    return cfg, batches, start, {n: unit_tiny.run_steps(cfg, batches, n, state=start, weights=WEIGHTS,
                                                        features=FEATURES) for n in (1, 4)}


def test_four_devices_equal_one_device(runs):
    _, _, start, results = runs
    (one, m1), (four, m4) = results[1], results[4]
    assert int(one.step) == int(four.step) == 2
    _assert_close(one.params, four.params)
    _assert_close(one.opt_state, four.opt_state)
    _assert_close(m1, m4, rtol=1e-4)
    moved = np.abs(four.params['gen']['enc_shared']['res0_0']['conv']['kernel']
                   - start.params['gen']['enc_shared']['res0_0']['conv']['kernel']).max()
    assert moved > 1e-4  # the steps really trained (equality alone would prove little)


def test_step_objectives_equal_host_recomputation(runs):
    """Step 1 on 4 devices: the critics' loss on the initial parameters, and the generator's loss
    against the UPDATED critics, with the noise the step draws per example (fold_in(key, index))."""
    cfg_dict, batches, start, results = runs
    (after, metrics) = results[4]
    cfg = UNITConfig.from_mapping(cfg_dict.model)
    key = jax.random.fold_in(jnp.asarray(start.rng), 0)     # the engine's per-step key at step 0
    b = batches[0]['a'].shape[0]
    keys = [jax.random.fold_in(key, i) for i in range(b)] + [jax.random.fold_in(jax.random.fold_in(key, 1), i)
                                                               for i in range(b)]
    shape = translation.latent_shape(cfg, (16, 16))
    draws = jnp.stack([jax.random.normal(k, (2, *shape)) for k in keys])
    x_a, x_b = batches[0]['a'] * 2 - 1, batches[0]['b'] * 2 - 1
    fast = dict(compiler_options=unit_tiny.FAST_COMPILE)
    out = jax.jit(lambda p: translation.generate(UNIT(cfg), p, x_a, x_b, draws[:, 0], draws[:, 1]),
                  **fast)(start.params['gen'])
    critics = jax.jit(lambda p, x, d: Discriminators(cfg).apply({'params': p}, x, d), static_argnums=2, **fast)
    d_total, _ = unit_discriminator_loss({'d_real_a': critics(start.params['disc'], out['x_a'], 'a'),
                                          'd_ba': critics(start.params['disc'], out['x_ba'], 'a'),
                                          'd_real_b': critics(start.params['disc'], out['x_b'], 'b'),
                                          'd_ab': critics(start.params['disc'], out['x_ab'], 'b')})
    # the critics after step 1: re-run step 1 alone (a 1-step run from the same start)
    disc1 = unit_tiny.run_steps(cfg_dict, batches[:1], 1, ('disc',), state=start)[0].params['disc']
    features = jax.jit(lambda x: FEATURES((x + 1) / 2), **fast)
    g_total, g_metrics = unit_generator_loss(
        {**out, 'd_ba': critics(disc1, out['x_ba'], 'a'), 'd_ab': critics(disc1, out['x_ab'], 'b'),
         'f_a': features(out['x_a']), 'f_b': features(out['x_b']), 'f_ab': features(out['x_ab']),
         'f_ba': features(out['x_ba'])}, WEIGHTS)
    np.testing.assert_allclose(metrics[0]['d_loss'], d_total, rtol=1e-4)
    np.testing.assert_allclose(metrics[0]['g_loss'], g_total, rtol=1e-4)
    for name in ('g_gan_a', 'g_cycle_b', 'g_feature_a', 'g_feature_b'):
        np.testing.assert_allclose(metrics[0][name], g_metrics[name], rtol=1e-4, err_msg=name)
    assert int(after.step) == 2


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('unit_train')
    return root, unit_tiny.build_tiny(root / 'tfds')


def test_two_domain_iterator_resizes_and_resumes_exactly(tiny_data):
    _, builder = tiny_data
    cfg = unit_tiny.config(batch_size=4, flip_prob=0.5)
    it = translation.make_data_iterator(cfg, builder, builder)
    first = next(it)
    assert first['a'].shape == first['b'].shape == (4, 16, 16, 3)   # 64 px renders resized to 16 px
    assert 0.0 <= first['a'].min() and first['a'].max() <= 1.0
    assert not np.array_equal(first['a'], first['b'])               # day and night, not one stream twice
    position = it.state()
    later = [next(it) for _ in range(3)]                             # 4 images per split: crosses epochs
    resumed = translation.make_data_iterator(cfg, builder, builder)
    resumed.restore(json.loads(json.dumps(position)))                # as checkpointed (JSON)
    for expected in later:
        got = next(resumed)
        np.testing.assert_array_equal(got['a'], expected['a'])
        np.testing.assert_array_equal(got['b'], expected['b'])
    it.close()
    resumed.close()


def test_nan_stops_cleanly_with_last_good_checkpoint(tiny_data):
    """From step 4 on the learning rate is multiplied by 1e30 (a real divergence, via the step schedule):
    train_unit must stop at the first non-finite value, say so on one line, exit 1, and keep step 3."""
    root, _ = tiny_data
    workdir = root / 'nan_run'
    flags = unit_tiny.cli_flags(workdir, root / 'tfds', num_steps=8, **{'optimizer.boundaries': '(3,)',
                                                                       'optimizer.decay_factor': 1e30})
    result = subprocess.run([sys.executable, '-m', 'experiments.train_unit', *flags], cwd=ROOT,
                            env=unit_tiny.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: non-finite value at step 4') and 'last good checkpoint: step 3' in last, last
    ckpt = Checkpointer(str(workdir / 'checkpoints'))
    try:
        assert ckpt.all_steps() == [2, 3]
        state, meta = ckpt.restore()
    finally:
        ckpt.close()
    assert meta['step'] == 3 and int(state['step']) == 3
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))
    logged = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
    assert logged == [1, 2, 3]
    assert not os.path.exists(workdir / 'translation_metrics.json')
    # the image grid of step 2: 2 examples x (input | reconstruction | translation | cycle), 16 px zoomed x8
    from PIL import Image
    for name in ('night2day', 'day2night'):
        grid = np.asarray(Image.open(workdir / 'images' / f'{name}_00000002.png'))
        assert grid.shape == (2 * 130 + 2 + 4, 4 * 130 + 2 + 4, 3)  # the writer frames it once more
