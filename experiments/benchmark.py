"""Detector benchmark: train-step and inference throughput, compile time, memory, parameters and FLOPs.

    python -m experiments.benchmark                                   # the quick preset's SSD
    python -m experiments.benchmark --config=experiments/configs/ssd_full.py --batch_size=64 --json_out=b.json
    python -m experiments.benchmark --detectors=ssd,faster_rcnn,yolo     # the families side by side
    python -m experiments.benchmark --detector=translated --config.translated.unit_run=<train_unit workdir>

The measurements are adapt.benchmark's (see there): on random images with planted boxes (no
dataset needed), the training step of the preset's method (`--method`) and the inference function that
evaluation uses, timed whole and in its two parts (forward pass; decoding + per-class NMS), FLOPs per
image against the machine's matmul peak measured in the same run, and peak memory (device memory_stats()
where the backend has them, else the process's maximum RSS, which includes the Python runtime).
Single frames (`--frame_sizes`, default the training size and 1280x720; adapt.evaluation.efficiency.
frame_costs) are timed apart: the cost of deployment, where frames come one at a time; for the translated
family (online translation) the translation and the detection are also timed alone. The parts of one
Day2Night evaluation stage (prediction, COCO + VOC metrics and the bootstrap of AP50 and AP per test split,
and the proxy A-distance's features) are timed on copies of the random batch, with the protocol's sizes
(`--eval_images`, `--bootstrap_samples`, `--feature_images`).
"""
import json
import os

from absl import app, flags, logging

from experiments import common

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
FLAGS = flags.FLAGS
common.define_config(os.path.join(_CONFIGS, 'ssd_quick.py'))
flags.DEFINE_string('backbone', None, 'Backbone (default: the preset\'s).')
flags.DEFINE_string('detector', None, 'Detector family, e.g. ssd | faster_rcnn | yolo (default: the preset\'s).')
flags.DEFINE_list('detectors', None, 'Several families side by side (e.g. ssd,faster_rcnn,yolo), each timed in a '
                  'process of its own (so the peak memory is its own) with the other flags.')
flags.DEFINE_string('method', None, 'Training method whose step is timed (default: the preset\'s).')
flags.DEFINE_integer('batch_size', None, 'Global batch (default: the preset\'s).')
flags.DEFINE_integer('image_size', None, 'Square image size (default: the preset\'s).')
flags.DEFINE_integer('num_classes', 6, 'Object classes.')
flags.DEFINE_integer('steps', 20, 'Timed iterations (after warm-up).')
flags.DEFINE_integer('warmup', 3, 'Untimed iterations after compiling.')
flags.DEFINE_integer('matmul_size', 0, 'Side of the peak-FLOP/s matmul (0: 2048 on CPU, 8192 elsewhere).')
flags.DEFINE_string('json_out', None, 'Also write the results here as JSON.')
flags.DEFINE_string('frame_sizes', 'train,720x1280', 'Also time inference on single frames of these sizes '
                    '(HEIGHTxWIDTH or train; the translated family: translation and detection apart); "" = none.')
flags.DEFINE_string('run', None, 'Also time a finished detector run\'s forward pass and post-processing on real '
                    'images (its dataset, --split), and check its detections against the plain reference path.')
flags.DEFINE_string('split', 'validation_night', 'Split of the run\'s dataset for --run.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory for --run (default: the run\'s).')
flags.DEFINE_integer('eval_images', 250, 'Images per test split in the evaluation-stage figures (0: skip them).')
flags.DEFINE_integer('bootstrap_samples', 200, 'Bootstrap resamples per metric in the evaluation-stage figures.')
flags.DEFINE_integer('feature_images', 200, 'Images per domain for the proxy A-distance in those figures.')


def evaluation_table(e) -> str:
    return (f"evaluation stage   ~{e['stage_estimate']:.1f} s (3 test splits of {e['images']} images, features of 2 "
            f"domains); per split: predict {e['predict']:.2f} s, COCO + VOC metrics {e['metrics']:.2f} s, "
            f"bootstrap {e['bootstrap']:.2f} s (AP50 + AP, {e['bootstrap_samples']} resamples each); features "
            f"{e['features']:.2f} s per domain")


def parse_sizes(text, train_size):
    """`efficiency.parse_frame_sizes` with a malformed size as a usage error."""
    from adapt.evaluation.efficiency import parse_frame_sizes
    try:
        return parse_frame_sizes(text, train_size)
    except ValueError as error:
        common.usage_error(f'--frame_sizes: {error}')


def frame_table(rows) -> str:
    return '\n'.join(['per frame (batch 1)     ms     GFLOPs'] + [
        f"{r['size']:>9} {r['part']:<11} {r['ms']:7.2f} {r['gflops']:9.3f}" for r in rows])


def trained_run_input():
    """(run, builder, split) of --run / --split / --data_dir; usage errors for a bad run, dataset or split."""
    run = common.load_run(FLAGS.run, 'detector')
    builder = common.check_dataset(run.config.dataset, FLAGS.data_dir or run.data_dir)
    return run, builder, common.check_split(builder, FLAGS.split)


def table(r):
    rows = [
        ('device', f"{r['backend']} x{r['devices']} ({r['device_kind']})"),
        ('model', f"{r['detector']} / {r['backbone']} x{r['width']}, {r['image_size']} px, {r['num_anchors']} anchors"),
        ('method', r['method']),
        ('parameters', f"{r['parameters']:,}"),
        ('batch', f"{r['batch_size']}"),
        ('train step', f"{r['train_images_per_s']:.1f} images/s ({r['train_step_ms']:.1f} ms/step)"),
        ('train compile', f"{r['train_compile_s']:.2f} s"),
        ('inference', f"{r['infer_images_per_s']:.1f} images/s, {r['infer_ms_per_image']:.2f} ms/image (incl. NMS)"),
        ('  forward pass', f"{r['forward_ms_per_image']:.2f} ms/image"),
        ('  post-processing', f"{r['postprocess_ms_per_image']:.2f} ms/image (decoding + per-class NMS)"),
        ('inference compile', f"{r['infer_compile_s']:.2f} s"),
        ('FLOPs / image', f"train {r['train_gflops_per_image']:.3f} GFLOP, "
                          f"inference {r['infer_gflops_per_image']:.3f} GFLOP"),
        ('achieved', f"train {r['train_gflops_per_s']:.1f} GFLOP/s, inference {r['infer_gflops_per_s']:.1f} GFLOP/s"),
        ('peak (matmul)', f"{r['peak_gflops_per_s']:.1f} GFLOP/s ({r['matmul_size']}^2 float32)"),
        ('fraction of peak', f"train {100 * r['train_fraction_of_peak']:.1f} %, "
                             f"inference {100 * r['infer_fraction_of_peak']:.1f} %"),
        ('peak memory', f"{r['peak_memory_mib']:.0f} MiB ({r['peak_memory_kind']})"),
    ]
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


SIDE_BY_SIDE = [
    ('parameters', lambda r: f"{r['parameters']:,}"),
    ('GFLOPs / image, train', lambda r: f"{r['train_gflops_per_image']:.3f}"),
    ('GFLOPs / image, inference', lambda r: f"{r['infer_gflops_per_image']:.3f}"),
    ('train images / s', lambda r: f"{r['train_images_per_s']:.1f}"),
    ('inference ms / image', lambda r: f"{r['infer_ms_per_image']:.2f}"),
    ('  forward pass', lambda r: f"{r['forward_ms_per_image']:.2f}"),
    ('  post-processing', lambda r: f"{r['postprocess_ms_per_image']:.2f}"),
    ('train compile s', lambda r: f"{r['train_compile_s']:.1f}"),
    ('peak memory MiB', lambda r: f"{r['peak_memory_mib']:.0f}"),
]


def side_by_side(results) -> str:
    """One column per family (a Markdown table, for the README)."""
    first = results[0]
    head = (f"{first['backend']} x{first['devices']}, {first['image_size']} px, batch {first['batch_size']}, "
            f"{first['method']}")
    rows = [['', *(r['detector'] for r in results)], ['---'] * (len(results) + 1)]
    rows += [[name, *(fmt(r) for r in results)] for name, fmt in SIDE_BY_SIDE]
    return head + '\n' + '\n'.join('| ' + ' | '.join(row) + ' |' for row in rows)


def compare(names, argv):
    """Run this script once per family (`argv`: this run's flags but --detectors / --json_out) and collect
    their JSON results."""
    import subprocess
    import sys
    import tempfile
    from adapt.models.families import detector_families
    for name in names:
        common.check_choice('detector', name, [n for n in detector_families() if n in FLAGS.config])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = os.path.join(tmp, f'{name}.json')
            print(f'benchmarking {name} ...', flush=True)
            subprocess.run([sys.executable, '-m', 'experiments.benchmark', *argv, f'--detector={name}',
                            f'--json_out={out}'], check=True, stdout=subprocess.DEVNULL)
            with open(out) as f:
                results.append(json.load(f))
    return results


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.detectors:
        import sys
        own = [a for a in sys.argv[1:] if not a.startswith(('--detectors', '--json_out', '--detector='))]
        results = compare(FLAGS.detectors, own)
        print(side_by_side(results))
        if FLAGS.json_out:
            with open(FLAGS.json_out, 'w') as f:
                json.dump(results, f, indent=1)
        return
    config = FLAGS.config
    with config.unlocked():
        for key in ('detector', 'method', 'batch_size', 'image_size'):
            if getattr(FLAGS, key) is not None:
                config[key] = getattr(FLAGS, key)
    common.check_detector_family(config)
    common.set_backbone(config, FLAGS.backbone)
    common.check_method(config)
    from adapt import benchmark
    from adapt.evaluation.efficiency import frame_costs
    from adapt.training.config import image_size
    sizes = parse_sizes(FLAGS.frame_sizes, image_size(config))
    trained = FLAGS.run and trained_run_input()
    result = benchmark.throughput(config, FLAGS.num_classes, FLAGS.steps, FLAGS.warmup, FLAGS.matmul_size)
    print(table(result))
    if FLAGS.eval_images:
        result['evaluation_stage'] = benchmark.evaluation_stage(config, FLAGS.num_classes, FLAGS.eval_images,
                                                                FLAGS.bootstrap_samples, FLAGS.feature_images)
        print(evaluation_table(result['evaluation_stage']))
    if sizes:
        result['per_frame'] = frame_costs(config, FLAGS.num_classes, sizes, FLAGS.steps, FLAGS.warmup)
        print(frame_table(result['per_frame']))
    if trained:
        t = result['trained'] = {'run': FLAGS.run, **benchmark.trained_run(*trained, config.batch_size, FLAGS.steps,
                                                                          FLAGS.warmup)}
        agreement = (f", {t['images_identical_to_reference']}/{t['images']} images identical to the reference "
                     f"path (boxes within {t['max_box_difference']:.1e})" if 'max_box_difference' in t else '')
        print(f"trained run {t['run']} on {t['split']} ({t['images']} images): forward pass "
              f"{t['forward_ms_per_image']:.2f} ms/image, post-processing {t['postprocess_ms_per_image']:.2f} "
              f"ms/image; {t['detections']} detections{agreement}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
