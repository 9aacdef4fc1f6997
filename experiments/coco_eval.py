"""COCO bbox evaluation of a results file, with the same 12 numbers as pycocotools.

  python -m experiments.coco_eval --gt=GT.json --detections=DETS.json [--output=METRICS.json]

--gt is a COCO ground-truth file (images, annotations with id/image_id/category_id/bbox/area and optional
iscrowd, categories); --detections a COCO results list [{image_id, category_id, bbox: [x, y, w, h], score}].
Prints pycocotools' 12 summary lines, in its order and wording.

--output writes JSON with these keys:
  the 12 pycocotools line descriptions, e.g. "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all |
      maxDets=100 ]" (the printed line without the leading space and the " = value" part);
  the same 12 numbers under short names: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl;
  "stats": the 12 numbers as a list, in pycocotools' order (COCOeval.stats);
  "per_category": [{"id", "name", "AP", "AP50", "AP75"}] (area all, 100 detections per image).
A value of -1 means "no ground truth for this setting", as in pycocotools.

Bad input (unreadable or malformed JSON, missing keys, unknown image or category ids, non-finite scores,
negative box sizes, ...) prints one line naming the offending entry and exits with status 2.
"""
import json

from absl import app, flags

from adapt.evaluation import CocoFormatError, evaluate_coco, load_detections, load_ground_truth
from experiments.common import parse_flags, usage_error

flags.DEFINE_string('gt', None, 'COCO ground-truth JSON file.')
flags.DEFINE_string('detections', None, 'COCO detection-results JSON file (a list of results).')
flags.DEFINE_string('output', None, 'Optional JSON file for the metrics (keys: see the module help).')
flags.DEFINE_bool('per_category', False, 'Also print AP per category after the 12 lines.')
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        usage_error(f'unexpected arguments {argv[1:]}; use --gt=... --detections=...')
    if not FLAGS.gt or not FLAGS.detections:
        usage_error('both --gt=GT.json and --detections=DETS.json are required')
    try:
        gt = load_ground_truth(FLAGS.gt)
        result = evaluate_coco(gt, load_detections(FLAGS.detections, gt))
    except CocoFormatError as e:
        usage_error(str(e))
    print('\n'.join(result.summary_lines()))
    if FLAGS.per_category:
        for row in result.to_json()['per_category']:
            print(f'{row["name"]:>20s} (id {row["id"]}): AP {row["AP"]:0.3f}  AP50 {row["AP50"]:0.3f}  '
                  f'AP75 {row["AP75"]:0.3f}')
    if FLAGS.output:
        try:
            with open(FLAGS.output, 'w', encoding='utf-8') as f:
                json.dump(result.to_json(), f, indent=1)
        except OSError as e:
            usage_error(f'{FLAGS.output}: cannot write ({e.strerror})')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
