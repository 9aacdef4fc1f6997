"""Optimizers from a config, checked against closed forms (schedules, SGD/Adam updates by hand)."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from adapt.training.optim import OptimizerConfig, make_optimizer, make_schedule, param_labels


def _params():
    rng = np.random.default_rng(0)
    shapes = {"backbone": {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "bn": {"scale": (4,), "bias": (4,)}},
              "head": {"kernel": (4, 3), "bias": (3,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda x: isinstance(x, tuple))


def _grads(scale=1.0):
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), jnp.float32), _params())


def _one_update(cfg, grads=None):
    params = _params()
    tx = make_optimizer(cfg)
    state = tx.init(params)
    updates, state = tx.update(_grads() if grads is None else grads, state, params)
    return params, updates, state


def test_warmup_cosine_matches_closed_form():
    lr, w, total, end = 0.4, 5, 30, 0.1
    sched = make_schedule(OptimizerConfig(learning_rate=lr, schedule="cosine", warmup_steps=w,
                                          total_steps=total, end_factor=end))
    for t in range(total + 5):
        if t + 1 <= w:
            expected = lr * (t + 1) / w
        else:
            p = min((t - w) / (total - w), 1.0)
            expected = lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * p)))
        assert float(sched(t)) == pytest.approx(expected, rel=1e-5, abs=1e-8), t
    assert float(sched(w)) == pytest.approx(lr) and float(sched(total + 3)) == pytest.approx(lr * end)


def test_step_schedule_boundaries_and_every():
    sched = make_schedule(OptimizerConfig(learning_rate=1.0, schedule="step", warmup_steps=2,
                                          boundaries=(10, 20), decay_factor=0.5))
    expected = {0: 0.5, 1: 1.0, 9: 1.0, 10: 0.5, 19: 0.5, 20: 0.25, 100: 0.25}
    for t, v in expected.items():
        assert float(sched(t)) == pytest.approx(v), t
    every = make_schedule(OptimizerConfig(learning_rate=1e-4, schedule="step", decay_every=100, decay_factor=0.5))
    for t in (0, 99, 100, 250, 1000):
        assert float(every(t)) == pytest.approx(1e-4 * 0.5 ** (t // 100), rel=1e-6), t


def test_lr_multipliers_and_freezing_sgd_by_hand():
    cfg = dict(name="sgd", learning_rate=0.1, momentum=0.0,
               param_groups=[(r"^backbone/bn/", 0.0), (r"^backbone/", 0.25), (r"^head/kernel$", 2.0)])
    params, updates, state = _one_update(cfg)
    g = _grads()
    for path, expected_mult in [(("backbone", "conv", "kernel"), 0.25), (("backbone", "conv", "bias"), 0.25),
                                (("backbone", "bn", "scale"), 0.0), (("backbone", "bn", "bias"), 0.0),
                                (("head", "kernel"), 2.0), (("head", "bias"), 1.0)]:
        u, gg = updates, g
        for k in path:
            u, gg = u[k], gg[k]
        np.testing.assert_allclose(u, -0.1 * expected_mult * gg, rtol=1e-6, err_msg="/".join(path))
        if expected_mult == 0.0:
            assert np.all(np.asarray(u) == 0.0)  # exactly zero, not just small


def test_frozen_group_exactly_zero_with_adamw_decay_clipping_and_no_state():
    cfg = dict(name="adamw", learning_rate=0.1, weight_decay=0.5, clip_norm=0.1,
               param_groups=[("^backbone/", 0.0)])
    params = _params()
    tx = make_optimizer(cfg)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(_grads(), state, params)
        params = optax.apply_updates(params, updates)
    for x, y in zip(jax.tree.leaves(params["backbone"]), jax.tree.leaves(_params()["backbone"])):
        assert np.array_equal(x, y)
    assert not np.array_equal(params["head"]["kernel"], _params()["head"]["kernel"])
    # No optimizer memory for frozen params: Adam moments exist only for the head (4*3 + 3 numbers x2).
    n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    assert n_state == 2 * (4 * 3 + 3)


def test_clip_by_global_norm_excludes_frozen_and_scales_sgd_update():
    g = _grads(scale=10.0)
    head_norm = math.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(g["head"])))
    cfg = dict(name="sgd", learning_rate=1.0, momentum=0.0, clip_norm=1.0, param_groups=[("^backbone/", 0.0)])
    _, updates, _ = _one_update(cfg, g)
    np.testing.assert_allclose(updates["head"]["kernel"], -g["head"]["kernel"] / head_norm, rtol=1e-5)
    # Below the threshold nothing is clipped.
    _, updates, _ = _one_update(dict(cfg, clip_norm=10 * head_norm), g)
    np.testing.assert_allclose(updates["head"]["kernel"], -g["head"]["kernel"], rtol=1e-6)


def test_weight_decay_mask_sgd_and_adamw_by_hand():
    lr, wd = 0.1, 0.01
    params, updates, _ = _one_update(dict(name="sgd", learning_rate=lr, momentum=0.9, weight_decay=wd))
    g = _grads()
    np.testing.assert_allclose(updates["head"]["kernel"], -lr * (g["head"]["kernel"] + wd * params["head"]["kernel"]),
                               rtol=1e-5)
    np.testing.assert_allclose(updates["head"]["bias"], -lr * g["head"]["bias"], rtol=1e-6)  # bias not decayed
    np.testing.assert_allclose(updates["backbone"]["bn"]["scale"], -lr * g["backbone"]["bn"]["scale"], rtol=1e-6)
    # AdamW, first step: m_hat = g, v_hat = g^2, update = -lr (g / (|g| + eps) + wd p) on decayed leaves.
    eps = 1e-8
    params, updates, _ = _one_update(dict(name="adamw", learning_rate=lr, weight_decay=wd, eps=eps))
    k, gk = params["head"]["kernel"], g["head"]["kernel"]
    np.testing.assert_allclose(updates["head"]["kernel"], -lr * (gk / (np.abs(gk) + eps) + wd * k), rtol=1e-5)
    gb = g["head"]["bias"]
    np.testing.assert_allclose(updates["head"]["bias"], -lr * gb / (np.abs(gb) + eps), rtol=1e-5)
    # Adam with weight decay is L2 on the gradient (PyTorch Adam(weight_decay) / the UNIT reference).
    params, updates, _ = _one_update(dict(name="adam", learning_rate=lr, weight_decay=wd, eps=eps))
    gl2 = gk + wd * k
    np.testing.assert_allclose(updates["head"]["kernel"], -lr * gl2 / (np.abs(gl2) + eps), rtol=1e-5)


def test_labels_config_dict_and_errors():
    labels = param_labels(_params(), [("bn", 0.0), ("conv/kernel", 0.5)])
    assert labels["backbone"]["bn"]["scale"] == "frozen"
    assert labels["backbone"]["conv"]["kernel"] == "group1"
    assert labels["head"]["bias"] == "default"
    cfg = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.2, momentum=0.0,
                                         param_groups=[("head", 0.5)]))
    _, updates, _ = _one_update(cfg)
    np.testing.assert_allclose(updates["head"]["bias"], -0.1 * _grads()["head"]["bias"], rtol=1e-6)
    with pytest.raises(ValueError, match="sgd, adam, adamw"):
        make_optimizer(dict(name="rmsprop"))
    with pytest.raises(ValueError, match="constant, cosine, step"):
        make_optimizer(dict(schedule="linear"))
    with pytest.raises(ValueError, match="learning_rat"):
        make_optimizer(dict(learning_rat=0.1))
