"""Quick UNIT preset for CPU (2 cores, well under 15 minutes): 64 px day <-> night, small widths.

    python -m experiments.train_unit --workdir=/tmp/unit_quick

The UNIT base config of experiments.configs.common (its architecture and schedule: common.unit_config).
About 0.15-0.3 s per step on 2 shared cores.
"""
from experiments.configs import common


def get_config():
    return common.unit_config()
