"""Mean teacher for detection (Tarvainen and Valpola 2017; Unbiased Teacher, Adaptive Teacher): an EMA of
the student predicts on the weak view of each target image, and its detections at or above a threshold
supervise the student on the strong view of the same image, beside the source loss.

The teacher starts as the initial model (the burn-in run of `init_run`), lives in the checkpointed aux state
(aux['method']['teacher'], so a resumed run is exact) and follows t <- a t + (1 - a) s after every update,
BatchNorm statistics included. Settings: `config.mean_teacher` {decay, threshold, ignore_low, box_regression,
distillation}; the strong view comes from the pipeline (`config.strong_augment`, on for the target whatever
its `domains`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from adapt.losses.adaptation import adaptation_loss
from adapt.methods.base import Method, register_method
from adapt.methods.self_training import (DISTILLATION, check_band, pseudo_label_loss, soft_distillation,
                                        teacher_labels)
from adapt.methods.step import ema_update

DECAY, THRESHOLD = 0.9996, 0.8  # Adaptive Teacher's (100k steps); short runs need a faster teacher (~0.99)
LOW = 0.2  # detections scoring in [LOW, THRESHOLD) are ignore regions (a stated setting, not tuned)


@adaptation_loss('mean_teacher', domains=('target',))
def mean_teacher_loss(ctx, *, threshold=THRESHOLD, low=LOW, box_regression=False, distillation='hard'):
    """'hard': the detector's loss of the student's target outputs (strong view) on the teacher's detections
    (weak view, the detector's own post-processing: exact NMS inside the step) at or above `threshold`, those
    in [low, threshold) ignored (adapt.methods.self_training); only its classification part unless
    `box_regression`. 'soft': the teacher's class probabilities distilled at every dense position."""
    if distillation == 'soft':
        return soft_distillation(ctx.detector, ctx.target_outputs, ctx.teacher_outputs['target'], ctx.axis_name), {}
    labels = teacher_labels(ctx.detector.postprocess(ctx.teacher_outputs['target']), threshold, low)
    return pseudo_label_loss(ctx, labels, 'mean_teacher', box_regression)


def init_teacher(variables):
    """The teacher starts as the initial model."""
    return {'teacher': jax.tree.map(np.copy, variables)}


def update_teacher(state, *, decay):
    """teacher <- decay * teacher + (1 - decay) * student, on every leaf (parameters and BatchNorm statistics)."""
    student = {'params': state.params['detector'], 'batch_stats': state.batch_stats}
    aux = state.aux['method']
    return state.replace(aux={**state.aux, 'method': {**aux, 'teacher': ema_update(aux['teacher'], student, decay)}})


def teacher(state):
    return state.aux['method']['teacher']


def configure(config) -> Method:
    """mean_teacher with `config.mean_teacher`'s decay, threshold, ignore_low, box_regression and distillation."""
    block = config.mean_teacher
    if not 0.0 <= block.decay < 1.0:
        raise ValueError(f'mean_teacher.decay={block.decay} must lie in [0, 1)')
    if not 0.0 < block.threshold <= 1.0:
        raise ValueError(f'mean_teacher.threshold={block.threshold} must lie in (0, 1]')
    check_band(block, 'mean_teacher')
    if block.distillation not in DISTILLATION:
        raise ValueError(f'mean_teacher.distillation {block.distillation!r}; valid choices: {", ".join(DISTILLATION)}')
    return dataclasses.replace(
        MEAN_TEACHER, after_update=functools.partial(update_teacher, decay=float(block.decay)),
        hparams={'mean_teacher': dict(threshold=float(block.threshold), low=float(block.ignore_low),
                                      box_regression=bool(block.box_regression), distillation=block.distillation)})


MEAN_TEACHER = register_method(Method(
    'mean_teacher', 'labelled source + an EMA teacher\'s confident detections on weak target views supervising '
    'the student on strong views', losses='mean_teacher:1.0', init_aux=init_teacher,
    after_update=functools.partial(update_teacher, decay=DECAY), teacher=teacher, configure=configure,
    strong_views=('target',), evaluate_teacher=True, pseudo_threshold=lambda config: config.mean_teacher.threshold))
