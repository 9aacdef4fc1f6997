"""The flags and main shared by train_detector (source only) and adapt_detector (any method).

Both scripts define the same flags over their own default preset; `main` validates every choice (a bad
name is one line listing the valid choices, exit status 2), prepares the data and calls
`adapt.trainers.detection.train`. A NaN/Inf stops with one line and exit status 1, the last good checkpoint
intact; the same command resumes an interrupted run.
"""
import os
import signal

from absl import flags, logging

from experiments import common

FLAGS = flags.FLAGS
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def define_flags(default_preset):
    common.define_config(os.path.join(CONFIGS, default_preset))
    common.define_run_flags()
    flags.DEFINE_string('dataset', None, 'Labelled source: TFDS name[/config] (default: the preset\'s).')
    flags.DEFINE_string('train_split', None, 'Source training split (default: the preset\'s, train_day).')
    flags.DEFINE_string('eval_splits', None, 'Comma-separated evaluation splits (default: the preset\'s).')
    flags.DEFINE_string('backbone', None, 'Backbone of the chosen detector (default: the preset\'s).')
    flags.DEFINE_string('detector', None, 'Detector family, e.g. ssd | retinanet (default: the preset\'s).')
    common.define_distributed_flags()
    flags.DEFINE_integer('kill_at_step', 0, 'Testing only: SIGKILL this process right after this step '
                         '(the crash-and-resume test).')


def resolve_config():
    """(config, source builder, target builder) with the flags applied and every choice validated."""
    from adapt.trainers.detection import eval_splits, setup, train_data
    from adapt.registry import RegistryError
    from adapt.training.config import optimizer_config
    config = common.apply_flags(FLAGS.config, ('dataset', 'train_split', 'eval_splits', 'detector', 'num_steps'))
    common.check_detector_family(config)
    common.set_backbone(config, FLAGS.backbone)
    try:
        optimizer_config(config)
    except ValueError as error:
        common.usage_error(f'bad optimizer settings: {error}')
    common.check_init_run(config)
    source = common.check_dataset(config.dataset, FLAGS.data_dir)
    target = source if config.target_dataset in ('', config.dataset) else common.check_dataset(
        config.target_dataset, FLAGS.data_dir)
    try:
        s = setup(config, source.info.features['objects']['label'].num_classes)
    except (RegistryError, ValueError) as error:
        common.usage_error(str(error))
    wanted = [(source, config.train_split)] * ('source' in s.domains) + [(target, config.target_split)] * (
        'target' in s.domains) + [(b, split) for split, b in eval_splits(config, source, target).items()]
    for builder, split in wanted:
        if split.split('[')[0] not in builder.info.splits:
            common.prepare(builder)  # split names are known once the data exists
            common.check_split(builder, split)
    try:
        train_data(config, s, source, target)  # the method's choice of training examples (fine_tune's N)
    except ValueError as error:
        common.usage_error(str(error))
    return config, source, target


def _killer(step):
    if not step:
        return None
    return lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    common.initialize_distributed()
    config, source, target = resolve_config()
    common.prepare(source)
    common.prepare(target)
    from adapt.trainers.detection import train  # heavy imports only once the flags are checked
    with common.exit_on_non_finite():
        summary = train(config, source, target, FLAGS.workdir, data_dir=FLAGS.data_dir,
                        on_step=_killer(FLAGS.kill_at_step))
    for split, metrics in summary.items():
        print(f"{split}: mAP@0.5 {metrics['AP50']:.4f}  mAP@[.5:.95] {metrics['AP']:.4f}  "
              f"VOC07 mAP {metrics.get('voc07_mAP', float('nan')):.4f}")
