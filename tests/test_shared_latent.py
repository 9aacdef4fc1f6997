"""shared_latent: the UNIT run's encoders put in place bit-identically, each input routed through its own
domain's encoder (checked against UNIT.encode on the run's parameters), a frozen encoder bit-identical
after a train step while the head trains (gradients reaching it only with train_encoder), the variant's
head, one-line errors."""
import functools

import jax
import numpy as np
import pytest

from adapt.trainers.detection import setup
from adapt.run_models import build_detector, load_generator
from adapt.models.unit import UNIT, to_model
from tests.test_methods import _assert_trees, _batch, _stepper
from tests.tiny_config import tiny_config

PARTS = ('enc_a', 'enc_b', 'enc_shared')


def _config(unit_run, method='shared_latent', **shared_latent):
    """The tiny test preset (32 px) with the shared_latent detector (and method) on `unit_run`."""
    c = tiny_config(detector='shared_latent', method=method, num_steps=10)
    c.shared_latent.model.update(dict(extra_channels=(16,), aspect_ratios=((2.0,), (2.0,)), min_scale=0.2,
                                      max_scale=0.8, instance_top_k=8))
    c.shared_latent.postprocess.update(dict(max_detections=20, pre_nms_top_k=100))
    c.shared_latent.update(dict(unit_run=unit_run, **shared_latent))
    return c


@pytest.fixture(scope='module')
def built(unit_run):
    """(detector, its initial variables, the UNIT run's generator)."""
    detector = build_detector(_config(unit_run), 3)
    key = jax.random.key(0, impl='rbg')  # init_state's key: its init program is then compiled once
    return detector, jax.device_get(detector.init(key)), load_generator(unit_run)


@functools.partial(jax.jit, static_argnums=0)
def _latent(model, variables, images):
    return model.apply(variables, images)[1]['latent']


@functools.partial(jax.jit, static_argnums=(0, 3))
def _unit_encode(cfg, generator, images, domain):
    """The reference: UNIT's own encoder of `domain` on the run's parameters."""
    return UNIT(cfg).apply({'params': generator}, to_model(images), domain, method=UNIT.encode)


def test_init_puts_the_unit_encoders_in_place_bit_identically(built):
    detector, variables, generator = built
    encoder = variables['params']['features']['encoder']
    assert set(encoder) == set(PARTS)                          # both fronts, whichever route was built
    for part in PARTS:
        jax.tree.map(np.testing.assert_array_equal, encoder[part], generator.params[part])
    assert {'cls0', 'box0', 'cls1', 'box1'} <= set(variables['params'])
    assert set(variables['batch_stats']['features']) == {'extra0_bn0', 'extra0_bn1'}
    assert detector.feature_levels == ('latent', 'extra0') and detector.alignment_levels == ('latent',)


@pytest.mark.parametrize('target_inputs,night_names,day_names', [
    ('night,dusk', ('target', 'validation_night', 'validation_dusk'), ('source', 'validation_day')),
    ('night', ('target', 'validation_night'), ('source', 'validation_day', 'validation_dusk')),
])
def test_each_input_goes_through_its_own_domains_encoder(built, unit_run, target_inputs, night_names, day_names):
    _, variables, generator = built
    detector = build_detector(_config(unit_run, target_inputs=target_inputs), 3)
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    want = {d: np.asarray(_unit_encode(generator.config, generator.params, images, d)) for d in 'ab'}
    assert np.abs(want['a'] - want['b']).max() > 1e-3              # the two encoders differ
    for domain, names in (('b', night_names), ('a', day_names)):
        routed = detector.for_input(names[0])
        assert all(detector.for_input(name) is routed for name in names)   # one detector per domain, built once
        got = np.asarray(_latent(routed.eval_model, variables, images))
        np.testing.assert_allclose(got, want[domain], rtol=1e-5, atol=1e-5, err_msg=f'{names} through {domain}')


def test_no_backbone_to_export_or_import(built):
    detector, variables, _ = built
    with pytest.raises(ValueError, match='shared_latent has no backbone'):
        detector.backbone(variables)
    with pytest.raises(ValueError, match='no Keras backbone import for shared_latent'):
        detector.with_backbone(variables, 'params', {})


def test_the_variant_picks_the_head(unit_run):
    retinanet = build_detector(_config(unit_run, variant='retinanet'), 3)
    assert retinanet.score_kind == 'sigmoid' and retinanet.loss_settings['classification'] == 'focal'
    assert retinanet.matcher['unmatched_threshold'] == 0.4
    with pytest.raises(ValueError, match="shared_latent.variant 'yolo'; valid choices: ssd, retinanet"):
        build_detector(_config(unit_run, variant='yolo'), 3)
    from adapt.models import families  # models read no run store: the generator is given to them
    with pytest.raises(ValueError, match='shared_latent reads the UNIT generator of shared_latent.unit_run'):
        families.build_detector(_config(unit_run), 3)


@functools.partial(jax.jit, static_argnums=0)
def _latent_grad(model, variables, images):
    """d sum(latent^2) / d params."""
    loss = lambda params: (_latent(model, {**variables, 'params': params}, images) ** 2).sum()  # noqa: E731
    return jax.grad(loss)(variables['params'])


def _changed(before, after) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_a_step_keeps_the_frozen_encoder_bit_identical_and_trains_the_head(unit_run):
    """One step with the preset's weight decay on, under a method that freezes nothing itself (source_only):
    the detector's encoder (both fronts and the shared blocks) stays bit-identical, the head moves, and 4
    devices take the same step as 1."""
    config = _config(unit_run, method='source_only')
    assert setup(config, 3).frozen == (r'^detector/features/encoder/',)
    state, step = _stepper(config, 1)
    new, metrics = step(state, {'source': _batch(0)})
    four, metrics4 = _stepper(config, 4)[1](state, {'source': _batch(0)})
    _assert_trees((new.params, new.batch_stats, new.opt_state), (four.params, four.batch_stats, four.opt_state))
    for k in metrics:
        np.testing.assert_allclose(metrics[k], metrics4[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert set(metrics) >= {'loss', 'detection_source'} and np.isfinite(metrics['loss'])
    before, after = jax.device_get(state.params['detector']), new.params['detector']
    jax.tree.map(np.testing.assert_array_equal, before['features']['encoder'], after['features']['encoder'])
    # the batch's small boxes match on the latent level (biases: no weight decay, so gradients moved them)
    assert _changed(before['cls0']['bias'], after['cls0']['bias'])
    assert _changed(before['box0']['bias'], after['box0']['bias'])


@pytest.mark.parametrize('train_encoder', [False, True])
def test_gradients_reach_the_routed_encoder_only_with_train_encoder(built, unit_run, train_encoder):
    """With train_encoder nothing is frozen and the latent map's gradient reaches the day route's
    encoder (enc_a, enc_shared; not the night front); without, none reaches the encoder at all."""
    _, variables, _ = built
    config = _config(unit_run, train_encoder=train_encoder)
    assert setup(config, 3).frozen == (() if train_encoder else (r'^detector/features/encoder/',))
    model = build_detector(config, 3).for_input('source').eval_model
    images = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    grads = _latent_grad(model, variables, images)['features']['encoder']
    moved = {part: any(np.any(g != 0) for g in jax.tree.leaves(grads[part])) for part in PARTS}
    assert moved == {'enc_a': train_encoder, 'enc_b': False, 'enc_shared': train_encoder}


@pytest.mark.parametrize('detector,workdir,message', [
    ('ssd', None, 'method shared_latent trains the shared_latent detector: add --config.detector='),
    ('shared_latent', '', 'shared_latent.unit_run is empty'),
    ('shared_latent', '/nonexistent/unit', r'shared_latent.unit_run: /nonexistent/unit has no run.json'),
])
def test_configure_errors_are_one_line(unit_run, detector, workdir, message):
    config = _config(unit_run if workdir is None else workdir)
    config.detector = detector
    with pytest.raises(ValueError, match=message) as error:
        setup(config, 3)
    assert '\n' not in str(error.value)
