"""Run a trained detector on a folder of images or on a TFDS split; write COCO-format detections.

    python -m experiments.detect --workdir=/tmp/ssd_quick --images=photos/ --output_dir=/tmp/photos_dets
    python -m experiments.detect --workdir=/tmp/ssd_quick --split=validation_night --output_dir=/tmp/night

--workdir is any detector run (train_detector or adapt_detector; the EMA when the run kept one; the latest
checkpoint unless --step). Give exactly one input:
  --images=DIR   every .jpg/.jpeg/.png/.bmp/.gif/.webp file in DIR (not its subfolders), in name order; writes
                 detections.json (COCO results: image_id, category_id = label + 1, bbox pixel [x, y, w, h] in
                 each original image, score) and images.json (COCO images id/file_name/width/height and the
                 categories, no annotations: pycocotools loads the pair). A file that cannot be read is
                 reported on one line ('skipped <file>: <reason>') and skipped.
  --split=SPLIT  a split of --dataset (default: the run's) in --data_dir (default: the run's); writes
                 detections.json, ground_truth.json and metrics.json and prints COCO AP and AP50.
Images are resized to the detector's input size as the evaluation pipeline does (adapt.detect). Both write
drawn/<name>.png: the first --num_draw images with the detections of score >= --min_score. The last line
is '<N> images, <K> detections, <S> skipped'. A bad flag, workdir, folder or split is one line on stderr
with exit status 2.
"""
import os

# TensorFlow's image decoders log a line of their own for every corrupt file, which we report ourselves.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402

from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_detector_run_flags()
flags.DEFINE_string('output_dir', None, 'Where detections.json and drawn/ go.', required=True)
flags.DEFINE_string('images', None, 'A folder of image files ...')
flags.DEFINE_string('split', None, '... or a TFDS split, e.g. validation_night or test_day[:100].')
flags.DEFINE_string('domain', 'target', 'Which input a folder\'s images are (source or target), for detectors '
                    'with domain-specific layers (shared_latent); a split is routed by its name.')
flags.DEFINE_integer('batch_size', 16, 'Images per batch (rounded up to a multiple of the device count).',
                     lower_bound=1)
flags.DEFINE_integer('num_draw', 16, 'Images drawn with their detections (0: none).', lower_bound=0)
flags.DEFINE_float('min_score', 0.3, 'Lowest score drawn (detections.json keeps every detection).')


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO
    from adapt.datasets.image_folder import FolderError, list_images
    if (FLAGS.images is None) == (FLAGS.split is None):
        common.usage_error('give exactly one input: --images=DIR or --split=SPLIT')
    if FLAGS.images is not None:
        if FLAGS.dataset is not None or FLAGS.data_dir is not None:
            common.usage_error('--dataset and --data_dir go with --split, not --images')
        try:
            list_images(FLAGS.images)
        except FolderError as error:
            common.usage_error(str(error))
    from adapt.run_models import run_detector
    run = common.load_run(FLAGS.workdir, 'detector', FLAGS.step)

    from adapt import detect
    detector = run_detector(run)
    names = run.class_names or tuple(str(c) for c in range(detector.num_classes))
    options = dict(batch_size=FLAGS.batch_size, num_draw=FLAGS.num_draw, min_score=FLAGS.min_score)
    if FLAGS.images is not None:
        detected = detect.detect_folder(detector.for_input(FLAGS.domain), run.variables(), FLAGS.images, names,
                                        **options)
        source = FLAGS.images
    else:
        builder = common.check_dataset(FLAGS.dataset or run.config.dataset, FLAGS.data_dir or run.data_dir)
        common.prepare(builder)
        split = common.check_split(builder, FLAGS.split)
        from adapt.evaluation.detector_eval import class_names
        if run.class_names and run.class_names != class_names(builder):
            common.usage_error(f'{builder.info.full_name} has classes {", ".join(class_names(builder))}; the run '
                               f'was trained on {", ".join(names)}')
        detected = detect.detect_split(detector, run.variables(), run.config, builder, split, **options)
        source = f'{builder.info.full_name} {split}'
    detect.write_outputs(FLAGS.output_dir, detected, names)
    evaluated = 'ema' if run.uses_ema else 'model'
    print(f'{source}, checkpoint step {run.step} ({evaluated}) -> {FLAGS.output_dir}')
    if detected.metrics is not None:
        print(f"AP {detected.metrics['AP']:.4f}  AP50 {detected.metrics['AP50']:.4f}")
    print(detected.summary())


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
