"""What a model costs: seconds per call, XLA's FLOP count, the machine's peaks, per-frame inference cost
(deployment, where frames come one at a time) and the parts of an evaluation stage. Shared by the
benchmarks (adapt.benchmark, experiments/bench_unit.py) and the Day2Night report."""
import time

import numpy as np


def call_seconds(fn, steps, warmup) -> np.ndarray:
    """Seconds of each of `steps` calls of `fn()` (which must block until its results are ready), after
    `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds)


def timed(fn, steps, warmup):
    """Mean seconds per call of `fn()` (see `call_seconds`)."""
    return float(call_seconds(fn, steps, warmup).mean())


def flops_of(compiled):
    """XLA's FLOP count of a compiled program (NaN where the backend has none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get('flops', float('nan')))


def peak_matmul_flops(n):
    """Achieved FLOP/s of an n x n float32 matmul: the machine's practical peak, measured in the same run
    as the figures it is compared with."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    seconds = timed(lambda: mm(a, b).block_until_ready(), steps=5, warmup=2)
    return 2.0 * n ** 3 / seconds


def peak_memory():
    """(kind, MiB): the device's peak bytes in use where the backend reports them (GPU/TPU), else the
    process's maximum resident set size, which includes the Python runtime."""
    import resource

    import jax
    stats = jax.local_devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
        return 'device peak', stats['peak_bytes_in_use'] / 2 ** 20
    return 'process max RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    detection alone -> [{'size', 'part', 'ms', 'gflops'}]. The families are fully convolutional (their
    parameters do not depend on the input size), so the variables initialised at the first size serve
    every size: one compiled initialisation, not one per size (seconds each at 720x1280)."""
    import jax
    import ml_collections
    from adapt.run_models import build_detector
    from adapt.models.translated import TranslatedDetector
    rows, variables = [], None
    for h, w in sizes:
        sized = ml_collections.ConfigDict({**config.to_dict(), 'image_size': (h, w)})  # int field: rebuild
        detector = build_detector(sized, num_classes)
        if variables is None:
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


def evaluation_parts(detector, variables, batch, num_images, class_names, bootstrap_samples, feature_images,
                     mesh=None):
    """Seconds of the parts of one test split's evaluation as the Day2Night evaluation stage runs them, on
    `num_images` images made of copies of `batch` ({'image', 'boxes', 'labels', 'mask'}, its boxes the
    ground truth): 'predict' (the evaluator's compiled, data-parallel predict function; compiled first),
    'metrics' (COCO's 12 numbers and VOC mAP), 'bootstrap' (AP50 and AP on `bootstrap_samples` resamples
    each) and 'features' (the proxy A-distance's pooled backbone features of `feature_images` images)."""
    import jax
    from adapt.evaluation.transfer import bootstrap_values
    from adapt.evaluation.translation_eval import pooled_features_fn
    from adapt.models.frozen_features import from_detector
    from adapt.models.inference import coco_inputs, detection_metrics, make_predict_fn
    from adapt.training.parallel import make_mesh, replicate, shard_batch
    mesh = mesh or make_mesh()
    size, height, width = batch['image'].shape[:3]
    copies = -(-num_images // size)
    predict, replicated = make_predict_fn(detector, mesh), replicate(variables, mesh)
    jax.block_until_ready(predict(replicated, shard_batch(batch['image'], mesh)))  # compiled before timing
    seconds, start = {}, time.perf_counter()
    dets = [jax.device_get(predict(replicated, shard_batch(batch['image'], mesh))) for _ in range(copies)]
    seconds['predict'] = time.perf_counter() - start
    keep = lambda x: np.concatenate([x] * copies)[:num_images]  # noqa: E731
    pred = {'image_id': np.arange(num_images), 'original_size': np.tile([height, width], (num_images, 1)),
            'gt_boxes': keep(batch['boxes']), 'gt_labels': keep(batch['labels']), 'gt_mask': keep(batch['mask']),
            'gt_crowd': keep(np.zeros_like(batch['mask'])), 'gt_difficult': keep(np.zeros_like(batch['mask'])),
            'boxes': np.concatenate([d.boxes for d in dets])[:num_images],
            'scores': np.concatenate([d.scores for d in dets])[:num_images],
            'classes': np.concatenate([d.classes for d in dets])[:num_images],
            'det_mask': np.concatenate([np.arange(d.scores.shape[1])[None] < d.num_valid[:, None]
                                        for d in dets])[:num_images]}
    start = time.perf_counter()
    detection_metrics(pred, class_names)
    seconds['metrics'] = time.perf_counter() - start
    gt, results = coco_inputs(pred, class_names)
    start = time.perf_counter()
    for metric in ('AP50', 'AP'):
        bootstrap_values(gt, results, metric, bootstrap_samples)
    seconds['bootstrap'] = time.perf_counter() - start
    extract = from_detector(detector, jax.device_get(variables))
    pooled = pooled_features_fn(extract, extract.levels[-1])
    jax.block_until_ready(pooled(batch['image']))  # compiled before timing
    start = time.perf_counter()
    for _ in range(-(-feature_images // size)):
        jax.block_until_ready(pooled(batch['image']))
    seconds['features'] = time.perf_counter() - start
    return seconds


def translation_costs(unit_config, gen_params, det_config, det_variables, num_classes, sizes, repeats):
    """The cost of translating night frames to day before detecting, one frame at a time (batch 1), at each
    (h, w) of `sizes` -> (generator parameter count, rows): ms (median of `repeats` runs after one warm-up)
    of the detector alone (forward + decoding + NMS), the night->day UNIT translation alone and both in
    one jitted function, and XLA's GFLOPs of the two forward passes (the NMS loop is not counted).
    `gen_params` / `det_variables` None: random ones (weights do not change the networks' cost; a trained
    detector's scores change the NMS work a little)."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    from adapt.models.inference import make_predict_fn
    from adapt.models.unit import UNIT, init_params, make_translate_fn
    from adapt.run_models import build_detector

    def ms(fn, *args):
        return 1e3 * float(np.median(call_seconds(lambda: jax.block_until_ready(fn(*args)), repeats, 1)))

    def gflops(fn, *args):
        return flops_of(fn.lower(*args).compile()) / 1e9

    rows = []
    for h, w in sizes:
        if gen_params is None:
            gen_params = init_params(unit_config, jax.random.PRNGKey(0), (h, w))['gen']
        sized = ml_collections.ConfigDict({**det_config.to_dict(), 'image_size': (h, w)})
        detector = build_detector(sized, num_classes)
        variables = det_variables or jax.device_get(detector.init(jax.random.PRNGKey(1)))
        predict = make_predict_fn(detector)
        translate = make_translate_fn(unit_config, 'b', 'a')
        both = jax.jit(lambda g, v, x: predict(v, translate(g, x)))
        image = jnp.asarray(np.random.default_rng(0).random((1, h, w, 3), np.float32))
        forward = jax.jit(lambda v, x: detector.apply(v, x)[0])
        gen_forward = jax.jit(lambda g, x: UNIT(unit_config).apply({'params': g}, x * 2 - 1, 'b', 'a',
                                                                   method=UNIT.translate))
        row = {'size': f'{h}x{w}', 'detect_ms': ms(predict, variables, image),
               'translate_ms': ms(translate, gen_params, image),
               'translate_detect_ms': ms(both, gen_params, variables, image),
               'detect_gflops': gflops(forward, variables, image),
               'translate_gflops': gflops(gen_forward, gen_params, image)}
        row['total_gflops'] = row['detect_gflops'] + row['translate_gflops']
        row['latency_factor'] = row['translate_detect_ms'] / row['detect_ms']
        rows.append(row)
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(gen_params)), rows
