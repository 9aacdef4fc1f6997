"""experiments/train_detector.py and evaluate_detector.py as a user runs them (subprocesses, tiny data),
and the checks behind their one-line usage errors.

One session-wide tiny dataset (daynight_synth/tiny, 32 px training), one shared source run (conftest's
`source_run`) and a shared XLA compilation cache keep the runs short.
"""
import glob
import json
import os

import jax
import numpy as np
import pytest

from adapt.evaluation import evaluate_coco, load_detections, load_ground_truth
from experiments import common
from tests.script_runner import TINY, finish, start

BAD_FLAGS = [('--eval_splits=validation_day,val_night', 'unknown split'), ('--config.ssd.model.widht=1', 'Did you mean')]


def test_bad_flags_give_one_line_and_exit_2(tmp_path, env):
    """End to end for a check in the script's main (a dataset split) and one in the flag parser (a
    --config override); the registry checks are tested in-process below."""
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


@pytest.mark.parametrize('check,needle', [
    (lambda c, d: c.update(detector='yolov9') or common.check_detector_family(c), "unknown detector 'yolov9'"),
    (lambda c, d: common.set_backbone(c, 'resnet19'), "unknown backbone"),
    (lambda c, d: common.check_dataset('daynight_synthetic', d), "unknown dataset 'daynight_synthetic'"),
    (lambda c, d: common.check_dataset('daynight_synth/r7', d), "unknown config of dataset daynight_synth 'r7'"),
    (lambda c, d: common.check_split(common.check_dataset('daynight_synth/tiny', d), 'train_noon'),
     "unknown split of daynight_synth/tiny"),
    (lambda c, d: c.update(method='dan') or common.check_method(c), "unknown method 'dan'"),
    (lambda c, d: c.update(init_run='/nonexistent') or common.check_init_run(c), 'not a finished run')])
def test_each_check_is_one_line_with_the_choices_and_exit_2(check, needle, env, capsys):
    from tests.tiny_config import get_config
    with pytest.raises(SystemExit) as stop:
        check(get_config(), env[1])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err and ('valid choices:' in err or needle == 'not a finished run'), err


def test_train_writes_results_and_evaluate_reads_them(tmp_path, env, source_run):
    """The shared source run's files, and evaluate_detector on another split of it. (Kill-and-resume of
    the same trainer is tested through adapt_detector.)"""
    whole, whole_out = source_run
    evaluate = start([f'--workdir={whole}', '--split=validation_night', f'--output_dir={tmp_path / "eval"}'], env,
                     'evaluate_detector')
    assert 'validation_day: mAP@0.5' in whole_out
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


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, env):
    """adapt.trainers.detection.train (what the scripts run; they print the error on one line and exit 1) on
    an exploding learning rate: NonFiniteError names the step, and nothing at or after it was saved."""
    import tensorflow_datasets as tfds
    from adapt.trainers.detection import train
    from adapt.training import NonFiniteError
    from tests.tiny_config import get_config
    config = get_config()
    config.update(lr=1e30, num_steps=6)
    config.optimizer.clip_norm = 1e30
    with pytest.raises(NonFiniteError, match='non-finite value at step') as error:
        train(config, tfds.builder('daynight_synth/tiny', data_dir=env[1]), workdir=str(tmp_path),
              print_fn=lambda *a: None)
    saved = [int(os.path.basename(p)) for p in glob.glob(os.path.join(tmp_path, 'checkpoints', '[0-9]*'))]
    assert all(s < error.value.step for s in saved) and error.value.last_good == max(saved, default=None)


def test_init_from_loads_the_backbone_checkpoint(tmp_path):
    import jax.numpy as jnp
    from adapt.trainers.detection import init_state, setup
    from adapt.models.backbones import get_backbone
    from adapt.models.keras_import import save_backbone_checkpoint
    from tests.tiny_config import RESNET10, tiny_config
    config = tiny_config(init_from=str(tmp_path / 'backbone'))
    backbone = get_backbone('resnet18', width=0.125, **RESNET10)
    variables = jax.jit(backbone.init)(jax.random.key(5), jnp.zeros((1, 32, 32, 3)))
    variables = jax.tree.map(lambda x: x + 0.5, variables)  # unlike any fresh initialisation
    save_backbone_checkpoint(config.init_from, variables, {'backbone': 'resnet18', 'width': 0.125, 'source': 't'})
    state = init_state(config, setup(config, num_classes=6))
    for ours, theirs in ((state.params['detector'], variables['params']), (state.batch_stats, variables['batch_stats'])):
        jax.tree.map(np.testing.assert_array_equal, ours['features']['backbone'], theirs)
    config.ssd.model.width = 0.25  # a backbone of another width does not fit
    with pytest.raises(ValueError, match='do not match'):
        init_state(config, setup(config, num_classes=6))
