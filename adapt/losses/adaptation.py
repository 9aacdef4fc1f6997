"""The adaptation-loss registry: pure losses of a step context, selected by name and weight from the config.

A loss is `fn(ctx, **hparams) -> (scalar, metrics)`, or `fn(ctx, params, **hparams)` when it owns trainable
parameters (a domain classifier); such a loss declares `init(key, ctx, **hparams) -> params`, called once
with a context whose features are the detector's on a dummy batch (shapes are what matter). `ctx` is an `adapt.methods.StepContext`:
`ctx.source_features` / `ctx.target_features` (see adapt.models.detector), `ctx.progress` in [0, 1],
`ctx.detector`, `ctx.axis_name`. Losses are registered with `@adaptation_loss('name')`; the config names
them as 'name:weight,...', and `package.module:function` imports a user's own (decorated or plain).

Every statistic over the batch is taken over the global batch (`adapt.training.parallel.global_mean`,
`gather_rows`), so one step on N devices equals one step on 1 device.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import optax
from jax import lax

from adapt.losses.alignment import (coral, gaussian_mmd, gradient_reversal, grl_coefficient,
                                    sigmoid_entropy, softmax_entropy)
from adapt.losses.distillation import box_l2, sigmoid_kl, softmax_kl
from adapt.registry import Registry
from adapt.training.parallel import global_mean

ADAPTATION_LOSSES = Registry('adaptation loss')


@dataclasses.dataclass(frozen=True)
class AdaptationLoss:
    """A registered loss: `fn`, its parameter initialiser (None: no parameters), the domains it reads."""
    fn: Callable
    init: Callable | None = None
    domains: tuple = ('source', 'target')


def adaptation_loss(name: str | None = None, init: Callable | None = None, domains=('source', 'target')):
    """Decorator: registers `fn` under `name` (None: only marks it, for `package.module:function` use)."""
    def wrap(fn):
        fn.adaptation_loss = AdaptationLoss(fn, init, tuple(domains))
        if name is not None:
            ADAPTATION_LOSSES.register(name)(fn.adaptation_loss)
        return fn
    return wrap


def get_loss(name: str) -> AdaptationLoss:
    """The registered loss `name`, or an imported `package.module:function` (decorated or plain)."""
    entry = ADAPTATION_LOSSES.get(name)
    if isinstance(entry, AdaptationLoss):
        return entry
    if not callable(entry):
        from adapt.registry import RegistryError
        raise RegistryError(f'adaptation loss {name!r} is not callable')
    return getattr(entry, 'adaptation_loss', AdaptationLoss(entry))


# ----------------------------------------------------------------------------------------- helpers
def gather_rows(x, axis_name=None):
    """All devices' rows of `x` (the global batch); differentiable (its transpose sums the cotangents)."""
    return lax.all_gather(x, axis_name, tiled=True) if axis_name else x


def pooled(features, level):
    """Global average pool of a feature map [B, h, w, c] -> [B, c]."""
    return jnp.mean(features[level], axis=(1, 2))


def _level(ctx, level):
    return level or ctx.detector.alignment_level


# ------------------------------------------------------------------------------ domain classifiers
class ImageDomainClassifier(nn.Module):
    """Per-location domain logits of a feature map (DA-Faster's image-level classifier)."""
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.hidden, (3, 3), name='conv')(x))
        return nn.Conv(1, (1, 1), name='logits')(x)[..., 0]


class InstanceDomainClassifier(nn.Module):
    """Domain logits of instance features [B, K, D] (DA-Faster's instance-level classifier)."""
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden, name='hidden')(x))
        return nn.Dense(1, name='logits')(x)[..., 0]


def _init_image_classifier(key, ctx, level=None, hidden=64, **_):
    x = ctx.source_features[_level(ctx, level)]
    return ImageDomainClassifier(hidden).init(key, jnp.zeros((1, *x.shape[1:]), jnp.float32))['params']


def _init_instance_classifier(key, ctx, hidden=64, **_):
    x = ctx.source_features['instances']
    return InstanceDomainClassifier(hidden).init(key, jnp.zeros((1, *x.shape[1:]), jnp.float32))['params']


def _reversal_coefficient(ctx, gamma):
    return grl_coefficient(ctx.progress, gamma) if gamma > 0 else jnp.float32(1.0)


def _domain_loss(ctx, classify, source_x, target_x, gamma, source_mask=None, target_mask=None):
    """Both domains' classifier BCE (source 0, target 1) through a gradient-reversal layer."""
    coefficient = _reversal_coefficient(ctx, gamma)
    logits_s = classify(gradient_reversal(source_x, coefficient))
    logits_t = classify(gradient_reversal(target_x, coefficient))
    bce = lambda logits, label: optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label))  # noqa: E731
    loss_s = global_mean(bce(logits_s, 0.0), source_mask, ctx.axis_name)
    loss_t = global_mean(bce(logits_t, 1.0), target_mask, ctx.axis_name)
    loss = 0.5 * (loss_s + loss_t)
    return loss, {'source_bce': loss_s, 'target_bce': loss_t, 'reversal': coefficient}


@adaptation_loss('dann_image', init=_init_image_classifier)
def dann_image(ctx, params, *, level=None, hidden=64, gamma=10.0):
    """Image-level adversarial alignment: a per-location domain classifier on the feature map `level`
    (default: the detector's alignment level) behind gradient reversal with the coefficient schedule
    2/(1+exp(-gamma p))-1 (gamma 0: a constant 1)."""
    level = _level(ctx, level)
    classify = lambda x: ImageDomainClassifier(hidden).apply({'params': params}, x)  # noqa: E731
    return _domain_loss(ctx, classify, ctx.source_features[level], ctx.target_features[level], gamma)


@adaptation_loss('dann_instance', init=_init_instance_classifier)
def dann_instance(ctx, params, *, hidden=64, gamma=10.0):
    """Instance-level adversarial alignment on the detector's instance features (masked)."""
    classify = lambda x: InstanceDomainClassifier(hidden).apply({'params': params}, x)  # noqa: E731
    s, t = ctx.source_features, ctx.target_features
    return _domain_loss(ctx, classify, s['instances'], t['instances'], gamma, s['instance_mask'],
                        t['instance_mask'])


@adaptation_loss('mmd')
def mmd(ctx, *, level=None, num_kernels=5, kernel_mul=2.0):
    """Multi-kernel Gaussian MMD^2 between the globally pooled features of the two domains' global batches."""
    level = _level(ctx, level)
    x = gather_rows(pooled(ctx.source_features, level), ctx.axis_name)
    y = gather_rows(pooled(ctx.target_features, level), ctx.axis_name)
    value = gaussian_mmd(x, y, num_kernels=num_kernels, kernel_mul=kernel_mul)
    return value, {}


@adaptation_loss('coral')
def coral_loss(ctx, *, level=None):
    """Deep CORAL: distance between the two domains' feature covariances (pooled features, global batch)."""
    level = _level(ctx, level)
    x = gather_rows(pooled(ctx.source_features, level), ctx.axis_name)
    y = gather_rows(pooled(ctx.target_features, level), ctx.axis_name)
    return coral(x, y), {}


@adaptation_loss('entropy', domains=('target',))
def entropy(ctx):
    """Entropy minimisation of the target class predictions at the detector's instances."""
    features = ctx.target_features
    logits = features['instance_logits']
    per_instance = softmax_entropy(logits) if ctx.detector.score_kind == 'softmax' else sigmoid_entropy(logits)
    return global_mean(per_instance, features['instance_mask'], ctx.axis_name), {}


@adaptation_loss('lwf', domains=('target',))
def lwf(ctx, *, temperature=2.0, box_weight=1.0):
    """Learning without Forgetting: the frozen source model's (the method's teacher's) outputs on the target
    training images, distilled into the adapted model: softened class probabilities (KL at `temperature`)
    plus `box_weight` x the squared L2 of the box outputs, averaged over the anchors of the global batch."""
    student, teacher = ctx.target_outputs, ctx.teacher_outputs['target']
    kl = softmax_kl if ctx.detector.score_kind == 'softmax' else sigmoid_kl
    cls = global_mean(kl(student['cls_logits'], teacher['cls_logits'], temperature), axis_name=ctx.axis_name)
    box = global_mean(box_l2(student['box_codes'], teacher['box_codes']), axis_name=ctx.axis_name)
    return cls + box_weight * box, {'cls_kl': cls, 'box_l2': box}
