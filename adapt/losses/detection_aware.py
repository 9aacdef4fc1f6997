"""Detection-aware translation losses: a frozen day detector keeps the objects through translation.

Pixel similarity is not the goal of night -> day translation; detection is. Two terms train the UNIT
generator with a frozen detector (its variables are constants: no gradient reaches them):
  semantic consistency (CyCADA, Hoffman et al. 2018, for detection): the detector's dense class
    predictions (per anchor / grid cell, `Detector.dense_scores`) on a translated image must agree
    with its predictions on the image itself: KL(D(x) || D(translation of x)), per position, averaged;
  labelled cycle: a labelled day image goes day -> night -> day, and the detector's own loss on the
    result against the day labels: the night -> day path must give back objects the detector finds.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from adapt.losses.distillation import sigmoid_kl, softmax_kl


def semantic_consistency(detector, variables, originals01, translations01, temperature: float = 1.0):
    """Per image [B], the mean over positions of KL(teacher || student), the teacher being the detector on
    the originals (no gradient), the student the detector on their translations (images in [0, 1])."""
    variables = lax.stop_gradient(variables)
    teacher, kind = detector.dense_scores(detector.apply(variables, originals01, train=False)[0])
    student, _ = detector.dense_scores(detector.apply(variables, translations01, train=False)[0])
    kl = softmax_kl if kind == 'softmax' else sigmoid_kl
    return jnp.mean(kl(student, lax.stop_gradient(teacher), temperature), axis=1)


def labelled_cycle(detector, variables, cycled01, labels, axis_name=None, key=None):
    """The detector's supervised loss on day images after day -> night -> day ([0, 1]) against their
    labels {'boxes', 'labels', 'mask'} -> (loss, the detector's metrics)."""
    variables = lax.stop_gradient(variables)
    outputs, _, _ = detector.apply(variables, cycled01, train=False, labels=labels)
    return detector.loss(outputs, labels, axis_name, key)
