"""Translate images with a trained UNIT checkpoint (night -> day or day -> night); writes PNG files.

    python -m experiments.translate --workdir=/tmp/unit_quick --input_dir=photos/ --output_dir=out/
    python -m experiments.translate --workdir=/tmp/unit_quick --dataset=daynight_synth/r64_small \
        --split=test_night --output_dir=out/ --direction=night2day --limit=100
    python -m experiments.translate ... --split=paired --image_key=image_night     # the paired night renders

--workdir is a train_unit workdir (run.json + checkpoints/). Domain a of the training run is day,
b is night, so night2day runs b -> a. Images keep their size (--image_size=0, padded internally to a
multiple of the model's stride) or are resized to a square --image_size first. Folder inputs keep their
file names (as .png; the files of adapt.datasets.image_folder, an unreadable one skipped with one line on
stderr and counted); split inputs are written as <split>_<index>.png. A bad flag value gives one line
and exit status 2.
"""
import os
import sys

from absl import app, flags, logging

from experiments import common

DIRECTIONS = {'night2day': ('b', 'a'), 'day2night': ('a', 'b')}
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'train_unit workdir with run.json and checkpoints/.', required=True)
flags.DEFINE_string('output_dir', None, 'Where the translated PNG files go.', required=True)
flags.DEFINE_enum('direction', 'night2day', list(DIRECTIONS), 'night2day: domain b -> a; day2night: a -> b.')
flags.DEFINE_string('input_dir', None, 'A folder of images to translate.')
flags.DEFINE_string('dataset', None, 'Or a TFDS dataset name[/config] ...')
flags.DEFINE_string('split', None, '... and its split (slices such as test_night[:100] work).')
flags.DEFINE_string('image_key', 'image', 'TFDS image feature (a Sequence feature gives its first image).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
flags.DEFINE_integer('image_size', 0, '0: keep each image\'s size; else resize to this square size.', lower_bound=0)
flags.DEFINE_integer('limit', 0, 'Translate at most this many images (0: all).', lower_bound=0)
flags.DEFINE_integer('batch_size', 16, 'Images per batch for TFDS inputs.', lower_bound=1)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).', lower_bound=0)


def load_generator(workdir, step=None):
    """The generator (adapt.models.unit.Generator) of a train_unit workdir; usage error if it is not one."""
    from adapt.run_models import load_generator as load
    from adapt.runs import RunError
    try:
        return load(workdir, step)
    except RunError as error:
        common.usage_error(str(error))


def folder_names(input_dir, limit):
    """The first `limit` (0: all) image files of a folder by name; a usage error if there is none."""
    from adapt.datasets.image_folder import FolderError, list_images
    try:
        return list_images(input_dir)[:limit or None]
    except FolderError as error:
        common.usage_error(str(error))


def folder_images(input_dir, names, skipped):
    """Yields (name, [H, W, 3] float32 in [0, 1]) for the files `names` of a folder; an unreadable file is one
    line on stderr and appended to `skipped`."""
    from adapt.datasets.image_folder import UnreadableImage, read_images
    for name, image in read_images(input_dir, names):
        if isinstance(image, UnreadableImage):
            print(f'skipped {os.path.join(input_dir, name)}: {image}', file=sys.stderr, flush=True)
            skipped.append(name)
            continue
        yield os.path.splitext(name)[0], image.astype('float32') / 255.0


def split_batches(builder, split, image_key, batch_size, limit):
    """Yields (names, [B, H, W, 3] float32 in [0, 1]) from a TFDS split (images of one size per batch)."""
    import tensorflow as tf
    features = builder.info.features
    common.check_choice(f'image feature of {builder.info.full_name}', image_key,
                        [k for k in features.keys() if 'image' in k])
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if limit:
        ds = ds.take(limit)
    sequence = len(features[image_key].shape) == 4

    def pick(ex):
        image = ex[image_key]
        return tf.image.convert_image_dtype(image[0] if sequence else image, tf.float32)

    if sequence:
        ds = ds.filter(lambda ex: tf.shape(ex[image_key])[0] > 0)
    prefix, index = split.split('[')[0], 0
    for batch in ds.map(pick).batch(batch_size).as_numpy_iterator():
        yield [f'{prefix}_{index + i:05d}' for i in range(len(batch))], batch
        index += len(batch)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    if (FLAGS.input_dir is None) == (FLAGS.dataset is None):
        common.usage_error('give exactly one input: --input_dir, or --dataset with --split')
    if FLAGS.dataset is not None and FLAGS.split is None:
        common.usage_error('--dataset needs --split')
    if FLAGS.input_dir is not None and not os.path.isdir(FLAGS.input_dir):
        common.usage_error(f'--input_dir {FLAGS.input_dir} is not a directory')
    builder, names = None, None
    if FLAGS.input_dir is not None:
        names = folder_names(FLAGS.input_dir, FLAGS.limit)
    if FLAGS.dataset is not None:
        builder = common.check_dataset(FLAGS.dataset, FLAGS.data_dir)
        if FLAGS.split.split('[')[0] not in builder.info.splits:
            common.prepare(builder)
        common.check_split(builder, FLAGS.split)
    generator = load_generator(FLAGS.workdir, FLAGS.step)
    cfg, gen_params, step = generator.config, generator.params, generator.step

    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from adapt.models.unit import make_translate_fn
    translate = make_translate_fn(cfg, *DIRECTIONS[FLAGS.direction])
    size = FLAGS.image_size

    def run(images):
        if size:
            images = tf.clip_by_value(tf.image.resize(images, (size, size), antialias=True), 0.0, 1.0).numpy()
        return np.asarray(translate(gen_params, images))

    skipped = []
    if builder is None:
        batches = (([name], image[None]) for name, image in folder_images(FLAGS.input_dir, names, skipped))
    else:
        batches = split_batches(builder, FLAGS.split, FLAGS.image_key, FLAGS.batch_size, FLAGS.limit)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    count = 0
    for batch_names, images in batches:
        for name, image in zip(batch_names, run(images)):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(os.path.join(FLAGS.output_dir, f'{name}.png'))
            count += 1
    unread = f', {len(skipped)} unreadable files skipped' if skipped else ''
    print(f'translated {count} images {FLAGS.direction} with {FLAGS.workdir} (step {step}) -> {FLAGS.output_dir}'
          f'{unread}')


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
