"""Pseudo-label self-training in rounds (Rosenberg, Hebert and Schneiderman 2005).

Each round, the current model predicts the whole unlabelled target training split; its detections at or
above `threshold` become that split's labels (those in [ignore_low, threshold) its ignore regions,
adapt.methods.self_training), and training continues from the previous round for `steps_per_round` steps on
source plus pseudo-labelled target (the 'pseudo_label' term: classification only unless `box_regression`). The labels of each round are stored in the
workdir (`pseudo_labels/round_<r>.npz`), so an interrupted round resumes on exactly the same labels.
The target training split is read without its labels (an unlabelled pipeline): a round logs how many
pseudo-boxes it keeps; their precision and recall are measured on the evaluation splits at every
evaluation (`adapt.evaluation.pseudo_labels`, `Method.pseudo_threshold`), never on the training labels.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adapt.datasets.pipeline import DetectionPipeline
from adapt.methods.base import Method, TrainData, register_method
from adapt.methods.self_training import IGNORE_LABEL, check_band, round_labels
from adapt.models.inference import make_predict_fn, predict_split
from adapt.training import Checkpointer, replicate
from adapt.training.config import image_size
from adapt.training.metrics_log import MetricsWriter


def pseudo_labelled_split(builder, split: str, labels: dict) -> tf.data.Dataset:
    """The target split in TFDS form with its objects replaced by the pseudo-labels (by position in the
    split, the DetectionPipeline's source index), for `DetectionPipeline(dataset, ...)`."""
    count = len(labels['index'])
    order = np.argsort(labels['index'])
    if not np.array_equal(labels['index'][order], np.arange(count)):
        raise ValueError(f'pseudo-labels cover positions {labels["index"].min()}..{labels["index"].max()} '
                         f'({count} images), not every image of {split} once')
    boxes, classes, mask = (tf.constant(labels[k][order]) for k in ('boxes', 'labels', 'mask'))
    decoders = {'image': tfds.decode.SkipDecoding()}

    def relabel(i, example):
        keep = mask[i]
        return {'image': example['image'], 'objects': {'bbox': tf.boolean_mask(boxes[i], keep),
                                                        'label': tf.boolean_mask(classes[i], keep)}}
    dataset = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    return dataset.enumerate().map(relabel)


def save_labels(path: str, labels: dict, quality: dict) -> None:
    """Write one round's labels (atomically: a killed write leaves no half file) and its quality."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, quality=json.dumps(quality), **labels)
    os.replace(tmp, path)


def load_labels(path: str) -> tuple[dict, dict]:
    with np.load(path) as data:
        return {k: data[k] for k in ('index', 'boxes', 'labels', 'mask')}, json.loads(str(data['quality']))


def check_rounds(config) -> None:
    """ValueError unless rounds x steps_per_round is the run's num_steps (one schedule over all rounds)."""
    hp = config.pseudo_label
    if hp.rounds < 1 or hp.steps_per_round < 1 or hp.rounds * hp.steps_per_round != config.num_steps:
        raise ValueError(f'pseudo_label: rounds ({hp.rounds}) x steps_per_round ({hp.steps_per_round}) must be '
                         f'num_steps ({config.num_steps})')


def _predict_target(run, variables):
    """`predict_split` of the whole target training split (unaugmented, its labels never read) with
    `variables`."""
    config = run.config
    pipeline = DetectionPipeline(run.target_builder, split=config.target_split, train=False,
                                 global_batch_size=config.eval_batch_size, image_size=image_size(config),
                                 max_boxes=config.max_boxes, labelled=False)
    predict = make_predict_fn(run.setup.detector.for_input('target'), run.mesh)
    return predict_split(predict, variables, pipeline, run.mesh)


def _state_at(run, template, step: int):
    """The checkpointed state at `step` (the start of a round), or `template` at step 0 before any."""
    ckpt = Checkpointer(os.path.join(run.workdir, 'checkpoints'), read_only=True)
    try:
        if step == 0 and ckpt.latest_step() is None:
            return template
        return ckpt.restore(replicate(template, run.mesh), step=step)[0]
    finally:
        ckpt.close()


def _round_labels(run, template, r: int, say):
    """Round r's pseudo-labels: read back when stored, else predicted by the model at the round's start."""
    hp = run.config.pseudo_label
    path = os.path.join(run.workdir, 'pseudo_labels', f'round_{r}.npz')
    if os.path.exists(path):
        return load_labels(path)[0]
    state = _state_at(run, template, r * hp.steps_per_round)
    pred = _predict_target(run, run.evaluator.variables_fn(state))
    labels = round_labels(pred, hp.threshold, hp.ignore_low)
    count, unsure = int((labels['labels'] >= 0).sum()), int((labels['labels'] == IGNORE_LABEL).sum())
    images = max(len(labels['index']), 1)
    quality = {'num_boxes': count, 'boxes_per_image': count / images, 'ignore_regions_per_image': unsure / images}
    save_labels(path, labels, quality)
    writer = MetricsWriter(run.workdir, tensorboard=run.config.tensorboard)
    try:
        writer.scalars(r * hp.steps_per_round, quality, 'pseudo_labels')
    finally:
        writer.close()
    say(f'pseudo-label round {r}: {count} boxes on {len(labels["index"])} target images at score >= {hp.threshold}, '
        f'{unsure} ignore regions in [{hp.ignore_low}, {hp.threshold})')
    return labels


def fit(run):
    """Rounds of (predict the target split, keep the confident detections, train steps_per_round steps on
    source + pseudo-labelled target), each continuing from the previous one; resumes inside any round."""
    config, hp = run.config, run.config.pseudo_label
    check_rounds(config)
    state = run.initial_state()
    say = run.loop_config.print_fn or (lambda line: None)
    done = Checkpointer(os.path.join(run.workdir, 'checkpoints'), read_only=True)
    try:
        finished = done.latest_step() or 0
    finally:
        done.close()
    for r in range(hp.rounds):
        end = (r + 1) * hp.steps_per_round
        if finished >= end:
            continue
        labels = _round_labels(run, state, r, say)
        target = pseudo_labelled_split(run.target_builder, config.target_split, labels)
        data = run.data({'source': run.train_data['source'], 'target': TrainData(target, None, len(labels['index']))})
        try:
            state = run.loop(state, data, end, evaluate=end == config.num_steps)  # no selection between rounds
        finally:
            data.close()
    return state if finished < config.num_steps else _state_at(run, state, config.num_steps)


def settings(config) -> dict:
    """The Method fields of pseudo-label rounds under `config.pseudo_label` (pseudo_label's, and lwf's
    pseudo-label mode); ValueError (one line) for bad settings."""
    check_rounds(config)
    check_band(config.pseudo_label, 'pseudo_label')
    return dict(own_target_labels=True, fit=fit, pseudo_threshold=PSEUDO_LABEL.pseudo_threshold,
                hparams={'pseudo_label': dict(box_regression=bool(config.pseudo_label.box_regression))})


def configure(config) -> Method:
    return dataclasses.replace(PSEUDO_LABEL, **settings(config))


PSEUDO_LABEL = register_method(Method(
    'pseudo_label', 'labelled source + the model\'s own confident target detections, retrained in rounds',
    losses='pseudo_label:1.0', own_target_labels=True, fit=fit, configure=configure,
    pseudo_threshold=lambda config: config.pseudo_label.threshold))
