"""BatchNorm policies of the generic step (adapt.methods.step): frozen normalises a training pass exactly as
evaluation does; joint normalises both domains with the statistics of their concatenation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.trainers.detection import setup
from tests.test_methods import _assert_trees, _batch, _stepper
from tests.tiny_config import tiny_config


def probe(ctx):
    """Reads the target pass of the training step: its class logits, as a metric."""
    logits = ctx.target_outputs['cls_logits']
    return jnp.float32(0.0) * jnp.sum(logits), {'logits': logits}


PROBE = 'tests.test_bn_policy:probe'


@functools.cache
def _policy_stepper(policy):
    """(config, initial state, step) of the probed source-only step under `policy`: built once per policy for
    the module (every build traces the step again)."""
    config = tiny_config(method='source_only', adaptation_losses=f'{PROBE}:1.0', bn_policy=policy)
    return config, *_stepper(config, 1)


def _step_logits(policy, source, target):
    """(target class logits of the step's training pass, BatchNorm statistics after it)."""
    _, state, step = _policy_stepper(policy)
    new, metrics = step(state, {'source': source, 'target': target})
    return metrics[f'{PROBE}/logits'], new.batch_stats


def _trained_statistics(state):
    """The state with running statistics far from init's (mean 0, variance 1), so that running and batch
    statistics differ whatever the batch."""
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 if path[-1].key == 'mean' else x * 2.5, state.batch_stats)
    return state.replace(batch_stats=stats)


def test_frozen_training_pass_normalises_as_evaluation():
    """Under `frozen` the target pass of a training step gives the evaluation outputs of the same variables
    (running statistics) and the statistics stay unchanged; under `source` it does not (batch statistics)."""
    source, target = _batch(0), _batch(1)
    for policy in ('frozen', 'source'):
        config, state, step = _policy_stepper(policy)
        state = _trained_statistics(state)
        new, metrics = step(state, {'source': source, 'target': target})
        detector = setup(config, 3).detector
        evaluated, _, _ = jax.jit(functools.partial(detector.apply, train=False))(
            {'params': state.params['detector'], 'batch_stats': state.batch_stats}, target['image'])
        same = np.allclose(metrics[f'{PROBE}/logits'], evaluated['cls_logits'], rtol=1e-5, atol=1e-5)
        assert same == (policy == 'frozen'), policy
        if policy == 'frozen':
            _assert_trees(new.batch_stats, state.batch_stats, exact=True)


def test_joint_uses_the_statistics_of_the_concatenated_batch():
    """The mean and variance of two copies of a batch are the batch's own: with the target a copy of the source,
    joint's target logits and running statistics equal those of the source pass under `source`. With another
    target batch the mixed statistics differ from both domains' own."""
    source, other = _batch(0), _batch(1)
    copy = {k: v.copy() for k, v in source.items()}
    joint_logits, joint_stats = _step_logits('joint', source, copy)
    source_logits, source_stats = _step_logits('source', source, copy)
    np.testing.assert_allclose(joint_logits, source_logits, rtol=1e-4, atol=1e-5)
    _assert_trees(joint_stats, source_stats)
    mixed_logits, mixed_stats = _step_logits('joint', source, other)
    own_logits, own_stats = _step_logits('source', source, other)
    assert not np.allclose(mixed_logits, own_logits, rtol=1e-3, atol=1e-4)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(mixed_stats), jax.tree.leaves(own_stats)))


def test_unknown_policy_lists_the_choices():
    with pytest.raises(ValueError, match='bn_policy .*valid choices: source, frozen, joint'):
        setup(tiny_config(bn_policy='domain'), 3)
