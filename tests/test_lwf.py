"""The Learning-without-Forgetting term against NumPy: softened KL + box L2, zero when the adapted model is
the source model, and a gradient that matches a central finite difference."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.losses.adaptation import lwf
from adapt.methods.base import StepContext


def _ctx(score_kind, student, teacher):
    detector = types.SimpleNamespace(score_kind=score_kind)
    return StepContext(detector, target_outputs=student, teacher_outputs={'target': teacher})


def _outputs(seed, classes=4):
    rng = np.random.default_rng(seed)
    return {'cls_logits': jnp.asarray(rng.normal(0, 2, (2, 5, classes)), jnp.float32),
            'box_codes': jnp.asarray(rng.normal(0, 1, (2, 5, 4)), jnp.float32)}


def _ref(score_kind, s, t, temperature, box_weight):
    s_cls, t_cls = np.asarray(s['cls_logits'], np.float64) / temperature, np.asarray(t['cls_logits'], np.float64) / temperature
    if score_kind == 'softmax':
        p_t = np.exp(t_cls) / np.exp(t_cls).sum(-1, keepdims=True)
        p_s = np.exp(s_cls) / np.exp(s_cls).sum(-1, keepdims=True)
        kl = (p_t * np.log(p_t / p_s)).sum(-1)
    else:
        p_t, p_s = 1 / (1 + np.exp(-t_cls)), 1 / (1 + np.exp(-s_cls))
        kl = (p_t * np.log(p_t / p_s) + (1 - p_t) * np.log((1 - p_t) / (1 - p_s))).sum(-1)
    box = ((np.asarray(s['box_codes'], np.float64) - np.asarray(t['box_codes'], np.float64)) ** 2).sum(-1)
    return kl.mean() + box_weight * box.mean()


@pytest.mark.parametrize('score_kind', ['softmax', 'sigmoid'])
def test_lwf_equals_numpy_and_is_zero_for_the_source_model(score_kind):
    s, t = _outputs(0), _outputs(1)
    value, metrics = lwf(_ctx(score_kind, s, t), temperature=2.0, box_weight=0.5)
    np.testing.assert_allclose(float(value), _ref(score_kind, s, t, 2.0, 0.5), rtol=1e-5)
    same, _ = lwf(_ctx(score_kind, t, t))
    assert abs(float(same)) < 1e-6


@pytest.mark.parametrize('score_kind', ['softmax', 'sigmoid'])
def test_lwf_gradient_matches_a_finite_difference(score_kind):
    s, t = _outputs(2), _outputs(3)
    direction = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(4).normal(size=x.shape), jnp.float32), s)
    loss = lambda out: lwf(_ctx(score_kind, out, t))[0]  # noqa: E731
    grad = jax.grad(loss)(s)
    analytic = sum(float(jnp.sum(g * d)) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
    eps = 1e-3
    shifted = lambda sign: {k: np.asarray(v, np.float64) + sign * eps * np.asarray(direction[k]) for k, v in s.items()}  # noqa: E731
    numeric = (_ref(score_kind, shifted(1), t, 2.0, 1.0) - _ref(score_kind, shifted(-1), t, 2.0, 1.0)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3)
