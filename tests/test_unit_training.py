"""UNIT training: the step's objectives equal a NumPy reference of the UNIT losses
(noise, alternating order), the two-domain data iterator resumes exactly, and a NaN stops training cleanly
with the last good checkpoint intact (train_unit: one line, exit 1)."""
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))
import unit_tiny  # noqa: E402

from adapt.models.frozen_features import random_features  # noqa: E402
from adapt.models.unit import UNIT, Discriminators, UNITConfig  # noqa: E402
from adapt.trainers import unit  # noqa: E402
from adapt.trainers.unit import init_state  # noqa: E402
from adapt.trainers.unit_data import make_data_iterator  # noqa: E402
from adapt.training import Checkpointer, NonFiniteError  # noqa: E402
from experiments import common  # noqa: E402


# The full objective, with the optional feature loss on (a frozen, randomly initialised backbone of ours:
# a width-0.125 ResNet-10, the smallest that has the levels, since its layers are compiled into each step).
WEIGHTS = {'feature': 0.5}


@functools.cache
def _features():
    """The frozen features, built on first use (not at import: every xdist worker imports this file)."""
    return random_features('resnet18', 0.125, levels=('C2', 'C3'), seed=0,
                           backbone_kwargs={'stage_sizes': (1, 1, 1, 1)})


@pytest.fixture(scope='module')
def runs():
    """One step on 4 devices. (4 devices == 1 device for the UNIT trainer, every term but the feature loss on
    and the detection-aware terms too: tests/test_detection_aware.py.)"""
    cfg = unit_tiny.config()
    batches = [unit_tiny.batch(0)]
    start = jax.device_get(init_state(cfg))
    return cfg, batches, start, unit_tiny.run_steps(cfg, batches, 4, state=start, weights=WEIGHTS, features=_features())


# The UNIT reference's loss weights (mingyuliutw/UNIT), with the feature loss of WEIGHTS.
REFERENCE_WEIGHTS = {'gan': 1.0, 'recon': 10.0, 'kl': 0.01, 'cycle': 10.0, 'cycle_kl': 0.01, **WEIGHTS}


def _lsgan_critic(real_maps, fake_maps):
    return sum(np.mean((r - 1.0) ** 2) + np.mean(f ** 2) for r, f in zip(real_maps, fake_maps))


def _lsgan_generator(fake_maps):
    return sum(np.mean((f - 1.0) ** 2) for f in fake_maps)


def _l1(x, y):
    return np.mean(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))


def _kl(mu):
    return np.mean(np.asarray(mu, np.float64) ** 2)


def _networks(cfg, gen, disc0, disc1, x_a, x_b, noise, noise_cycle):
    """Every network output the step's objectives read, each domain through `encode` / `decode` on its own
    (the step runs both domains through the shared layers as one batch): z = mu + noise, translations
    re-encoded and decoded with the cycle noise; critic maps under the initial critics `disc0` and, for the
    generator's adversarial term, the critics after step 1 `disc1`; frozen features of images in [0, 1]."""
    model, critics, b = UNIT(cfg), Discriminators(cfg), x_a.shape[0]
    enc = lambda x, d: model.apply({'params': gen}, x, d, method=UNIT.encode)  # noqa: E731
    dec = lambda z, d: model.apply({'params': gen}, z, d, method=UNIT.decode)  # noqa: E731
    crit = lambda p, x, d: critics.apply({'params': p}, x, d)  # noqa: E731
    h_a, h_b = enc(x_a, 'a'), enc(x_b, 'b')
    z_a, z_b = h_a + noise[:b], h_b + noise[b:]
    x_ab, x_ba = dec(z_a, 'b'), dec(z_b, 'a')
    h_ab, h_ba = enc(x_ab, 'b'), enc(x_ba, 'a')
    feat = lambda x: _features()((x + 1.0) / 2.0)  # noqa: E731
    return {'x_aa': dec(z_a, 'a'), 'x_bb': dec(z_b, 'b'), 'x_aba': dec(h_ab + noise_cycle[:b], 'a'),
            'x_bab': dec(h_ba + noise_cycle[b:], 'b'), 'h_a': h_a, 'h_b': h_b, 'h_ab': h_ab, 'h_ba': h_ba,
            'd0_real_a': crit(disc0, x_a, 'a'), 'd0_ba': crit(disc0, x_ba, 'a'),
            'd0_real_b': crit(disc0, x_b, 'b'), 'd0_ab': crit(disc0, x_ab, 'b'),
            'd1_ba': crit(disc1, x_ba, 'a'), 'd1_ab': crit(disc1, x_ab, 'b'),
            'f_a': feat(x_a), 'f_b': feat(x_b), 'f_ab': feat(x_ab), 'f_ba': feat(x_ba)}


def test_step_objectives_match_a_numpy_reference(runs):
    """Step 1 on 4 devices against the UNIT objectives written out in NumPy: the critics' LSGAN loss under
    the initial critics, and the generator's (LSGAN + 10 L1 reconstruction + 0.01 KL + 10 L1 cycle +
    0.01 cycle KL + the feature L1) against the critics UPDATED by the same step, with the latent noise the
    step draws per example (normal draws keyed by fold_in(step key, global example index))."""
    cfg_dict, batches, start, (states, history) = runs
    after, metrics = states[0], history[0]
    moved = np.abs(after.params['gen']['enc_shared']['res0_0']['conv']['kernel']
                   - start.params['gen']['enc_shared']['res0_0']['conv']['kernel']).max()
    assert moved > 1e-4  # the step really trained the generator too
    cfg = UNITConfig.from_mapping(cfg_dict.model)
    key = jax.random.fold_in(jnp.asarray(start.rng), 0)     # the engine's per-step key at step 0
    b = batches[0]['a'].shape[0]
    keys = [jax.random.fold_in(key, i) for i in range(b)] + [jax.random.fold_in(jax.random.fold_in(key, 1), i)
                                                               for i in range(b)]
    latent = (16 // cfg.stride, 16 // cfg.stride, cfg.dim * cfg.stride)
    draws = jnp.stack([jax.random.normal(k, (2, *latent)) for k in keys])
    x_a, x_b = batches[0]['a'] * 2 - 1, batches[0]['b'] * 2 - 1
    out = jax.device_get(jax.jit(functools.partial(_networks, cfg), compiler_options=unit_tiny.FAST_COMPILE)(
        start.params['gen'], start.params['disc'], after.params['disc'], x_a, x_b, draws[:, 0], draws[:, 1]))
    d_total = _lsgan_critic(out['d0_real_a'], out['d0_ba']) + _lsgan_critic(out['d0_real_b'], out['d0_ab'])
    terms = {'gan_a': _lsgan_generator(out['d1_ba']), 'gan_b': _lsgan_generator(out['d1_ab'])}
    for d, x in (('a', x_a), ('b', x_b)):
        other = 'b' if d == 'a' else 'a'
        terms[f'recon_{d}'] = _l1(out[f'x_{d}{d}'], x)
        terms[f'kl_{d}'] = _kl(out[f'h_{d}'])
        terms[f'cycle_{d}'] = _l1(out[f'x_{d}{other}{d}'], x)
        terms[f'cycle_kl_{d}'] = _kl(out[f'h_{d}{other}'])
        levels = out[f'f_{d}']
        terms[f'feature_{d}'] = np.mean([_l1(out[f'f_{d}{other}'][n], levels[n]) for n in sorted(levels)])
    g_total = sum(REFERENCE_WEIGHTS[name.rsplit('_', 1)[0]] * value for name, value in terms.items())
    np.testing.assert_allclose(metrics['d_loss'], d_total, rtol=1e-4)
    np.testing.assert_allclose(metrics['g_loss'], g_total, rtol=1e-4)
    assert sorted(k for k in metrics if k.startswith('g_') and k != 'g_loss') == sorted(f'g_{k}' for k in terms)
    for name, value in terms.items():
        np.testing.assert_allclose(metrics[f'g_{name}'], value, rtol=1e-4, atol=1e-7, err_msg=name)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('unit_train')
    return root, unit_tiny.build_tiny(root / 'tfds')


def test_two_domain_iterator_resizes_and_resumes_exactly(tiny_data):
    _, builder = tiny_data
    cfg = unit_tiny.config(batch_size=4, flip_prob=0.5)
    it = make_data_iterator(cfg, builder, builder)
    first = next(it)
    assert first['a'].shape == first['b'].shape == (4, 16, 16, 3)   # 64 px renders resized to 16 px
    assert 0.0 <= first['a'].min() and first['a'].max() <= 1.0
    assert not np.array_equal(first['a'], first['b'])               # day and night, not one stream twice
    position = it.state()
    later = [next(it) for _ in range(3)]                             # 4 images per split: crosses epochs
    resumed = make_data_iterator(cfg, builder, builder)
    resumed.restore(json.loads(json.dumps(position)))                # as checkpointed (JSON)
    for expected in later:
        got = next(resumed)
        np.testing.assert_array_equal(got['a'], expected['a'])
        np.testing.assert_array_equal(got['b'], expected['b'])
    it.close()
    resumed.close()


def test_nan_stops_cleanly_with_last_good_checkpoint(tiny_data):
    """From step 4 on the learning rate is multiplied by 1e30 (a real divergence, via the step schedule):
    the UNIT trainer (what train_unit runs) must stop at the first non-finite value, name it, and keep
    step 3 (train_unit turns the error into one line and exit status 1: the next test)."""
    root, builder = tiny_data
    workdir = root / 'nan_run'
    config = unit_tiny.config(batch_size=4, num_steps=8, log_every=1, checkpoint_every=1, image_every=2,
                              tensorboard=False)
    config.optimizer.update(boundaries=(3,), decay_factor=1e30)
    with pytest.raises(NonFiniteError) as error:
        unit.Trainer(config).train(builder, builder, str(workdir), print_fn=lambda line: None)
    message = str(error.value)
    assert message.startswith('non-finite value at step 4') and 'last good checkpoint: step 3' in message, message
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
    # the image grid of step 2: 2 examples x (input | reconstruction | translation | cycle), 16 px zoomed x8
    from PIL import Image
    for name in ('night2day', 'day2night'):
        grid = np.asarray(Image.open(workdir / 'images' / f'{name}_00000002.png'))
        assert grid.shape == (2 * 130 + 2 + 4, 4 * 130 + 2 + 4, 3)  # the writer frames it once more


def test_a_non_finite_run_ends_the_script_with_one_line_and_exit_1(capsys):
    """What train_unit and the detector scripts do with the trainer's NonFiniteError."""
    with pytest.raises(SystemExit) as stop:
        with common.exit_on_non_finite():
            raise NonFiniteError(4, 'g_loss', float('nan'), 3)
    assert stop.value.code == 1
    assert capsys.readouterr().err == ('error: non-finite value at step 4: g_loss=nan; stopped without saving '
                                       '(last good checkpoint: step 3)\n')
