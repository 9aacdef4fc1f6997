"""Evaluate a trained detector's checkpoint on any split; write COCO-format detections and metrics.

    python -m experiments.evaluate_detector --workdir=/tmp/ssd_quick --split=validation_night

Reads the run's run.json and checkpoints/ (any detector run: train_detector or adapt_detector; the EMA when
the run kept one) (latest step unless --step), predicts the split and writes to
--output_dir (default <workdir>/eval): detections_<split>_<step>.json (COCO results list, pixel xywh,
category_id = label + 1), ground_truth_<split>_<step>.json (COCO ground truth of the same images) and
metrics_<split>_<step>.json (pycocotools' 12 numbers by name and description, per-class AP, VOC mAP).
Another dataset with the same classes can be given with --dataset (e.g. another resolution).
"""
import json
import os

from absl import app, flags, logging

from experiments import common

FLAGS = flags.FLAGS
common.define_detector_run_flags()
flags.DEFINE_string('split', None, 'Split to evaluate, e.g. validation_night or test_day[:100].', required=True)
flags.DEFINE_string('output_dir', None, 'Where to write the results (default: <workdir>/eval).')


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from adapt.run_models import run_detector
    run = common.load_run(FLAGS.workdir, 'detector', FLAGS.step)
    config = run.config
    builder = common.check_dataset(FLAGS.dataset or config.dataset, FLAGS.data_dir or run.data_dir)
    common.prepare(builder)
    split = common.check_split(builder, FLAGS.split)
    from adapt.evaluation import write_json
    from adapt.evaluation.detector_eval import Evaluator, file_tag
    from adapt.training import make_mesh, replicate
    mesh = make_mesh()
    evaluator = Evaluator(config, builder, run_detector(run), [split], mesh)
    metrics, _, gt, results = evaluator.evaluate(replicate(run.variables(), mesh), split)
    out = FLAGS.output_dir or os.path.join(FLAGS.workdir, 'eval')
    os.makedirs(out, exist_ok=True)
    tag = f'{file_tag(split)}_{run.step}'
    write_json(results, os.path.join(out, f'detections_{tag}.json'))
    write_json(gt, os.path.join(out, f'ground_truth_{tag}.json'))
    evaluated = 'ema' if run.uses_ema else 'model'
    with open(os.path.join(out, f'metrics_{tag}.json'), 'w') as f:
        json.dump({'step': run.step, 'dataset': builder.info.full_name, 'split': split, 'evaluated': evaluated,
                   **metrics}, f, indent=1)
    print(f'{builder.info.full_name} {split}, checkpoint step {run.step} ({evaluated}): {len(results)} detections '
          f'on {len(gt["images"])} images -> {out}')
    print(f"mAP@0.5 {metrics['AP50']:.4f}  mAP@[.5:.95] {metrics['AP']:.4f}  "
          f"VOC07 mAP {metrics.get('voc07_mAP', float('nan')):.4f}")


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
