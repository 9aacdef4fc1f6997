"""Full SSD preset for a GPU/TPU: 256 px scenes, a full-width ResNet-18, bfloat16 compute, longer schedule.

    python -m experiments.train_detector --config=experiments/configs/ssd_full.py --workdir=/tmp/ssd_full
"""
from experiments.configs import common


def get_config():
    return common.full_config()
