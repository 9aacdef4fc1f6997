"""Quick YOLO preset for CPU: ssd_quick's data, backbone, learning rate and 1000 steps with the yolo family.

    python -m experiments.train_detector --config=experiments/configs/yolo_quick.py --workdir=/tmp/yolo_quick

Measured: validation mAP@0.5 day 0.680 / dusk 0.138 / night 0.022 (SSD quick's source-only run: 0.589 / 0.128 /
0.052); the priors and levels behind it: common.yolo_block. A train step costs about 1.5x SSD's (measured side
by side on the shared 2-core machine); the run took 34 min there under a load of 3-7.
"""
from experiments.configs import common


def get_config():
    c = common.base_config()
    c.detector = 'yolo'
    return c
