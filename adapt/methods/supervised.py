"""Supervised detector training on one labelled split (the source-only baseline), and its evaluation.

`train(config, builder, workdir)` runs `adapt.training.train_loop` with the detector's data-parallel
step over all devices, evaluating COCO (pycocotools-identical) and VOC metrics on the config's
evaluation splits; `Evaluator` and `restore_variables` serve experiments/evaluate_detector.py too.
The config is an experiments/configs/ssd_*.py preset.
"""
import functools
import json
import math
import os

import jax
import ml_collections
import numpy as np

from adapt.datasets.augment import AugmentConfig
from adapt.datasets.pipeline import DetectionPipeline
from adapt.evaluation import write_json
from adapt.models.detector import build_detector, make_train_step
from adapt.models.inference import detection_metrics, draw_detections, make_predict_fn, predict_split
from adapt.training import (Checkpointer, LoopConfig, OptimizerConfig, TrainState, make_mesh, make_optimizer,
                            train_loop)
from adapt.training.metrics_log import MetricsWriter


def class_names(builder):
    return tuple(builder.info.features['objects']['label'].names)


def file_tag(split):
    """A split name (maybe sliced: 'validation_day[:100]') as a file-name part."""
    return split.replace('[', '_').replace(']', '').replace(':', '-')


def eval_splits(config):
    return [s.strip() for s in config.eval_splits.split(',') if s.strip()]


def image_size(config):
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def train_pipeline(config, builder):
    return DetectionPipeline(builder, split=config.train_split, global_batch_size=config.batch_size,
                             image_size=image_size(config), max_boxes=config.max_boxes, train=True,
                             seed=config.seed, augment=AugmentConfig(**config.augment))


def eval_pipeline(config, builder, split):
    if config.get('eval_examples', 0) and '[' not in split:
        split = f'{split}[:{config.eval_examples}]'
    return DetectionPipeline(builder, split=split, global_batch_size=config.eval_batch_size,
                             image_size=image_size(config), max_boxes=config.max_boxes, train=False)


def optimizer_config(config):
    """The OptimizerConfig of a preset: its `optimizer` block with `lr` and `num_steps` filled in."""
    return OptimizerConfig.from_mapping({**config.optimizer.to_dict(), 'learning_rate': config.lr,
                                         'total_steps': config.num_steps})


def optimizer(config):
    return make_optimizer(optimizer_config(config))


def init_state(config, detector):
    """TrainState at step 0: fresh variables (or the backbone from `config.init_from`) + the optimizer."""
    # An 'rbg' key: the same numbers on every run, and the init program compiles ~3x faster on CPU than
    # with threefry (one RngBitGenerator op per initializer instead of an unrolled hash).
    variables = jax.device_get(detector.init(jax.random.key(config.seed, impl='rbg')))
    if config.get('init_from'):
        from adapt.models.keras_import import load_backbone_checkpoint
        loaded = load_backbone_checkpoint(config.init_from)
        for collection, tree in loaded.items():
            target = variables[collection]['features']['backbone']
            if jax.tree.structure(target) != jax.tree.structure(tree) or any(
                    a.shape != b.shape for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(tree))):
                raise ValueError(f'{config.init_from}: backbone {collection} do not match '
                                 f'{config.model.backbone} at width {config.model.width}')
            variables[collection]['features']['backbone'] = jax.tree.map(np.asarray, tree)
    return TrainState.create(variables['params'], optimizer(config), rng=config.seed,
                             batch_stats=variables.get('batch_stats', {}))


class Evaluator:
    """COCO + VOC metrics of a detector on the evaluation splits; keeps the last results for writing."""

    def __init__(self, config, builder, detector, splits, mesh=None):
        self.config, self.builder, self.splits = config, builder, list(splits)
        self.names = class_names(builder)
        self.mesh = mesh or make_mesh()
        self.predict = make_predict_fn(detector, self.mesh)
        self.results = {}  # split -> (metrics, predictions, coco gt, coco results)
        self.step = self.drawn_step = None

    def evaluate(self, variables, split, keep_images=0):
        pred = predict_split(self.predict, variables, eval_pipeline(self.config, self.builder, split), self.mesh,
                             keep_images)
        metrics, _, gt, results = detection_metrics(pred, self.names)
        return metrics, pred, gt, results

    def __call__(self, state, step):
        """train_loop's eval_fn: {'<split>/<metric>': value} for AP, AP50, AP75 and VOC mAP."""
        if self.step != step:
            variables = {'params': state.params, 'batch_stats': state.batch_stats}
            self.results = {s: self.evaluate(variables, s, self.config.num_draw) for s in self.splits}
            self.step = step
        return {f'{s}/{k}': v for s, (m, *_) in self.results.items() for k, v in m.items()
                if k in ('AP', 'AP50', 'AP75', 'voc07_mAP', 'voc_mAP') and math.isfinite(v)}

    def images(self, state, step):
        """train_loop's image_fn: detections drawn on the first images of each split."""
        self(state, step)
        self.drawn_step = step
        return self.drawn()

    def drawn(self):
        """{'detections_<split>': [N, H', W', 3] in [0, 1]} from the last evaluation: detections with
        score >= 0.3 in class colours, ground truth in white."""
        return {f'detections_{s}': np.stack([
            draw_detections(*args, self.names, gt_boxes=gt) / 255.0 for *args, gt in zip(
                p['images'], p['canvas_boxes'], p['classes'], p['scores'], p['canvas_gt_boxes'])])
            for s, (_, p, _, _) in self.results.items() if len(p.get('images', ()))}

    def write(self, workdir, step, writer=None):
        """metrics.json (all metrics per split), detections_<split>.json (COCO results), PNG grids."""
        if jax.process_index() != 0:
            return
        summary = {s: m for s, (m, *_) in self.results.items()}
        with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
            json.dump({'step': int(step), 'splits': summary}, f, indent=1)
        for split, (_, _, gt, results) in self.results.items():
            name = file_tag(split)
            write_json(results, os.path.join(workdir, f'detections_{name}.json'))
            write_json(gt, os.path.join(workdir, f'ground_truth_{name}.json'))
        if writer is not None and self.drawn_step != step:  # train_loop's image_fn may have drawn them
            writer.images(step, self.drawn())


def loop_config(config):
    return LoopConfig(log_every=config.log_every, checkpoint_every=config.checkpoint_every, keep=config.keep,
                      eval_every=config.eval_every, image_every=config.eval_every,
                      best_metric=config.best_metric or None, tensorboard=config.tensorboard,
                      print_fn=functools.partial(print, flush=True))


def train(config, builder, workdir, on_step=None):
    """Train (or resume) in `workdir`, then evaluate the final state; returns {split: metrics}.
    `on_step(step)` runs after every step (see train_loop)."""
    mesh = make_mesh()
    detector = build_detector(config, len(class_names(builder)), config.detector)
    state = init_state(config, detector)
    evaluator = Evaluator(config, builder, detector, eval_splits(config), mesh)
    state = train_loop(state, make_train_step(detector), train_pipeline(config, builder), config.num_steps,
                       workdir, loop_config(config), mesh=mesh, eval_fn=evaluator,
                       image_fn=evaluator.images if config.eval_every else None,
                       meta={'detector': config.detector, 'dataset': config.dataset}, on_step=on_step)
    evaluator(state, config.num_steps)
    writer = MetricsWriter(workdir, tensorboard=config.tensorboard)
    try:
        evaluator.write(workdir, config.num_steps, writer)
    finally:
        writer.close()
    return {s: m for s, (m, *_) in evaluator.results.items()}


def restore_variables(config, builder, workdir, step=None):
    """(detector, {'params', 'batch_stats'}, step) from the training checkpoints in `workdir`."""
    detector = build_detector(config, len(class_names(builder)), config.detector)
    fresh = ml_collections.ConfigDict({**config.to_dict(), 'init_from': ''})  # the template need not load it
    template = init_state(fresh, detector)
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
    try:
        step = ckpt.latest_step() if step is None else step
        restored = ckpt.restore(template, step)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
    state, _ = restored
    return detector, {'params': state.params, 'batch_stats': state.batch_stats}, step
