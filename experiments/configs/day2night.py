"""Day2Night protocol preset: every method on the quick SSD and daynight_synth/r128_small, on 2 CPU cores.

    python -m experiments.day2night --workdir=/tmp/day2night

The domains: day (labelled source), dusk (intermediate, evaluated only) and night (unlabelled target;
its labels reach only the methods marked as using them). Each domain names its dataset and its train,
validation and test splits; test splits are read by the evaluation stages alone. `bdd100k_domains` are
the same three on BDD100K (`experiments.day2night --dataset=bdd100k`). The burn-in is the
quick SSD preset; every method continues it for `adapt.num_steps` with one schedule, augmentation and
EMA setting (source_only and oracle included); the UNIT translator is unit_day2night's detection-aware
one. Sized so the whole protocol fits in an hour on the 2-core machine (README: measured).
"""
import ml_collections

from experiments.configs import common

SYNTH = 'daynight_synth/r128_small'


def domain(dataset, train, validation, test):
    return dict(dataset=dataset, train=train, validation=validation, test=test)


def bdd100k_domains():
    """BDD100K's daytime / dawn_dusk / night as day / dusk / night, as published: each time of day trains on
    its train split (labelled for the source, unlabelled for the target) and is tested on BDD's val; 5 % of
    each train split is held out for validation (BDD has no separate one)."""
    return {name: domain(f'bdd100k/{bdd}', 'train[:95%]', 'train[95%:]', 'validation')
            for name, bdd in (('day', 'daytime'), ('dusk', 'dawn_dusk'), ('night', 'night'))}


def get_config():
    c = ml_collections.ConfigDict()
    c.domains = ml_collections.ConfigDict(dict(
        day=domain(SYNTH, 'train_day', 'validation_day', 'test_day'),
        dusk=domain(SYNTH, 'train_dusk', 'validation_dusk', 'test_dusk'),
        night=domain(SYNTH, 'train_night', 'validation_night', 'test_night')))
    c.source, c.intermediate, c.target = 'day', 'dusk', 'night'
    c.methods = ''                    # comma-separated; '' = every registered method and every extra one
    # Rows of your own: 'NAME=LOSS:WEIGHT,...;NAME2=...' trains source_only plus those adaptation losses
    # (registered names or package.module:function), e.g. 'mine=my_losses:sliced_wasserstein:0.5'.
    c.extra_methods = ''
    c.seeds = 1
    c.burn_in = common.base_config()
    c.burn_in.num_steps = 800
    c.burn_in.eval_every = 0
    c.burn_in.tensorboard = False
    # Every method (source_only and oracle included) continues the burn-in like this.
    c.adapt = ml_collections.ConfigDict(dict(
        num_steps=60, batch_size=16, lr=3e-4, warmup_steps=10, ema_decay=0.0, mean_teacher_decay=0.98,
        pseudo_label_rounds=3, num_labelled=100,
        bn_policy='source'))          # BatchNorm in training, the same for every row: source | frozen | joint
    c.unit = common.unit_day2night_config()
    c.unit.num_steps = 400
    c.unit.image_every = 0
    c.unit.tensorboard = False
    # Night severity sweep (daynight_synth): levels 1 dashcam, 2 dim, 3 dark, 4 unexposed (this night), e.g.
    # '1,2,3,4'. Each level's rows continue the same burn-in (seed 0); the target's own level is the main table's.
    c.severities = ''
    # The swept rows (those the protocol runs): source_only and oracle (the gap), the three unsupervised rows
    # ahead in the previous 3-seed table (README) and online translation.
    c.severity_methods = 'source_only,oracle,mean_teacher,mmd,pseudo_label,online_translation'
    c.sequential_steps = 60           # per domain of the day -> dusk -> night run (backward transfer); 0: none
    c.bootstrap_samples = 200         # confidence intervals over test images
    c.feature_images = 200            # per domain, for the proxy A-distance
    c.frame_sizes = 'train,720x1280'  # per-frame inference cost
    c.num_examples = 4                # night test images shown per method in the report
    return c
