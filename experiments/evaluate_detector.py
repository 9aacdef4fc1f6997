"""Evaluate a trained detector's checkpoint on any split; write COCO-format detections and metrics.

    python -m experiments.evaluate_detector --workdir=/tmp/ssd_quick --split=validation_night

Reads the run's config.json and checkpoints/ (latest step unless --step), predicts the split and writes to
--output_dir (default <workdir>/eval): detections_<split>_<step>.json (COCO results list, pixel xywh,
category_id = label + 1), ground_truth_<split>_<step>.json (COCO ground truth of the same images) and
metrics_<split>_<step>.json (pycocotools' 12 numbers by name and description, per-class AP, VOC mAP).
Another dataset with the same classes can be given with --dataset (e.g. another resolution).
"""
import json
import os

from absl import app, flags, logging
import ml_collections

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir (config.json + checkpoints/).', required=True)
flags.DEFINE_string('split', None, 'Split to evaluate, e.g. validation_night or test_day[:100].', required=True)
flags.DEFINE_string('dataset', None, 'TFDS name[/config] (default: the one trained on).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: the training run\'s).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
flags.DEFINE_string('output_dir', None, 'Where to write the results (default: <workdir>/eval).')


def load_config(workdir):
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        common.usage_error(f'{path} not found: --workdir must be a train_detector workdir')
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = load_config(FLAGS.workdir)
    data_dir = FLAGS.data_dir or config.get('data_dir')
    builder = common.check_dataset(FLAGS.dataset or config.dataset, data_dir)
    common.prepare(builder)
    split = common.check_split(builder, FLAGS.split)
    from adapt.evaluation import write_json
    from adapt.methods.supervised import Evaluator, file_tag, restore_variables
    from adapt.training import make_mesh, replicate
    mesh = make_mesh()
    detector, variables, step = restore_variables(config, builder, FLAGS.workdir, FLAGS.step)
    evaluator = Evaluator(config, builder, detector, [split], mesh)
    metrics, _, gt, results = evaluator.evaluate(replicate(variables, mesh), split)
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, 'eval')
    os.makedirs(out, exist_ok=True)
    tag = f'{file_tag(split)}_{step}'
    write_json(results, os.path.join(out, f'detections_{tag}.json'))
    write_json(gt, os.path.join(out, f'ground_truth_{tag}.json'))
    with open(os.path.join(out, f'metrics_{tag}.json'), 'w') as f:
        json.dump({'step': step, 'dataset': builder.info.full_name, 'split': split, **metrics}, f, indent=1)
    print(f'{builder.info.full_name} {split}, checkpoint step {step}: {len(results)} detections on '
          f'{len(gt["images"])} images -> {out}')
    print(f"mAP@0.5 {metrics['AP50']:.4f}  mAP@[.5:.95] {metrics['AP']:.4f}  "
          f"VOC07 mAP {metrics.get('voc07_mAP', float('nan')):.4f}")


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
