"""Detector evaluation on TFDS splits: COCO (pycocotools-identical) and VOC metrics, drawn examples, files.

`Evaluator` runs any detector of the `adapt.models.detector` interface over evaluation splits (data
parallel over a mesh) and serves both training (as `train_loop`'s eval_fn / image_fn) and
experiments/evaluate_detector.py. `variables_fn(state)` says which weights are evaluated (the EMA when a
run keeps one); a dict {model name: variables_fn} evaluates several (a student and its teacher), and each
result is then labelled '<model>/<split>' (metric names, metrics.json, file names, drawn images). With a
`pseudo_threshold` (a self-training run), each result also carries the pseudo-labels its detections would
make (`adapt.evaluation.pseudo_labels`).
"""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

from adapt.datasets.pipeline import DetectionPipeline
from adapt.evaluation.cocojson import write_json
from adapt.evaluation.pseudo_labels import METRICS as PSEUDO_METRICS, pseudo_label_metrics
from adapt.models.inference import detection_metrics, draw_detections, make_predict_fn, predict_split
from adapt.training.config import image_size
from adapt.training.parallel import make_mesh

SUMMARY_KEYS = ('AP', 'AP50', 'AP75', 'voc07_mAP', 'voc_mAP')


def class_names(builder) -> tuple:
    return tuple(builder.info.features['objects']['label'].names)


def file_tag(split: str) -> str:
    """A split name (maybe sliced: 'validation_day[:100]', maybe with its model: 'teacher/...') as a
    file-name part."""
    return split.replace('[', '_').replace(']', '').replace(':', '-').replace('/', '_')


def eval_pipeline(config, builder, split):
    """Every example of `split` once (the first `config.eval_examples` when set), unaugmented."""
    if config.get('eval_examples', 0) and '[' not in split:
        split = f'{split}[:{config.eval_examples}]'
    return DetectionPipeline(builder, split=split, global_batch_size=config.eval_batch_size,
                             image_size=image_size(config), max_boxes=config.max_boxes, train=False)


def state_variables(state):
    """The trained detector's variables in a train state (params['detector'] + BatchNorm statistics)."""
    return {'params': state.params['detector'], 'batch_stats': state.batch_stats}


def ema_variables(state):
    return state.aux['ema']


class Evaluator:
    """COCO + VOC metrics of a detector on evaluation splits; keeps the last results for writing.

    `splits` maps a split name to its TFDS builder (source and target splits may come from different
    datasets); a list of names uses `builder` for all."""

    def __init__(self, config, builder, detector, splits, mesh=None, variables_fn=state_variables,
                 pseudo_threshold=None):
        self.config = config
        self.pseudo_threshold = pseudo_threshold
        self.splits = dict(splits) if isinstance(splits, dict) else {s: builder for s in splits}
        self.names = class_names(next(iter(self.splits.values())))
        self.mesh = mesh or make_mesh()
        # one predict function per detector the splits route to (see Detector.for_input)
        routed = {s: detector.for_input(s) for s in self.splits}
        compiled = {id(d): make_predict_fn(d, self.mesh) for d in routed.values()}
        self.predict = {s: compiled[id(d)] for s, d in routed.items()}
        models = variables_fn if isinstance(variables_fn, dict) else {'': variables_fn}
        self.models = {f'{name}/' if len(models) > 1 else '': fn for name, fn in models.items()}  # label prefix
        self.variables_fn = next(iter(models.values()))  # the first model's: what a method predicts with
        self.results = {}  # label -> (metrics, predictions, coco gt, coco results)
        self.step = self.drawn_step = None

    def evaluate(self, variables, split, keep_images=0):
        """(metrics, predictions, COCO ground truth, COCO results) of `variables` on one split."""
        pipeline = eval_pipeline(self.config, self.splits[split], split)
        pred = predict_split(self.predict[split], variables, pipeline, self.mesh, keep_images)
        metrics, _, gt, results = detection_metrics(pred, self.names)
        if self.pseudo_threshold is not None:
            metrics = {**metrics, **pseudo_label_metrics(pred, self.pseudo_threshold)}
        return metrics, pred, gt, results

    def __call__(self, state, step):
        """train_loop's eval_fn: {'<label>/<metric>': value} for AP, AP50, AP75, VOC mAP and the pseudo-label
        metrics when measured."""
        if self.step != step:
            self.results = {}
            for prefix, variables_fn in self.models.items():
                variables = variables_fn(state)
                self.results.update({prefix + s: self.evaluate(variables, s, self.config.num_draw)
                                     for s in self.splits})
            self.step = step
        return {f'{s}/{k}': v for s, (m, *_) in self.results.items() for k, v in m.items()
                if k in SUMMARY_KEYS + PSEUDO_METRICS and math.isfinite(v)}

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

    def summary(self):
        return {s: m for s, (m, *_) in self.results.items()}

    def write(self, workdir, step, writer=None, **extra):
        """metrics.json (all metrics per split, plus `extra`), detections_<split>.json (COCO results),
        ground_truth_<split>.json, and the drawn examples through `writer`."""
        if jax.process_index() != 0:
            return
        with open(os.path.join(workdir, 'metrics.json'), 'w') as f:
            json.dump({'step': int(step), **extra, 'splits': self.summary()}, f, indent=1)
        for split, (_, _, gt, results) in self.results.items():
            name = file_tag(split)
            write_json(results, os.path.join(workdir, f'detections_{name}.json'))
            write_json(gt, os.path.join(workdir, f'ground_truth_{name}.json'))
        if writer is not None and self.drawn_step != step:  # train_loop's image_fn may have drawn them
            writer.images(step, self.drawn())
