"""The detector benchmark's measurements (experiments/benchmark.py prints them): train-step and inference
throughput, compile times, FLOPs against the machine's peak, memory; the parts of an evaluation stage; a
finished run's forward pass and post-processing on real images.

Everything runs on random images with planted boxes (`random_batch`: no dataset needed) but the finished
run, through the detector interface only: the training step is the one train_detector / adapt_detector
build for the config's method (data-parallel over all local devices, target assignment included), the
inference function the one evaluation uses, timed whole and in its two parts (the network's forward pass;
the post-processing, decoding + per-class NMS). FLOPs per image come from XLA's cost analysis of the
compiled programs (per device program x devices / global batch).
"""
import time

import numpy as np

from adapt.evaluation.efficiency import evaluation_parts, flops_of, peak_matmul_flops, peak_memory, timed


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


def _parts_seconds(detector, variables, images, steps, warmup):
    """Seconds per call of the forward pass and of the post-processing alone (one device), and the outputs."""
    import jax
    forward = jax.jit(lambda v, x: detector.apply(v, x)[0]).lower(variables, images).compile()
    outputs = forward(variables, images)
    post = jax.jit(detector.postprocess).lower(outputs).compile()
    forward_s = timed(lambda: jax.block_until_ready(forward(variables, images)), steps, warmup)
    post_s = timed(lambda: jax.block_until_ready(post(outputs)), steps, warmup)
    return forward_s, post_s, outputs, post


def throughput(config, num_classes, steps, warmup, matmul_size=0) -> dict:
    """The config's training step and inference on random batches: speeds, compile times, FLOPs, the
    fraction of the machine's matmul peak (`matmul_size`: its side, 0: 2048 on CPU, 8192 elsewhere) and
    peak memory, as a flat dict of numbers and names."""
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
    forward_s, post_s, _, _ = _parts_seconds(detector, *jax.device_get((variables, images)), steps, warmup)

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


def evaluation_stage(config, num_classes, images, bootstrap_samples, feature_images) -> dict:
    """`evaluation_parts` (seconds) of the config's detector (random weights) on one test split of `images`
    images, and the whole Day2Night stage's estimate: three test splits, the features of two domains."""
    import jax
    from adapt.run_models import build_detector
    detector = build_detector(config, num_classes)
    batch = random_batch(config.eval_batch_size, config.image_size, config.max_boxes, num_classes)
    parts = evaluation_parts(detector, jax.device_get(detector.init(jax.random.key(0))), batch, images,
                             tuple(f'class{i}' for i in range(num_classes)), bootstrap_samples, feature_images)
    split = parts['predict'] + parts['metrics'] + parts['bootstrap']
    return {**parts, 'images': images, 'bootstrap_samples': bootstrap_samples,
            'stage_estimate': 3 * split + 2 * parts['features']}


def trained_run(run, builder, split, batch_size, steps, warmup) -> dict:
    """Forward pass and post-processing (ms/image) of a finished detector `run` (adapt.runs) on the first
    `batch_size` images of `split` of `builder`; for a family whose post-processing is a faster equivalent
    of a plain path (`Detector.reference_postprocess`), also how many images get exactly the plain path's
    detections and the largest box difference."""
    import jax
    import ml_collections
    from adapt.evaluation.detector_eval import eval_pipeline
    from adapt.run_models import run_detector
    config = ml_collections.ConfigDict({**run.config.to_dict(), 'eval_batch_size': batch_size, 'eval_examples': 0})
    images = next(eval_pipeline(config, builder, f'{split}[:{batch_size}]'))['image']
    detector, variables = run_detector(run), run.variables()
    forward_s, post_s, outputs, post = _parts_seconds(detector, variables, images, steps, warmup)
    fast = jax.device_get(post(outputs))
    result = {'split': split, 'images': len(images), 'forward_ms_per_image': forward_s * 1e3 / len(images),
              'postprocess_ms_per_image': post_s * 1e3 / len(images), 'detections': int(fast.num_valid.sum())}
    reference = detector.reference_postprocess(outputs)
    if reference is not None:
        reference = jax.device_get(reference)
        same = ((fast.num_valid == reference.num_valid) & (fast.classes == reference.classes).all(1)
                & (fast.scores == reference.scores).all(1))
        result.update(images_identical_to_reference=int(same.sum()),
                      max_box_difference=float(abs(fast.boxes - reference.boxes).max()))
    return result
