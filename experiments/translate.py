"""Translate images with a trained UNIT checkpoint (night -> day or day -> night); writes PNG files.

    python -m experiments.translate --workdir=/tmp/unit_quick --input_dir=photos/ --output_dir=out/
    python -m experiments.translate --workdir=/tmp/unit_quick --dataset=daynight_synth/r64_small \
        --split=test_night --output_dir=out/ --direction=night2day --limit=100
    python -m experiments.translate ... --split=paired --image_key=image_night     # the paired night renders

--workdir is a train_unit workdir (run.json + checkpoints/). Domain a of the training run is day,
b is night, so night2day runs b -> a. Images keep their size (--image_size=0, padded internally to a
multiple of the model's stride) or are resized to a square --image_size first. Folder inputs keep their
file names (as .png); split inputs are written as <split>_<index>.png. A bad flag value gives one line
and exit status 2.
"""
import os

from absl import app, flags, logging

from experiments import common

DIRECTIONS = {'night2day': ('b', 'a'), 'day2night': ('a', 'b')}
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
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


def folder_images(input_dir, limit):
    """Yields (name, [H, W, 3] float32 in [0, 1]) for the image files of a folder, sorted by name."""
    import numpy as np
    from PIL import Image
    names = sorted(n for n in os.listdir(input_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        common.usage_error(f'no image files ({", ".join(IMAGE_EXTENSIONS)}) in {input_dir}')
    for name in names[:limit or None]:
        with Image.open(os.path.join(input_dir, name)) as image:
            yield os.path.splitext(name)[0], np.asarray(image.convert('RGB'), np.float32) / 255.0


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
    builder = None
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

    if builder is None:
        batches = ((([name], image[None])) for name, image in folder_images(FLAGS.input_dir, FLAGS.limit))
    else:
        batches = split_batches(builder, FLAGS.split, FLAGS.image_key, FLAGS.batch_size, FLAGS.limit)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    count = 0
    for names, images in batches:
        for name, image in zip(names, run(images)):
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(os.path.join(FLAGS.output_dir, f'{name}.png'))
            count += 1
    print(f'translated {count} images {FLAGS.direction} with {FLAGS.workdir} (step {step}) -> {FLAGS.output_dir}')


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
