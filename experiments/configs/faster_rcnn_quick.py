"""Quick Faster R-CNN preset for CPU: ssd_quick's data, backbone and schedule with the faster_rcnn family.

    python -m experiments.train_detector --config=experiments/configs/faster_rcnn_quick.py --workdir=/tmp/frcnn

Measured (1000 steps, batch 32, 160 px): validation mAP@0.5 day 0.548, dusk 0.106, night 0.006 (ssd_quick:
0.589, 0.128, 0.052); a step costs ~1.4x ssd_quick's (1.54 vs 1.11 s measured side by side on a loaded
2-core machine). The family's choices for these objects, and what they were measured against:
common.faster_rcnn_block.
"""
from experiments.configs import common


def get_config():
    c = common.base_config()
    c.detector = 'faster_rcnn'
    return c
