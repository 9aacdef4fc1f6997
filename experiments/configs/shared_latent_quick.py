"""Quick shared_latent preset for CPU: SSD's head on the quick UNIT run's shared latent space.

    python -m experiments.train_unit --workdir=/tmp/unit_quick                         # the UNIT encoders
    python -m experiments.adapt_detector --config=experiments/configs/shared_latent_quick.py \
        --workdir=/tmp/shared_latent --config.shared_latent.unit_run=/tmp/unit_quick

Labelled day images (train_day of daynight_synth/r128_small at 160 px, as ssd_quick) train a fresh head
through the frozen day encoder (--config.shared_latent.train_encoder=True fine-tunes it too); night and dusk
validation images go through the night encoder (--config.shared_latent.target_inputs=night sends dusk through
the day encoder). Same augmentation and schedule as ssd_quick, 300 steps: 5.7 minutes on the 2-core machine
(about half of a step is the frozen encoder's forward pass at 160 px; train_encoder adds its backward
pass). On the quick UNIT run it reached mAP@0.5 0.238 by day and 0.000 at night and dusk (README).
"""
from experiments.configs import common


def get_config():
    c = common.base_config()
    c.detector = 'shared_latent'
    c.method = 'shared_latent'
    c.num_steps = 300
    c.eval_every = 0                  # at the end only
    return c
