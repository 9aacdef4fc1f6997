"""Benchmark the daynight_synth renderer: images per second per domain and resolution, one process.

  taskset -c 0 python -m experiments.bench_renderer      # pinned to one core
  python -m experiments.bench_renderer --resolution=128 --domain=night --num_images=500
  python -m experiments.bench_renderer --resolution=128 --domain=night --severity=1   # with auto-exposure

One image = sample a scene + rasterise it + shade it in one domain (the work of one example of an
unpaired split). Prints wall-clock and CPU-time rates (CPU time is the fairer figure on a shared,
loaded machine), the per-stage CPU milliseconds, the cores the process may use and the load average.
"""
import os
import time

from absl import app, flags

from adapt.datasets.daynight_synth import exposure, raster, render
from adapt.datasets.daynight_synth.scene import DOMAINS, sample_scene, split_seed
from experiments.common import parse_flags

flags.DEFINE_multi_integer('resolution', [64, 128, 256], 'Square image sizes to time (repeatable).',
                           lower_bound=32)
flags.DEFINE_multi_enum('domain', list(DOMAINS), DOMAINS, 'Domains to time (repeatable).')
flags.DEFINE_integer('num_images', 300, 'Images per (resolution, domain).', lower_bound=1)
flags.DEFINE_integer('severity', exposure.UNEXPOSED.severity, 'Night severity level (exposure.LEVELS).',
                     lower_bound=1, upper_bound=len(exposure.LEVELS))
flags.DEFINE_integer('split_code', 1, 'Scene seeds: split code (1 = train_day).', lower_bound=0)
FLAGS = flags.FLAGS


def bench(resolution, domain, num_images, split_code, night=exposure.UNEXPOSED):
    """(wall images/s, CPU images/s, CPU ms per stage) over num_images scenes."""
    stages = {'sample': 0.0, 'raster': 0.0, 'shade': 0.0}
    wall0 = time.perf_counter()
    for i in range(num_images):
        t0 = time.process_time()
        scene = sample_scene(split_seed(split_code, i))
        t1 = time.process_time()
        geometry = raster.rasterize(scene, resolution)
        t2 = time.process_time()
        render.shade(scene, geometry, domain, night)
        t3 = time.process_time()
        stages['sample'] += t1 - t0
        stages['raster'] += t2 - t1
        stages['shade'] += t3 - t2
    wall = time.perf_counter() - wall0
    cpu = sum(stages.values())
    return num_images / wall, num_images / cpu, {k: 1e3 * v / num_images for k, v in stages.items()}


def main(argv):
    del argv
    print(f'cores usable: {sorted(os.sched_getaffinity(0))}; load average before: {os.getloadavg()}')
    bench(FLAGS.resolution[0], FLAGS.domain[0], 5, FLAGS.split_code)  # warm caches
    for resolution in FLAGS.resolution:
        for domain in FLAGS.domain:
            wall, cpu, ms = bench(resolution, domain, FLAGS.num_images, FLAGS.split_code,
                                  exposure.LEVELS[FLAGS.severity - 1])
            stage_text = ', '.join(f'{k} {v:.2f}' for k, v in ms.items())
            print(f'{resolution:4d} px {domain:6s}: {wall:7.1f} images/s wall, {cpu:7.1f} images/s CPU '
                  f'(CPU ms: {stage_text})')
    print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
