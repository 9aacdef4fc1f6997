"""Online cost of translating night frames to day before detecting: latency and FLOPs per image.

    python -m experiments.bench_unit                                     # quick presets, random weights
    python -m experiments.bench_unit --unit_workdir=/tmp/unit_quick --detector_workdir=/tmp/ssd_quick
    python -m experiments.bench_unit --unit_config=experiments/configs/unit_full.py --sizes=256x256,720x1280

For each image size (default: the UNIT preset's training size and 1280x720) it times, at batch 1 (one
frame at a time, as online), the detector alone (SSD forward + decoding + NMS), the night->day UNIT
translation alone, and translation followed by detection in one jitted function
(adapt.evaluation.efficiency.translation_costs: the measurement); random weights unless workdirs are
given. Prints a Markdown table and writes --output (JSON) if given.
"""
import json
import os

from absl import app, flags

from experiments import common

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
FLAGS = flags.FLAGS
flags.DEFINE_string('unit_config', os.path.join(_CONFIGS, 'unit_quick.py'), 'UNIT preset (architecture).')
flags.DEFINE_string('unit_workdir', None, 'train_unit workdir: its run.json and latest checkpoint.')
flags.DEFINE_string('detector_config', os.path.join(_CONFIGS, 'ssd_quick.py'), 'Detector preset.')
flags.DEFINE_string('detector_workdir', None, 'Detector run workdir: its run.json and latest checkpoint.')
flags.DEFINE_string('sizes', None, 'Comma-separated HxW sizes or train (default: the UNIT training size and '
                    '720x1280).')
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


def _parse_sizes(text, train_size):
    """`efficiency.parse_frame_sizes` ('train': `train_size`) with sides >= 32, else a usage error."""
    from adapt.evaluation.efficiency import parse_frame_sizes
    try:
        sizes = parse_frame_sizes(text.lower(), train_size)
    except ValueError:
        sizes = []
    if not sizes or min(min(s) for s in sizes) < 32:
        common.usage_error(f'--sizes={text!r}: expected HxW pairs such as 64x64,720x1280 (sides >= 32)')
    return sizes


def main(argv):
    del argv
    import jax
    from adapt.datasets.daynight_synth import CLASS_NAMES
    from adapt.evaluation.efficiency import translation_costs
    from adapt.models.unit import UNITConfig
    from adapt.run_models import run_generator

    if FLAGS.unit_workdir:
        unit_run = common.load_run(FLAGS.unit_workdir, 'unit')
        generator, train_size = run_generator(unit_run), unit_run.config.image_size
        cfg, gen_params = generator.config, generator.params
    else:
        unit_config = _load_config(FLAGS.unit_config)
        cfg, train_size = UNITConfig.from_mapping(unit_config.model), unit_config.image_size
        gen_params = None
    if FLAGS.detector_workdir:
        det_run = common.load_run(FLAGS.detector_workdir, 'detector')
        det_config, det_variables, num_classes = det_run.config, det_run.variables(), len(det_run.class_names)
    else:
        det_config, det_variables, num_classes = _load_config(FLAGS.detector_config), None, len(CLASS_NAMES)
    train_size = (train_size,) * 2 if isinstance(train_size, int) else tuple(train_size)
    sizes = _parse_sizes(FLAGS.sizes or 'train,720x1280', train_size)
    kind = det_config.get('detector', 'ssd')
    parameters, rows = translation_costs(cfg, gen_params, det_config, det_variables, num_classes, sizes,
                                         FLAGS.repeats)
    header = (f'UNIT generator (encoder b + decoder a used online): dim {cfg.dim}, n_res {cfg.n_res}, '
              f'{parameters:,} parameters in all; detector: {kind} {det_config[kind].model.backbone} '
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
