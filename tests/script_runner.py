"""Run experiment scripts as a user does (subprocesses) with one shared tiny dataset and compilation cache."""
import glob
import os
import subprocess
import sys

import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [  # daynight_synth/tiny at 32 px, a width-0.125 ResNet-18, 4 steps
        '--dataset=daynight_synth/tiny', '--eval_splits=validation_day', '--config.image_size=32',
        '--config.batch_size=4', '--config.eval_batch_size=4', '--config.num_steps=4',
        '--config.ssd.model.width=0.125', "--config.ssd.model.levels=('C3','C4')",
        '--config.ssd.model.extra_channels=(16,)', '--config.ssd.model.aspect_ratios=((2.0,),(2.0,),(2.0,))',
        '--config.ssd.model.instance_dim=8', '--config.checkpoint_every=2',
        '--config.log_every=2', '--config.num_draw=2', '--config.tensorboard=False',
        '--config.optimizer.warmup_steps=1', '--config.max_boxes=8']


def script_env(root):
    """Environment for the subprocesses and a prepared tiny dataset dir."""
    import tensorflow_datasets as tfds
    import adapt.datasets  # noqa: F401  (registers daynight_synth)
    tfds.builder('daynight_synth/tiny', data_dir=str(root / 'tfds')).download_and_prepare()
    e = dict(os.environ, PYTHONPATH=ROOT)  # with conftest's shared compilation cache
    return e, str(root / 'tfds')


def start(args, env, script='train_detector'):
    """Start a script (several run at once: start-up and compilation are mostly single-threaded)."""
    return subprocess.Popen([sys.executable, '-m', f'experiments.{script}', *args], cwd=ROOT, env=env[0],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, check=True):
    """(returncode, stdout, stderr) of a started script; with check, a non-zero exit fails the test."""
    out, err = proc.communicate(timeout=900)
    if check and proc.returncode:
        raise AssertionError(f'{proc.args} exited {proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}')
    return proc.returncode, out, err


def final_params(workdir):
    step = max(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, 'checkpoints', '[0-9]*')))
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))
    return step, state


