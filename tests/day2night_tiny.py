"""The Day2Night protocol at test size: daynight_synth/tiny (4 train, 2 validation and 2 test images per
domain), the tiny detector at 32 px, 2 steps per training stage, the two reference methods (so no UNIT
stage: no method here reads one; `--methods=...,online_translation` adds the tiny UNIT below), their night
severity sweep over levels 2 and 4, and no sequential run. Usable in-process (`get_config()`) and as
`--config=tests/day2night_tiny.py` of experiments.day2night."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts'))

from experiments.configs import day2night  # noqa: E402
from tests.tiny_config import get_config as tiny_detector  # noqa: E402

TINY = 'daynight_synth/tiny'
METHODS = 'source_only,oracle'


def get_config():
    import unit_tiny
    c = day2night.get_config()
    for name in ('day', 'dusk', 'night'):
        c.domains[name] = day2night.domain(TINY, f'train_{name}', f'validation_{name}', f'test_{name}')
    c.methods = METHODS
    c.burn_in = tiny_detector()
    c.burn_in.update(dict(num_steps=2, checkpoint_every=2))
    c.adapt.update(dict(num_steps=2, batch_size=4, warmup_steps=1, pseudo_label_rounds=1, num_labelled=2))
    c.unit = unit_tiny.config(image_size=32, crop_size=16, num_steps=2, max_boxes=8, checkpoint_every=2, log_every=1,
                              image_every=0, shuffle_buffer=16, batch_size=4, tensorboard=False)
    c.unit.loss.weights.update(semantic=10.0, labelled_cycle=0.0, feature=0.0)
    c.sequential_steps = 0  # the R matrix: tests/test_day2night_report.py
    c.severities = '2,4'    # tiny's own night is level 4: the sweep adds level 2's rows
    c.bootstrap_samples = 20
    c.feature_images = 2
    c.frame_sizes = 'train'
    c.num_examples = 2
    return c
