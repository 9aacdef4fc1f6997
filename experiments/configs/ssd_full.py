"""Full SSD preset for a GPU/TPU: 256 px scenes, a full-width ResNet-18, bfloat16 compute, longer schedule.

    python -m experiments.train_detector --config=experiments/configs/ssd_full.py --workdir=/tmp/ssd_full
"""
from experiments.configs import ssd_quick


def get_config():
    c = ssd_quick.get_config()
    c.dataset = 'daynight_synth/r256'
    c.image_size = 256
    c.max_boxes = 24
    c.batch_size = 64
    c.eval_batch_size = 128
    c.num_steps = 20000
    c.lr = 2e-3
    for family in ('ssd', 'retinanet'):
        m = c[family].model
        m.backbone = 'resnet18'
        m.width = 1.0
        m.levels = ('C2', 'C3', 'C4', 'C5')
        m.extra_channels = (256, 256)
        m.aspect_ratios = ((2.0, 3.0),) * 5 + ((2.0,),)
        m.min_scale = 0.03
        m.max_scale = 0.6
        m.head_convs = 1
        m.dtype = 'bfloat16'
        m.instance_dim = 256
        m.instance_top_k = 128
    c.optimizer.warmup_steps = 500
    c.augment.crop_scale = (0.3, 1.0)
    c.log_every = 100
    c.checkpoint_every = 1000
    c.eval_every = 2000
    c.keep = 3
    c.best_metric = 'validation_day/AP50'
    return c
