"""experiments/translate.py on a folder (an unreadable file skipped and counted) and on a TFDS split (pixels
equal the in-process translation), and one-line usage errors (exit status 2) of translate.py and train_unit.py."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))
import unit_tiny  # noqa: E402

from adapt.models.unit import UNITConfig, make_translate_fn  # noqa: E402
from adapt.runs import write_run  # noqa: E402
from adapt.trainers.unit import init_state  # noqa: E402
from adapt.training import Checkpointer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = {'a.png': (16, 20), 'b.jpg': (21, 18)}   # (height, width); 21 x 18 is no multiple of the model's stride


def _run(module, *args):
    return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=unit_tiny.subprocess_env(),
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A tiny daynight_synth build and a train_unit-style workdir holding (untrained) UNIT parameters."""
    root = tmp_path_factory.mktemp('unit_cli')
    builder = unit_tiny.build_tiny(root / 'tfds')
    config = unit_tiny.config()
    workdir = root / 'workdir'
    write_run(str(workdir), 'unit', config)
    state = init_state(config)
    ckpt = Checkpointer(str(workdir / 'checkpoints'))
    ckpt.save(3, state, {'step': 3})
    ckpt.close()
    folder = root / 'photos'
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name, (h, w) in PHOTOS.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name, quality=95)
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'broken.png').write_text('not an image either')
    return root, builder, UNITConfig.from_mapping(config.model), jax.device_get(state.params['gen'])


def _expected(cfg, params, images, source, target):
    return np.round(np.asarray(make_translate_fn(cfg, source, target)(params, images)) * 255)


def test_translate_folder_keeps_names_and_sizes(setup):
    root, _, cfg, params = setup
    folder = root / 'photos'
    out = root / 'out_folder'
    result = _run('experiments.translate', f'--workdir={root / "workdir"}', f'--input_dir={folder}',
                  f'--output_dir={out}', '--direction=night2day')
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ['a.png', 'b.png']
    skipped = [line for line in result.stderr.splitlines() if line.startswith('skipped ')]
    assert len(skipped) == 1 and skipped[0].startswith(f'skipped {folder / "broken.png"}: not a JPEG'), result.stderr
    assert result.stdout.strip().endswith('1 unreadable files skipped'), result.stdout
    for name, (h, w) in PHOTOS.items():
        stem = os.path.splitext(name)[0]
        got = np.asarray(Image.open(out / f'{stem}.png'), np.float32)
        assert got.shape == (h, w, 3)
        # decoded as the input pipeline decodes a dataset's images (TensorFlow's JPEG IDCT is not PIL's)
        source = tf.io.decode_image((folder / name).read_bytes(), channels=3).numpy().astype(np.float32)[None] / 255
        np.testing.assert_allclose(got, _expected(cfg, params, source, 'b', 'a')[0], atol=1.0)  # rounding


def test_translate_tfds_split_day2night(setup):
    root, builder, cfg, params = setup
    out = root / 'out_split'
    result = _run('experiments.translate', f'--workdir={root / "workdir"}', '--dataset=daynight_synth/tiny',
                  f'--data_dir={root / "tfds"}', '--split=paired', '--image_key=image_night', '--direction=day2night',
                  '--image_size=32', '--batch_size=1', f'--output_dir={out}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'translated 2 images day2night' in result.stdout
    assert sorted(os.listdir(out)) == ['paired_00000.png', 'paired_00001.png']
    example = next(iter(builder.as_dataset(split='paired').take(1).as_numpy_iterator()))
    night = example['image_night'][0].astype(np.float32)[None] / 255.0
    resized = tf.clip_by_value(tf.image.resize(night, (32, 32), antialias=True), 0.0, 1.0).numpy()
    got = np.asarray(Image.open(out / 'paired_00000.png'), np.float32)
    np.testing.assert_allclose(got, _expected(cfg, params, resized, 'a', 'b')[0], atol=1.0)


@pytest.mark.parametrize('args, message', [
    (['--direction=sideways'], 'night2day'),
    ([], 'exactly one input'),
    (['--input_dir=.', '--dataset=daynight_synth/tiny', '--split=paired'], 'exactly one input'),
    (['--dataset=daynight_synth/tiny'], '--dataset needs --split'),
    (['--input_dir=/nonexistent/folder'], 'is not a directory'),
])
def test_translate_bad_flags_one_line_exit_2(tmp_path, args, message):
    result = _run('experiments.translate', f'--workdir={tmp_path}', f'--output_dir={tmp_path / "out"}', *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-1000:]


@pytest.mark.parametrize('checkpoints, step, message', [
    (False, None, 'no checkpoint in'),
    (True, 5, 'no checkpoint at step 5 in'),   # the workdir holds step 3 only
])
def test_translate_rejects_missing_checkpoints(setup, tmp_path, checkpoints, step, message):
    root = setup[0]
    workdir = root / 'workdir' if checkpoints else tmp_path
    if not checkpoints:
        (tmp_path / 'run.json').write_text((root / 'workdir' / 'run.json').read_text())
    args = [f'--workdir={workdir}', f'--input_dir={root / "photos"}', f'--output_dir={tmp_path / "out"}']
    result = _run('experiments.translate', *args, *([f'--step={step}'] if step else []))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-1000:]
    assert not os.path.exists(tmp_path / 'checkpoints') and not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('extra, message', [
    (['--config.loss.gan_kind=wgan'], 'lsgan, nsgan, hinge'),
    (['--config.nonexistent=1'], 'bad flag'),
    (['--noresize'], 'drop --noresize'),     # tiny is 64 px, the tiny preset trains at 16 px
])
def test_train_unit_bad_flags_one_line_exit_2(setup, tmp_path, extra, message):
    root = setup[0]
    result = _run('experiments.train_unit', *unit_tiny.cli_flags(tmp_path / 'w', root / 'tfds'), *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-1000:]
    assert not os.path.exists(tmp_path / 'w' / 'checkpoints')
