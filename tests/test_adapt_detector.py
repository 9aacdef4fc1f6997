"""experiments/adapt_detector.py's one-line usage errors, and init_run. USER_LOSSES is a user's own loss in a
file outside adapt/; tests/test_mean_teacher.py runs it through this script and through a stopped and resumed run."""

import os

import jax
import numpy as np

from adapt.trainers.detection import init_state, setup
from adapt.runs import load_run
from tests.script_runner import TINY, finish, start

USER_LOSSES = '''
import jax.numpy as jnp


def pull(ctx, *, scale=1.0):
    """Pull the mean activation of the target's deepest alignment-level features toward the source's."""
    level = ctx.detector.alignment_levels[-1]
    gap = jnp.mean(ctx.source_features[level]) - jnp.mean(ctx.target_features[level])
    return scale * gap ** 2, {'gap': gap}
'''

def test_a_bad_adaptation_loss_exits_2_with_one_line(tmp_path, env):
    """End to end through the script; every other check behind a usage error is tested in-process
    (tests/test_train_detector.py, test_methods.py: each resolves before any data or model is built)."""
    code, _, err = finish(start([f'--workdir={tmp_path}', f'--data_dir={env[1]}', *TINY,
                                 '--config.adaptation_losses=dann_imag:0.1'], env, 'adapt_detector'), check=False)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'unknown adaptation loss' in lines[0], err[-2000:]
    assert 'valid choices:' in lines[0] and not os.path.exists(tmp_path / 'checkpoints')


def test_init_run_starts_from_the_source_runs_weights(source_run):
    """(The user's loss, kill and resume through this script: tests/test_mean_teacher.py.)"""
    source = load_run(source_run[0], 'detector')
    config = source.config
    config.update(method='dann', init_run=source_run[0])
    state = init_state(config, setup(config, len(source.class_names)))
    jax.tree.map(np.testing.assert_array_equal, (state.params['detector'], state.batch_stats),
                 (source.variables()['params'], source.variables()['batch_stats']))
