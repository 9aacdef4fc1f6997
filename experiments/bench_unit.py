"""Online cost of translating night frames to day before detecting: latency and FLOPs per image.

    python -m experiments.bench_unit                                     # quick presets, random weights
    python -m experiments.bench_unit --unit_workdir=/tmp/unit_quick --detector_workdir=/tmp/ssd_quick
    python -m experiments.bench_unit --unit_config=experiments/configs/unit_full.py --sizes=256x256,720x1280

For each image size (default: the UNIT preset's training size and 1280x720) it times, at batch 1 (one
frame at a time, as online), the detector alone (SSD forward + decoding + NMS), the night->day UNIT
translation alone, and translation followed by detection in one jitted function; FLOPs are XLA's cost
analysis of the forward passes (the NMS loop is not counted). Weights do not change the cost of the
networks, so random weights are used unless workdirs are given (a trained detector's scores change the
NMS work a little). Prints a Markdown table and writes --output (JSON) if given.
"""
import json
import os
import time

from absl import app, flags

from experiments import common

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
FLAGS = flags.FLAGS
flags.DEFINE_string('unit_config', os.path.join(_CONFIGS, 'unit_quick.py'), 'UNIT preset (architecture).')
flags.DEFINE_string('unit_workdir', None, 'train_unit workdir: its run.json and latest checkpoint.')
flags.DEFINE_string('detector_config', os.path.join(_CONFIGS, 'ssd_quick.py'), 'Detector preset.')
flags.DEFINE_string('detector_workdir', None, 'Detector run workdir: its run.json and latest checkpoint.')
flags.DEFINE_string('sizes', None, 'Comma-separated HxW sizes (default: the UNIT training size and 720x1280).')
flags.DEFINE_integer('repeats', 10, 'Timed runs per measurement (after one warm-up run).', lower_bound=1)
flags.DEFINE_string('output', None, 'Write the results here as JSON.')


def _load_config(path):
    import importlib.util
    if not os.path.exists(path):
        common.usage_error(f'no such config file: {path}')
    spec = importlib.util.spec_from_file_location('preset', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _parse_sizes(text):
    try:
        sizes = [tuple(int(v) for v in s.lower().split('x')) for s in text.split(',') if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(len(s) != 2 or min(s) < 32 for s in sizes):
        common.usage_error(f'--sizes={text!r}: expected HxW pairs such as 64x64,720x1280 (sides >= 32)')
    return sizes


def _time(fn, *args, repeats):
    import jax
    import numpy as np
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _flops(fn, *args):
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', float('nan')))


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    from adapt.datasets.daynight_synth import CLASS_NAMES
    from adapt.models.inference import make_predict_fn
    from adapt.models.unit import UNIT, UNITConfig, init_params, make_translate_fn
    from adapt.run_models import build_detector, run_generator
    from adapt.runs import RunError, load_run

    def run_of(workdir, kind):
        try:
            return load_run(workdir, kind)
        except RunError as error:
            common.usage_error(str(error))

    if FLAGS.unit_workdir:
        unit_run = run_of(FLAGS.unit_workdir, 'unit')
        generator, train_size = run_generator(unit_run), unit_run.config.image_size
        cfg, gen_params = generator.config, generator.params
    else:
        unit_config = _load_config(FLAGS.unit_config)
        cfg, train_size = UNITConfig.from_mapping(unit_config.model), unit_config.image_size
        gen_params = None
    if FLAGS.detector_workdir:
        det_run = run_of(FLAGS.detector_workdir, 'detector')
        det_config, det_variables, num_classes = det_run.config, det_run.variables(), len(det_run.class_names)
    else:
        det_config, det_variables, num_classes = _load_config(FLAGS.detector_config), None, len(CLASS_NAMES)
    train_size = (train_size,) * 2 if isinstance(train_size, int) else tuple(train_size)
    sizes = _parse_sizes(FLAGS.sizes) if FLAGS.sizes else [train_size, (720, 1280)]
    kind = det_config.get('detector', 'ssd')
    rows = []
    for h, w in sizes:
        if gen_params is None:
            gen_params = init_params(cfg, jax.random.PRNGKey(0), (h, w))['gen']
        sized = ml_collections.ConfigDict({**det_config.to_dict(), 'image_size': (h, w)})
        detector = build_detector(sized, num_classes)
        variables = det_variables or jax.device_get(detector.init(jax.random.PRNGKey(1)))
        predict = make_predict_fn(detector)
        translate = make_translate_fn(cfg, 'b', 'a')
        both = jax.jit(lambda g, v, x: predict(v, translate(g, x)))
        image = jnp.asarray(np.random.default_rng(0).random((1, h, w, 3), np.float32))
        forward = jax.jit(lambda v, x: detector.apply(v, x)[0])
        gen_forward = jax.jit(lambda g, x: UNIT(cfg).apply({'params': g}, x * 2 - 1, 'b', 'a', method=UNIT.translate))
        row = {'size': f'{h}x{w}',
               'detect_ms': 1e3 * _time(predict, variables, image, repeats=FLAGS.repeats),
               'translate_ms': 1e3 * _time(translate, gen_params, image, repeats=FLAGS.repeats),
               'translate_detect_ms': 1e3 * _time(both, gen_params, variables, image, repeats=FLAGS.repeats),
               'detect_gflops': _flops(forward, variables, image) / 1e9,
               'translate_gflops': _flops(gen_forward, gen_params, image) / 1e9}
        row['total_gflops'] = row['detect_gflops'] + row['translate_gflops']
        row['latency_factor'] = row['translate_detect_ms'] / row['detect_ms']
        rows.append(row)
    count = lambda t: sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(t))  # noqa: E731
    header = (f'UNIT generator (encoder b + decoder a used online): dim {cfg.dim}, n_res {cfg.n_res}, '
              f'{count(gen_params):,} parameters in all; detector: {kind} {det_config[kind].model.backbone} '
              f'x{det_config[kind].model.width}; batch 1, {FLAGS.repeats} runs, median; {jax.devices()[0].platform}, '
              f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}')
    print(header)
    print('| size | detect (ms) | translate (ms) | translate + detect (ms) | x latency | detect GFLOPs | '
          'translate GFLOPs | x FLOPs |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['size']} | {r['detect_ms']:.1f} | {r['translate_ms']:.1f} | {r['translate_detect_ms']:.1f} | "
              f"{r['latency_factor']:.1f} | {r['detect_gflops']:.2f} | {r['translate_gflops']:.2f} | "
              f"{r['total_gflops'] / r['detect_gflops']:.1f} |")
    if FLAGS.output:
        with open(FLAGS.output, 'w') as f:
            json.dump({'setup': header, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    app.run(main, flags_parser=common.parse_flags)
