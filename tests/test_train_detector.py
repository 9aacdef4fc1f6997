"""experiments/train_detector.py and evaluate_detector.py as a user runs them (subprocesses, tiny data).

One session-wide tiny dataset (daynight_synth/tiny, 32 px training) and a shared XLA compilation cache
keep the runs short. The SIGKILL test kills the real script right after a step that is not a checkpoint
step, reruns the same command and compares the final parameters with an uninterrupted run.
"""
import glob
import json
import os

import jax
import numpy as np
import pytest

from adapt.evaluation import evaluate_coco, load_detections, load_ground_truth
from tests.script_runner import TINY, final_params, finish, start

BAD_FLAGS = [('--backbone=resnet19', 'unknown backbone'), ('--detector=yolo', 'unknown detector'),
             ('--dataset=daynight_synthetic', 'unknown dataset'), ('--dataset=daynight_synth/r7', 'unknown config'),
             ('--train_split=train_noon', 'unknown split'), ('--eval_splits=validation_day,val_night', 'unknown split'),
             ('--config.ssd.model.width=abc', 'config.ssd.model.width'),
             ('--config.ssd.model.widht=1', 'Did you mean')]


def test_bad_flags_give_one_line_and_exit_2(tmp_path, env):
    procs = [start([f'--workdir={tmp_path / str(i)}', f'--data_dir={env[1]}', *TINY, flag], env)
             for i, (flag, _) in enumerate(BAD_FLAGS)]
    for i, ((flag, needle), proc) in enumerate(zip(BAD_FLAGS, procs)):
        code, _, err = finish(proc, check=False)
        lines = err.strip().splitlines()
        assert code == 2, (flag, err[-2000:])
        assert len(lines) == 1 and needle in lines[0], (flag, lines)
        if needle.startswith('unknown'):
            assert 'valid choices:' in lines[0], lines
        assert not os.path.exists(tmp_path / str(i) / 'checkpoints')


def test_train_writes_results_and_resumes_after_sigkill(tmp_path, env):
    whole, killed = str(tmp_path / 'whole'), str(tmp_path / 'killed')
    args = [f'--data_dir={env[1]}', *TINY]
    first = start([f'--workdir={whole}', *args], env), start([f'--workdir={killed}', *args, '--kill_at_step=3'], env)
    assert 'validation_day: mAP@0.5' in finish(first[0])[1]
    code, _, err = finish(first[1], check=False)
    assert code == -9, err[-2000:]
    assert final_params(killed)[0] == 2  # died after step 3, before the step-4 checkpoint

    resume = start([f'--workdir={killed}', *args], env)  # the same command again
    evaluate = start([f'--workdir={whole}', '--split=validation_night', f'--output_dir={tmp_path / "eval"}'], env,
                     'evaluate_detector')
    assert 'resumed from' in finish(resume)[1]

    (step_a, a), (step_b, b) = final_params(whole), final_params(killed)
    assert step_a == step_b == 4
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)  # sorted keys; None (empty state) skipped
    assert len(leaves_a) == len(leaves_b) > 10
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)

    metrics = json.load(open(os.path.join(whole, 'metrics.json')))
    day = metrics['splits']['validation_day']
    assert metrics['step'] == 4 and {'AP', 'AP50', 'voc07_mAP', 'voc_mAP'} <= set(day)
    gt = load_ground_truth(os.path.join(whole, 'ground_truth_validation_day.json'))
    dets_path = os.path.join(whole, 'detections_validation_day.json')
    load_detections(dets_path, gt)
    assert evaluate_coco(gt, dets_path).summary()['AP50'] == pytest.approx(day['AP50'])
    assert glob.glob(os.path.join(whole, 'images', 'detections_validation_day_*.png'))
    assert os.path.exists(os.path.join(whole, 'metrics.jsonl'))

    # evaluate_detector on another split of the uninterrupted run.
    assert 'mAP@0.5' in finish(evaluate)[1]
    res = json.load(open(tmp_path / 'eval' / 'detections_validation_night_4.json'))
    assert isinstance(res, list) and all({'image_id', 'category_id', 'bbox', 'score'} <= set(r) for r in res)
    assert json.load(open(tmp_path / 'eval' / 'metrics_validation_night_4.json'))['step'] == 4



def test_nan_stops_with_one_line_and_exit_1(tmp_path, env):
    code, _, err = finish(start([f'--workdir={tmp_path}', f'--data_dir={env[1]}', *TINY, '--config.lr=1e30',
                                 '--config.optimizer.clip_norm=1e30'], env), check=False)
    assert code == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: non-finite value at step') and 'Traceback' not in err, err[-2000:]
    saved = [int(os.path.basename(p)) for p in glob.glob(os.path.join(tmp_path, 'checkpoints', '[0-9]*'))]
    step = int(last.split('at step ')[1].split(':')[0])
    assert all(s < step for s in saved)  # nothing at or after the bad step was saved


def test_init_from_loads_the_backbone_checkpoint(tmp_path):
    import jax.numpy as jnp
    from adapt.methods.trainer import init_state, setup
    from adapt.models.backbones import get_backbone
    from adapt.models.keras_import import save_backbone_checkpoint
    from tests.tiny_config import tiny_config
    config = tiny_config(init_from=str(tmp_path / 'backbone'))
    backbone = get_backbone('resnet18', width=0.125)
    variables = jax.jit(backbone.init)(jax.random.key(5), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda x: x + 0.5, variables)  # unlike any fresh initialisation
    save_backbone_checkpoint(config.init_from, variables, {'backbone': 'resnet18', 'width': 0.125, 'source': 't'})
    state = init_state(config, setup(config, num_classes=6))
    for ours, theirs in ((state.params['detector'], variables['params']), (state.batch_stats, variables['batch_stats'])):
        jax.tree.map(np.testing.assert_array_equal, ours['features']['backbone'], theirs)
    config.ssd.model.width = 0.25  # a backbone of another width does not fit
    with pytest.raises(ValueError, match='do not match'):
        init_state(config, setup(config, num_classes=6))
