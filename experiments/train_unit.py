"""Train UNIT (unpaired translation) between two TFDS image sets; score night -> day on a paired split.

    python -m experiments.train_unit --workdir=/tmp/unit_quick                  # quick CPU preset
    python -m experiments.train_unit --config=experiments/configs/unit_full.py --workdir=... \
        --dataset_a=bdd100k/day --split_a=train --dataset_b=bdd100k/night --split_b=train

Domain a is the source (day), b the target (night); defaults: daynight_synth train_day <-> train_night.
Images of other sizes are resized to --config.image_size (with --noresize they are rejected instead).
The same command resumes from the workdir's latest checkpoint. Writes run.json, checkpoints/,
metrics.jsonl (+ TensorBoard events), images/ (grids: input | reconstruction | translation | cycle) and,
with an evaluation dataset, translation_metrics.json (PSNR / SSIM of night -> day translations against
the true day renders beside the raw night images, Frechet distance on our backbone's features), also
printed as a table. A NaN/Inf stops with one line and exit status 1 (the last good checkpoint is kept);
a bad flag value gives one line and exit status 2.
"""
import json
import os

from absl import app, flags, logging

from experiments import common

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
FLAGS = flags.FLAGS
common.define_config(os.path.join(_CONFIGS, 'unit_quick.py'))
common.define_run_flags(min_steps=1)
flags.DEFINE_string('dataset_a', None, 'TFDS name[/config] of domain a (source, day).')
flags.DEFINE_string('split_a', None, 'Split of domain a.')
flags.DEFINE_string('dataset_b', None, 'TFDS name[/config] of domain b (target, night).')
flags.DEFINE_string('split_b', None, 'Split of domain b.')
flags.DEFINE_string('eval_dataset', None, 'Dataset with a paired split for scoring ("" = no scoring).')
flags.DEFINE_boolean('resize', True, 'Resize images to the config\'s size; with --noresize, reject other sizes.')
flags.DEFINE_string('inception_weights', None, 'Keras InceptionV3 no-top weights file: also report Inception FID.')


def _builder(name, splits):
    builder = common.check_dataset(name, FLAGS.data_dir)
    if not set(s.split('[')[0] for s in splits) <= set(builder.info.splits):
        common.prepare(builder)  # split names are known once the data exists
        for split in splits:
            common.check_split(builder, split)
    return builder


def check_image_size(builder, split, size, resize):
    """Usage error when the images are not `size` (h, w) and resizing is off."""
    shape = tuple(builder.info.features['image'].shape[:2]) if 'image' in builder.info.features else None
    if shape is None:
        common.usage_error(f'{builder.info.full_name} has no `image` feature')
    if not resize and shape != tuple(size):
        found = 'of varying size' if None in shape else f'{shape[0]}x{shape[1]}'
        common.usage_error(f'images of {builder.info.full_name} {split} are {found}, the model trains at '
                           f'{size[0]}x{size[1]}: drop --noresize to resize them, or set --config.image_size')


def resolve_config():
    """(trainer, builder a, builder b, evaluation builder or None): the preset with the flags applied and every
    choice validated (usage error, exit 2, otherwise)."""
    from adapt.losses.gan import FEATURE_KINDS, GAN_KINDS
    from adapt.models.unit import PAD_TYPES
    config = common.apply_flags(FLAGS.config, ('dataset_a', 'split_a', 'dataset_b', 'split_b', 'eval_dataset',
                                               'num_steps'))
    common.check_choice('GAN loss', config.loss.gan_kind, GAN_KINDS)
    common.check_choice('feature loss', config.loss.feature_kind, FEATURE_KINDS)
    common.check_choice('pad_type', config.model.pad_type, PAD_TYPES)
    for path in (config.loss.feature_backbone, config.loss.detector_run, config.fd_backbone, FLAGS.inception_weights):
        if path and not os.path.exists(path):
            common.usage_error(f'no such file or directory: {path}')
    from adapt.trainers import unit  # heavy imports (TensorFlow) only once the flags are checked
    try:
        trainer = unit.from_config(config)  # the frozen networks its terms read, loaded once
    except ValueError as err:
        common.usage_error(str(err))
    import jax
    if config.batch_size % jax.device_count():
        common.usage_error(f'batch_size {config.batch_size} is not divisible by the {jax.device_count()} devices')
    size = (config.image_size,) * 2 if isinstance(config.image_size, int) else tuple(config.image_size)
    builder_a = _builder(config.dataset_a, [config.split_a])
    builder_b = (builder_a if config.dataset_b == config.dataset_a
                 else _builder(config.dataset_b, [config.split_b]))
    common.check_split(builder_b, config.split_b)
    check_image_size(builder_a, config.split_a, size, FLAGS.resize)
    check_image_size(builder_b, config.split_b, size, FLAGS.resize)
    eval_builder = None
    if config.eval_dataset:
        eval_builder = (builder_a if config.eval_dataset == config.dataset_a
                        else _builder(config.eval_dataset, [config.eval_split]))
        common.check_split(eval_builder, config.eval_split)
    return trainer, builder_a, builder_b, eval_builder


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    trainer, builder_a, builder_b, eval_builder = resolve_config()
    from adapt.evaluation.translation_eval import InceptionFeatures, evaluate_unit, format_table  # after the flags
    from adapt.models.frozen_features import random_features
    from adapt.run_models import detector_features
    from adapt.training import to_host
    config = trainer.config
    with common.exit_on_non_finite():
        state = trainer.train(builder_a, builder_b, FLAGS.workdir, data_dir=FLAGS.data_dir)
    if eval_builder is None:
        return
    fd_features = (detector_features(config.fd_backbone) if config.fd_backbone
                   else random_features('resnet18', 0.25, seed=0))
    inception = InceptionFeatures(FLAGS.inception_weights) if FLAGS.inception_weights else None
    metrics = evaluate_unit(config, to_host(state.params['gen']), eval_builder, fd_features, inception)
    metrics.update(step=config.num_steps, eval_dataset=config.eval_dataset, eval_split=config.eval_split)
    with open(os.path.join(FLAGS.workdir, 'translation_metrics.json'), 'w') as f:
        json.dump(metrics, f, indent=1)
    print(format_table(metrics))
    print(f'Frechet distance features: {metrics.get("fd_features", "-")}')


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
