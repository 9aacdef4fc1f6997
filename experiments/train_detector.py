"""Train an SSD-family detector on any TFDS detection dataset; evaluate COCO / VOC metrics per split.

    python -m experiments.train_detector --workdir=/tmp/ssd_quick            # quick CPU preset
    python -m experiments.train_detector --config=experiments/configs/ssd_full.py --workdir=... \
        --config.lr=1e-3 --backbone=vgg16 --detector=retinanet

The same command resumes from the workdir's latest checkpoint (after a crash or SIGKILL) and reaches the
same parameters as an uninterrupted run. Writes to the workdir: config.json, checkpoints/, metrics.jsonl
(+ TensorBoard events), metrics.json (final per-split metrics), detections_<split>.json (COCO results)
and images/ (detections drawn on validation images). A NaN/Inf stops with one line and exit status 1;
a bad flag value gives one line listing the valid choices and exit status 2.
"""
import json
import os
import signal
import sys

from absl import app, flags, logging

from experiments import common

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
FLAGS = flags.FLAGS
common.define_config(os.path.join(_CONFIGS, 'ssd_quick.py'))
flags.DEFINE_string('workdir', None, 'Checkpoints, logs and results go here; rerun to resume.', required=True)
flags.DEFINE_string('dataset', None, 'TFDS name[/config] (default: the preset\'s).')
flags.DEFINE_string('train_split', None, 'Training split (default: the preset\'s, train_day).')
flags.DEFINE_string('eval_splits', None, 'Comma-separated evaluation splits (default: the preset\'s).')
flags.DEFINE_string('backbone', None, 'Backbone (default: the preset\'s).')
flags.DEFINE_string('detector', None, 'ssd | retinanet (default: the preset\'s).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_integer('num_steps', None, 'Training steps (default: the preset\'s).')
common.define_distributed_flags()
flags.DEFINE_integer('kill_at_step', 0, 'Testing only: SIGKILL this process right after this step '
                     '(the crash-and-resume test).')


def resolve_config():
    """The preset with the flags applied and every choice validated (usage error, exit 2, otherwise)."""
    from adapt.methods.supervised import optimizer_config
    config = FLAGS.config
    with config.unlocked():
        for name in ('dataset', 'train_split', 'eval_splits', 'detector', 'num_steps'):
            if getattr(FLAGS, name) is not None:
                config[name] = getattr(FLAGS, name)
        if FLAGS.backbone is not None:
            config.model.backbone = FLAGS.backbone
    common.check_detector_choices(config)
    try:
        optimizer_config(config)
    except ValueError as error:
        common.usage_error(f'bad optimizer settings: {error}')
    builder = common.check_dataset(config.dataset, FLAGS.data_dir)
    splits = [config.train_split] + [s.strip() for s in config.eval_splits.split(',') if s.strip()]
    if set(s.split('[')[0] for s in splits) <= set(builder.info.splits):
        return config, builder
    common.prepare(builder)  # split names are known once the data exists
    for split in splits:
        common.check_split(builder, split)
    return config, builder


def _killer(step):
    if not step:
        return None
    return lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    common.initialize_distributed()
    config, builder = resolve_config()
    common.prepare(builder)
    from adapt.methods.supervised import train  # heavy imports only once the flags are checked
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, 'config.json'), 'w') as f:
        json.dump({**config.to_dict(), 'data_dir': FLAGS.data_dir}, f, indent=1)
    try:
        summary = train(config, builder, FLAGS.workdir, on_step=_killer(FLAGS.kill_at_step))
    except FloatingPointError as err:  # adapt.training.NonFiniteError
        print(f'error: {err}', file=sys.stderr)
        sys.exit(1)
    for split, metrics in summary.items():
        print(f"{split}: mAP@0.5 {metrics['AP50']:.4f}  mAP@[.5:.95] {metrics['AP']:.4f}  "
              f"VOC07 mAP {metrics.get('voc07_mAP', float('nan')):.4f}")


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
