"""Detector benchmark: train-step and inference throughput, compile time, memory, parameters and FLOPs.

    python -m experiments.benchmark                                   # the quick preset's SSD
    python -m experiments.benchmark --config=experiments/configs/ssd_full.py --batch_size=64 --json_out=b.json
    python -m experiments.benchmark --detectors=ssd,faster_rcnn,yolo     # the families side by side
    python -m experiments.benchmark --detector=translated --config.translated.unit_run=<train_unit workdir>

Runs on random images with planted boxes (no dataset needed), with the training step that
train_detector / adapt_detector use for the preset's method (`--method`; data-parallel over all local
devices, target assignment included) and the inference function that evaluation uses, timed whole and
in its two parts: the network's forward pass and the post-processing (decoding + per-class NMS). FLOPs per image come from
XLA's cost analysis of the compiled programs (per device program x devices / global batch); the
machine's peak is measured in the same run with a large float32 matmul, so "fraction of peak" compares
like with like. Peak memory: device memory_stats() where the backend has them (GPU/TPU), else the
process's maximum resident set size (resource.getrusage), which includes the Python runtime.
Single frames (`--frame_sizes`, default the training size and 1280x720) are timed apart: the cost of
deployment, where frames come one at a time; for the translated family (online translation) the
translation and the detection are also timed alone. The parts of one Day2Night evaluation stage
(`adapt.evaluation.efficiency.evaluation_parts`: prediction, COCO + VOC metrics and the bootstrap of AP50
and AP per test split, and the proxy A-distance's features) are timed on copies of the random batch,
with the protocol's sizes (`--eval_images`, `--bootstrap_samples`, `--feature_images`).
"""
import json
import os
import resource
import time

from absl import app, flags, logging
import numpy as np

from adapt.evaluation.efficiency import evaluation_parts, flops_of, frame_costs, parse_frame_sizes, timed
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


def random_batch(batch_size, image_size, max_boxes, num_classes, seed=0):
    """Images in [0, 1] and 1..max_boxes/2 random boxes per image (what the pipeline yields)."""
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0.0, 0.7, (batch_size, max_boxes, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.3, (batch_size, max_boxes, 2))], -1).clip(0, 1)
    count = rng.integers(1, max(max_boxes // 2, 1) + 1, batch_size)
    mask = np.arange(max_boxes)[None] < count[:, None]
    labels = np.where(mask, rng.integers(0, num_classes, (batch_size, max_boxes)), -1)
    return {'image': rng.uniform(0, 1, (batch_size, image_size, image_size, 3)).astype(np.float32),
            'boxes': boxes.astype(np.float32), 'labels': labels.astype(np.int32), 'mask': mask}


def peak_matmul_flops(n):
    """Achieved FLOP/s of an n x n float32 matmul: the machine's practical peak."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    seconds = timed(lambda: mm(a, b).block_until_ready(), steps=5, warmup=2)
    return 2.0 * n ** 3 / seconds


def peak_memory():
    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
        return 'device peak', stats['peak_bytes_in_use'] / 2 ** 20
    return 'process max RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(config, num_classes, steps, warmup, matmul_size=0):
    """All the figures as a dict (see the module docstring)."""
    import jax
    from adapt.trainers.detection import init_state, setup
    from adapt.models.data_settings import settings_family
    from adapt.models.families import with_box_settings
    from adapt.models.inference import make_predict_fn
    from adapt.training import data_parallel, make_mesh, replicate, shard_batch

    mesh = make_mesh()
    devices = mesh.size
    planted = random_batch(config.batch_size, config.image_size, config.max_boxes, num_classes)
    # a family's data-derived settings (YOLO's priors) come from the boxes planted in the random images
    config = with_box_settings(config, planted['boxes'][planted['mask']], 'the random batch', print_fn=lambda _: None)
    s = setup(config, num_classes)
    detector = s.detector
    state = replicate(init_state(config, s), mesh)
    one = lambda seed: random_batch(config.batch_size, config.image_size, config.max_boxes, num_classes, seed)  # noqa: E731
    batch = shard_batch({'source': one(0), 'target': one(1)}, mesh)
    params = sum(x.size for x in jax.tree.leaves(state.params['detector']))

    step = data_parallel(s.step(config), mesh)
    t0 = time.perf_counter()
    train_compiled = step.lower(state, batch).compile()
    train_compile = time.perf_counter() - t0
    holder = [state]

    def train_once():
        holder[0], metrics, _ = train_compiled(holder[0], batch)
        jax.block_until_ready(metrics)
    step_s = timed(train_once, steps, warmup)

    images = batch['source']['image']
    predict = make_predict_fn(detector, mesh)
    variables = {'params': holder[0].params['detector'], 'batch_stats': holder[0].batch_stats}
    t0 = time.perf_counter()
    infer_compiled = predict.lower(variables, images).compile()
    infer_compile = time.perf_counter() - t0
    infer_s = timed(lambda: jax.block_until_ready(infer_compiled(variables, images)), steps, warmup)
    local_images, local_vars = jax.device_get((images, variables))  # on one device: the two parts alone
    forward = jax.jit(lambda v, x: detector.apply(v, x)[0]).lower(local_vars, local_images).compile()
    outputs = forward(local_vars, local_images)
    post = jax.jit(detector.postprocess).lower(outputs).compile()
    forward_s = timed(lambda: jax.block_until_ready(forward(local_vars, local_images)), steps, warmup)
    post_s = timed(lambda: jax.block_until_ready(post(outputs)), steps, warmup)

    b = config.batch_size
    train_flops = flops_of(train_compiled) * devices / b
    infer_flops = flops_of(infer_compiled) * devices / b
    n = matmul_size or (2048 if jax.default_backend() == 'cpu' else 8192)
    peak = peak_matmul_flops(n)
    mem_kind, mem_mib = peak_memory()
    model = config[settings_family(config)].model
    return {
        'backend': jax.default_backend(), 'devices': devices, 'device_kind': jax.devices()[0].device_kind,
        'backbone': model.get('backbone', 'none'), 'width': model.get('width', 1.0), 'detector': config.detector,
        'method': config.method,
        'image_size': config.image_size, 'batch_size': b, 'num_anchors': len(getattr(detector, 'anchors', ())),
        'parameters': int(params),
        'train_compile_s': train_compile, 'train_step_ms': step_s * 1e3, 'train_images_per_s': b / step_s,
        'infer_compile_s': infer_compile, 'infer_images_per_s': b / infer_s, 'infer_ms_per_image': infer_s * 1e3 / b,
        'forward_ms_per_image': forward_s * 1e3 / b, 'postprocess_ms_per_image': post_s * 1e3 / b,
        'train_gflops_per_image': train_flops / 1e9, 'infer_gflops_per_image': infer_flops / 1e9,
        'train_gflops_per_s': train_flops * b / step_s / 1e9, 'infer_gflops_per_s': infer_flops * b / infer_s / 1e9,
        'matmul_size': n, 'peak_gflops_per_s': peak / 1e9,
        'train_fraction_of_peak': train_flops * b / step_s / peak,
        'infer_fraction_of_peak': infer_flops * b / infer_s / peak,
        'peak_memory_kind': mem_kind, 'peak_memory_mib': mem_mib,
    }


def evaluation_stage(config, num_classes) -> dict:
    """`evaluation_parts` (seconds) of the config's detector (random weights) on one test split, and the
    whole stage's estimate: three test splits, the features of two domains."""
    import jax
    from adapt.run_models import build_detector
    detector = build_detector(config, num_classes)
    batch = random_batch(config.eval_batch_size, config.image_size, config.max_boxes, num_classes)
    parts = evaluation_parts(detector, jax.device_get(detector.init(jax.random.key(0))), batch, FLAGS.eval_images,
                             tuple(f'class{i}' for i in range(num_classes)), FLAGS.bootstrap_samples,
                             FLAGS.feature_images)
    split = parts['predict'] + parts['metrics'] + parts['bootstrap']
    return {**parts, 'images': FLAGS.eval_images, 'bootstrap_samples': FLAGS.bootstrap_samples,
            'stage_estimate': 3 * split + 2 * parts['features']}


def evaluation_table(e) -> str:
    return (f"evaluation stage   ~{e['stage_estimate']:.1f} s (3 test splits of {e['images']} images, features of 2 "
            f"domains); per split: predict {e['predict']:.2f} s, COCO + VOC metrics {e['metrics']:.2f} s, "
            f"bootstrap {e['bootstrap']:.2f} s (AP50 + AP, {e['bootstrap_samples']} resamples each); features "
            f"{e['features']:.2f} s per domain")


def parse_sizes(text, train_size):
    """`efficiency.parse_frame_sizes` with a malformed size as a usage error."""
    try:
        return parse_frame_sizes(text, train_size)
    except ValueError as error:
        common.usage_error(f'--frame_sizes: {error}')


def frame_table(rows) -> str:
    return '\n'.join(['per frame (batch 1)     ms     GFLOPs'] + [
        f"{r['size']:>9} {r['part']:<11} {r['ms']:7.2f} {r['gflops']:9.3f}" for r in rows])


def trained(workdir, split, batch_size, steps, warmup, data_dir=None):
    """Forward pass and post-processing (ms/image) of a finished run on the first `batch_size` images of
    `split`; for a family with SSD's head, also how many images get exactly the plain reference path's
    detections (decode every anchor, clip, `adapt.nms.multiclass_non_max_suppression` per image)."""
    import jax
    import ml_collections
    from adapt.evaluation.detector_eval import eval_pipeline
    from adapt.models.ssd import SSDDetector
    from adapt.run_models import run_detector
    from adapt.runs import RunError, load_run
    try:
        run = load_run(workdir, 'detector')
    except RunError as error:
        common.usage_error(str(error))
    config = ml_collections.ConfigDict({**run.config.to_dict(), 'eval_batch_size': batch_size, 'eval_examples': 0})
    builder = common.check_dataset(config.dataset, data_dir or run.data_dir)
    common.check_split(builder, split)
    images = next(eval_pipeline(config, builder, f'{split}[:{batch_size}]'))['image']
    detector, variables = run_detector(run), run.variables()
    forward = jax.jit(lambda v, x: detector.apply(v, x)[0])
    post = jax.jit(detector.postprocess)
    outputs = forward(variables, images)
    forward_s = timed(lambda: jax.block_until_ready(forward(variables, images)), steps, warmup)
    post_s = timed(lambda: jax.block_until_ready(post(outputs)), steps, warmup)
    fast = jax.device_get(post(outputs))
    result = {'run': workdir, 'split': split, 'images': len(images), 'forward_ms_per_image': forward_s * 1e3 / len(images),
              'postprocess_ms_per_image': post_s * 1e3 / len(images), 'detections': int(fast.num_valid.sum())}
    if isinstance(detector, SSDDetector):
        result.update(reference_agreement(detector, outputs, fast))
    return result


def reference_agreement(detector, outputs, fast) -> dict:
    """Images whose fast post-processing equals the plain reference path's, and the largest box gap."""
    import jax
    from adapt.boxes import clip_boxes, decode_boxes
    from adapt.models.ssd import class_scores
    from adapt.nms import multiclass_non_max_suppression
    settings = detector.postprocess_settings
    boxes = clip_boxes(decode_boxes(outputs['box_codes'], detector.anchors))
    scores = class_scores(outputs['cls_logits'], detector.score_kind)
    reference = jax.device_get(jax.vmap(lambda b, c: multiclass_non_max_suppression(
        b, c, settings['iou_threshold'], settings['max_detections'], settings['score_threshold'],
        pre_nms_top_k=settings['pre_nms_top_k']))(boxes, scores))
    same = ((fast.num_valid == reference.num_valid) & (fast.classes == reference.classes).all(1)
            & (fast.scores == reference.scores).all(1))
    return {'images_identical_to_reference': int(same.sum()),
            'max_box_difference': float(abs(fast.boxes - reference.boxes).max())}


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
    from adapt.training.config import image_size
    sizes = parse_sizes(FLAGS.frame_sizes, image_size(config))
    result = run(config, FLAGS.num_classes, FLAGS.steps, FLAGS.warmup, FLAGS.matmul_size)
    print(table(result))
    if FLAGS.eval_images:
        result['evaluation_stage'] = evaluation_stage(config, FLAGS.num_classes)
        print(evaluation_table(result['evaluation_stage']))
    if sizes:
        result['per_frame'] = frame_costs(config, FLAGS.num_classes, sizes, FLAGS.steps, FLAGS.warmup)
        print(frame_table(result['per_frame']))
    if FLAGS.run:
        t = result['trained'] = trained(FLAGS.run, FLAGS.split, config.batch_size, FLAGS.steps, FLAGS.warmup,
                                        FLAGS.data_dir)
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
