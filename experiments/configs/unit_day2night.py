"""Detection-aware UNIT for online night -> day translation in front of the quick day detector (CPU).

    python -m experiments.train_detector --workdir=/tmp/ssd_quick                       # the day detector
    python -m experiments.train_unit --config=experiments/configs/unit_day2night.py \
        --config.loss.detector_run=/tmp/ssd_quick --workdir=/tmp/unit_day2night
    python -m experiments.adapt_detector --config.method=online_translation --config.init_run=/tmp/ssd_quick \
        --config.translator=/tmp/unit_day2night --workdir=/tmp/online_translation   # evaluates it

Its settings, and why: common.unit_day2night_config (the Day2Night protocol's translator too).
"""
from experiments.configs import common


def get_config():
    return common.unit_day2night_config()
