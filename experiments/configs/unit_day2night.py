"""Detection-aware UNIT for online night -> day translation in front of the quick day detector (CPU).

    python -m experiments.train_detector --workdir=/tmp/ssd_quick                       # the day detector
    python -m experiments.train_unit --config=experiments/configs/unit_day2night.py \
        --config.loss.detector_run=/tmp/ssd_quick --workdir=/tmp/unit_day2night
    python -m experiments.adapt_detector --config.method=online_translation --config.init_run=/tmp/ssd_quick \
        --config.translator=/tmp/unit_day2night --workdir=/tmp/online_translation   # evaluates it

The translator runs at the detector's input resolution (the 128 px renders of r128_small resized to 160
px, as the detector sees them), so objects keep their scale; it trains on random 64 px windows of those
frames (a quarter of the cost of whole frames), and the frozen day detector judges the whole frame with
the window replaced by its translation (adapt.losses.detection_aware). unit_quick's architecture and
schedule otherwise. The semantic term's weight is large because it is a mean over every anchor of the
frame, almost all background: a total disagreement (the day detector on a night frame and on its day
twin) measures 0.015, and a 64 px window covers a sixth of the frame.
"""
from experiments.configs import unit_quick


def get_config():
    c = unit_quick.get_config()
    c.dataset_a = c.dataset_b = c.eval_dataset = 'daynight_synth/r128_small'
    c.image_size = 160
    c.crop_size = 64
    c.num_steps = 1000
    # Measured (README, night validation mAP@0.5 through online_translation): semantic consistency helps
    # the translator most; the labelled cycle alone made it worse, so it is off.
    c.loss.weights.update(semantic=1000.0, labelled_cycle=0.0, feature=0.0)
    c.image_every = 500
    return c
