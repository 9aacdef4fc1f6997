"""Quick adaptation preset for CPU: continue a finished quick source-only run with any method.

    python -m experiments.train_detector --workdir=/tmp/ssd_quick                      # the burn-in
    python -m experiments.adapt_detector --workdir=/tmp/dann --config.method=dann --config.init_run=/tmp/ssd_quick
    python -m experiments.adapt_detector --workdir=/tmp/mean_teacher \
        --config=experiments/configs/adapt_quick.py:mean_teacher --config.init_run=/tmp/ssd_quick

Labelled day (train_day) and unlabelled night (train_night) of daynight_synth/r128_small, batch 32 per
domain, 300 steps at a tenth of the source run's peak learning rate; every method, source_only and
oracle included, gets exactly this schedule and augmentation. `adapt_quick.py:METHOD` is this preset for
one method (the same as --config.method=METHOD). shared_latent trains a fresh head instead of continuing
the burn-in: experiments/configs/shared_latent_quick.py; translate_train also needs --config.translator.
mean_teacher's student sees strong target views (its source views stay weak) and its teacher is an EMA at
decay 0.99 (a 100-step horizon for 300 steps): its baseline is source_only with --config.ema_decay=0.99 (the
EMA is then what is evaluated). A baseline can also take the strong views: --config.strong_augment.domains=
source (oracle: target). pseudo_label: 3 rounds of 100 steps; fine_tune / feature_extract / lwf: 100
labelled night images.
"""
from experiments.configs import common


def get_config(method: str = 'dann'):
    c = common.base_config()
    c.method = method
    c.num_steps = 300
    c.lr = 3e-4
    c.optimizer.warmup_steps = 20
    c.eval_every = 0                  # at the end only
    c.checkpoint_every = 100
    c.mean_teacher.decay = 0.99
    return c
