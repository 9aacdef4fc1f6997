"""What a model costs: seconds per call, XLA's FLOP count, and per-frame inference cost (deployment, where
frames come one at a time). Shared by experiments/benchmark.py and the Day2Night report."""
import time

import numpy as np


def timed(fn, steps, warmup):
    """Seconds per call of `fn()` (which must block until its results are ready)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def flops_of(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get('flops', float('nan')))


def parse_frame_sizes(text, train_size):
    """'train,720x1280' -> [(h, w), ...] ('train': `train_size`); ValueError for a malformed size."""
    sizes = []
    for item in (x.strip() for x in text.split(',') if x.strip()):
        if item == 'train':
            sizes.append(tuple(train_size))
            continue
        h, sep, w = item.partition('x')
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise ValueError(f'{item!r} is not HEIGHTxWIDTH (e.g. 720x1280) or train')
        sizes.append((int(h), int(w)))
    return sizes


def frame_costs(config, num_classes, sizes, steps=5, warmup=1):
    """Inference on one frame (batch 1, one device) at each (h, w) of `sizes`: ms and GFLOPs of the whole
    detector (forward pass + post-processing) and, for the translated family, of the translation and the
    detection alone -> [{'size', 'part', 'ms', 'gflops'}]."""
    import jax
    import ml_collections
    from adapt.run_models import build_detector
    from adapt.models.translated import TranslatedDetector
    rows = []
    for h, w in sizes:
        sized = ml_collections.ConfigDict({**config.to_dict(), 'image_size': (h, w)})  # int field: rebuild
        detector = build_detector(sized, num_classes)
        variables = jax.device_get(detector.init(jax.random.key(0, impl='rbg')))
        frame = np.random.default_rng(0).uniform(0, 1, (1, h, w, 3)).astype(np.float32)
        parts = {'detector': lambda v, x, d=detector: d.postprocess(d.apply(v, x)[0])}
        if isinstance(detector, TranslatedDetector):
            inner = detector.inner
            parts['translation'] = lambda v, x: detector.translate(x)
            parts['detection'] = lambda v, x: inner.postprocess(inner.apply(v, x)[0])
        for part, fn in parts.items():
            compiled = jax.jit(fn).lower(variables, frame).compile()
            ms = timed(lambda: jax.block_until_ready(compiled(variables, frame)), steps, warmup) * 1e3
            rows.append({'size': f'{h}x{w}', 'part': part, 'ms': ms, 'gflops': flops_of(compiled) / 1e9})
    return rows
