"""Tiny detector presets for fast tests: the keys of experiments.configs.common's base config, 32-px images and a
width-0.125 ResNet with one block per stage (a ResNet-10: half of ResNet-18's layers, so about half its compile
time).

`tiny_config()` is for in-process tests; `get_config()` makes this file a preset the experiment scripts
load (`--config=tests/tiny_config.py`, see tests/script_runner.py).
"""
from experiments.configs import common

RATIOS = ((2.0,), (2.0, 3.0), (2.0,))
RESNET10 = {'stage_sizes': (1, 1, 1, 1)}


def tiny_config(size=32, detector='ssd', levels=('C3', 'C4'), **overrides):
    c = common.base_config()
    c.detector = detector
    c.image_size = size
    c.batch_size = 8
    c.max_boxes = 4
    for family in ('ssd', 'retinanet'):
        c[family].model.update(dict(width=0.125, levels=levels, extra_channels=(16,), aspect_ratios=RATIOS,
                                    min_scale=0.2, max_scale=0.8, instance_top_k=8))
        c[family].model.backbone_kwargs = RESNET10
        c[family].postprocess.update(dict(max_detections=20, pre_nms_top_k=100))
    c.optimizer.update(dict(name='sgd', warmup_steps=1))  # 1 vs N devices: Adam would amplify rounding
    c.update(overrides)
    return c


def get_config():
    """The scripts' tiny preset: daynight_synth/tiny, batches of 4, 4 steps, checkpoints every 2."""
    c = tiny_config(dataset='daynight_synth/tiny', eval_splits='validation_day', batch_size=4, eval_batch_size=4,
                    num_steps=4, checkpoint_every=2, log_every=2, num_draw=2, tensorboard=False, max_boxes=8)
    c.optimizer.name = 'adamw'
    return c
