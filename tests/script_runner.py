"""Run experiment scripts as a user does (subprocesses) with one shared tiny dataset and compilation cache."""
import glob
import os
import subprocess
import sys

import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config=tests/tiny_config.py']  # daynight_synth/tiny at 32 px, a width-0.125 ResNet-10, 4 steps


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


