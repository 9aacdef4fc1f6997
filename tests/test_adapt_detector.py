"""experiments/adapt_detector.py as a user runs it: a user's own loss from a file outside adapt/, init_run,
bit-identical resume after SIGKILL, one-line usage errors."""
import json
import os

import jax
import numpy as np

from adapt.methods.trainer import init_state, setup
from adapt.runs import load_run
from tests.script_runner import TINY, final_params, finish, start

USER_LOSSES = '''
import jax.numpy as jnp


def pull(ctx, *, scale=1.0):
    """Pull the mean activation of the target's alignment-level features toward the source's."""
    level = ctx.detector.alignment_level
    gap = jnp.mean(ctx.source_features[level]) - jnp.mean(ctx.target_features[level])
    return scale * gap ** 2, {'gap': gap}
'''

BAD = [('--config.method=dan', 'unknown method'), ('--config.adaptation_losses=dann_imag:0.1', 'unknown adaptation loss'),
       ('--config.init_run=/nonexistent', 'not a finished run')]  # the other loss-list errors: test_methods


def test_bad_method_and_loss_names_exit_2(tmp_path, env):
    procs = [start([f'--workdir={tmp_path / str(i)}', f'--data_dir={env[1]}', *TINY, flag], env, 'adapt_detector')
             for i, (flag, _) in enumerate(BAD)]
    for (flag, needle), proc in zip(BAD, procs):
        code, _, err = finish(proc, check=False)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], (flag, err[-2000:])
        if needle.startswith('unknown'):
            assert 'valid choices:' in lines[0]


def test_user_loss_init_run_and_bit_identical_resume(tmp_path, env, source_run):
    (tmp_path / 'user_losses.py').write_text(USER_LOSSES)
    user_env = (dict(env[0], PYTHONPATH=f'{env[0]["PYTHONPATH"]}{os.pathsep}{tmp_path}'), env[1])

    def args(workdir, *extra):
        return [f'--workdir={tmp_path / workdir}', f'--data_dir={env[1]}', *TINY, '--config.method=dann',
                f'--config.init_run={source_run[0]}', '--config.target_split=train_night',
                '--config.adaptation_losses=dann_image:0.1,dann_instance:0.1,user_losses:pull:1.0', *extra]
    whole = start(args('whole'), user_env, 'adapt_detector')
    killed = start(args('killed', '--kill_at_step=3'), user_env, 'adapt_detector')
    assert 'validation_day: mAP@0.5' in finish(whole)[1]
    assert finish(killed, check=False)[0] == -9
    assert 'resumed from' in finish(start(args('killed'), user_env, 'adapt_detector'))[1]

    (step_w, w), (step_k, k) = (final_params(str(tmp_path / d)) for d in ('whole', 'killed'))
    assert step_w == step_k == 4
    jax.tree.map(np.testing.assert_array_equal, w, k)  # the resumed run is bit-identical
    # init_run: the adapted run starts from the source run's final weights and statistics
    source = load_run(source_run[0], 'detector')
    config = source.config
    config.update(method='dann', init_run=source_run[0])
    state = init_state(config, setup(config, len(source.class_names)))
    jax.tree.map(np.testing.assert_array_equal, (state.params['detector'], state.batch_stats),
                 (source.variables()['params'], source.variables()['batch_stats']))

    run = json.load(open(tmp_path / 'whole' / 'run.json'))
    assert run['kind'] == 'detector' and run['method'] == 'dann' and run['uses_target_labels'] is False
    assert run['terms'] == {'detection_source': 1.0, 'dann_image': 0.1, 'dann_instance': 0.1,
                            'user_losses:pull': 1.0}
    log = [json.loads(line) for line in open(tmp_path / 'whole' / 'metrics.jsonl')]
    gaps = [row['user_losses:pull/gap'] for row in log if row['split'] == 'train']
    assert gaps and all(np.isfinite(gaps)) and any(g != 0 for g in gaps)  # the user's term was computed
    metrics = json.load(open(tmp_path / 'whole' / 'metrics.json'))
    assert metrics['method'] == 'dann' and metrics['evaluated'] == 'model'
    assert 0.0 <= metrics['splits']['validation_day']['AP50'] <= 1.0
