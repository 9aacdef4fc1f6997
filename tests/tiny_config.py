"""A tiny detector preset (the quick preset's keys, 32-px images, a width-0.125 ResNet-18) for fast tests."""
from experiments.configs import ssd_quick

RATIOS = ((2.0,), (2.0, 3.0), (2.0,))


def tiny_config(size=32, detector='ssd', levels=('C3', 'C4'), **overrides):
    c = ssd_quick.get_config()
    c.detector = detector
    c.image_size = size
    c.batch_size = 8
    c.max_boxes = 4
    for family in ('ssd', 'retinanet'):
        c[family].model.update(dict(width=0.125, levels=levels, extra_channels=(16,), aspect_ratios=RATIOS,
                                    min_scale=0.2, max_scale=0.8, instance_dim=8, instance_top_k=8))
        c[family].postprocess.update(dict(max_detections=20, pre_nms_top_k=100))
    c.optimizer.update(dict(name='sgd', warmup_steps=1))  # 1 vs N devices: Adam would amplify rounding
    c.update(overrides)
    return c
