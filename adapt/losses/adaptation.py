"""The adaptation-loss registry: pure losses of a step context, selected by name and weight from the config.

A loss is `fn(ctx, **hparams) -> (scalar, metrics)`, or `fn(ctx, params, **hparams)` when it owns trainable
parameters (a domain classifier); such a loss declares `init(key, ctx, **hparams) -> params`, called once
with a context whose features are the detector's on a dummy batch (shapes are what matter). `ctx` is an `adapt.methods.StepContext`:
`ctx.source_features` / `ctx.target_features` (see adapt.models.detector), `ctx.progress` in [0, 1],
`ctx.detector`, `ctx.axis_name`. Losses are registered with `@adaptation_loss('name')`; the config names
them as 'name:weight,...', and `package.module:function` imports a user's own (decorated or plain).

Every statistic over the batch is taken over the global batch (`adapt.training.parallel.global_mean`,
`gather_rows`), so one step on N devices equals one step on 1 device.

Image-level terms (dann_image, mmd, coral) align the maps `aligned_levels` names, by default the detector's
`alignment_levels` (where a dense family's source positives lie: adapt.models.alignment_levels), and take the
mean of their per-level values; instance-level alignment (dann_instance) reads the detector's instances, grouped
by feature space (a dense family's head levels), with one domain classifier per group.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
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


def _pooled_domains(ctx, level):
    """The pooled map `level` of both domains' global batches ([N, c] each)."""
    return tuple(gather_rows(pooled(features, level), ctx.axis_name)
                 for features in (ctx.source_features, ctx.target_features))


def aligned_levels(ctx, level=None, levels=None) -> tuple:
    """The maps an image-level term aligns: `levels` (names, or one comma-separated string), else `level` (one
    name), else the detector's `alignment_levels`. ValueError (one line) for both given, or a name that is not
    a feature map of the context."""
    names = tuple(x.strip() for x in levels.split(',') if x.strip()) if isinstance(levels, str) else tuple(
        levels or ())
    if names and level:
        raise ValueError(f'level {level!r} and levels {names}: give one of them')
    names = names or ((level,) if level else tuple(ctx.detector.alignment_levels))
    maps = [k for k, v in ctx.source_features.items() if getattr(v, 'ndim', 0) == 4]
    unknown = [name for name in names if name not in maps]
    if unknown:
        raise ValueError(f'alignment level {", ".join(unknown)} is not a feature map; valid choices: {", ".join(maps)}')
    return names


def level_mean(values):
    """(mean of the per-level values, mean of each of their metrics) of [(value, metrics), ...]."""
    return (sum(v for v, _ in values) / len(values),
            {k: sum(m[k] for _, m in values) / len(values) for k in values[0][1]})


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


def _init_image_classifiers(key, ctx, level=None, levels=None, hidden=64, **_):
    """One ImageDomainClassifier per aligned level (the levels' channel counts differ)."""
    return {name: ImageDomainClassifier(hidden).init(
        jax.random.fold_in(key, i), jnp.zeros((1, *ctx.source_features[name].shape[1:]), jnp.float32))['params']
        for i, name in enumerate(aligned_levels(ctx, level, levels))}


def _init_instance_classifiers(key, ctx, hidden=64, **_):
    """One InstanceDomainClassifier per group of instances (a dense family's head levels, Faster R-CNN's RoIs)."""
    groups = ctx.source_features['instances']
    return {name: InstanceDomainClassifier(hidden).init(
        jax.random.fold_in(key, i), jnp.zeros((1, 1, groups[name]['features'].shape[-1]), jnp.float32))['params']
        for i, name in enumerate(sorted(groups))}


def _reversal_coefficient(ctx, gamma):
    return grl_coefficient(ctx.progress, gamma) if gamma > 0 else jnp.float32(1.0)


def _domain_loss(ctx, logits_s, logits_t, source_mask=None, target_mask=None):
    """Both domains' classifier BCE (source 0, target 1), each a (masked) mean over its global batch."""
    bce = lambda logits, label: optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label))  # noqa: E731
    loss_s = global_mean(bce(logits_s, 0.0), source_mask, ctx.axis_name)
    loss_t = global_mean(bce(logits_t, 1.0), target_mask, ctx.axis_name)
    return 0.5 * (loss_s + loss_t), {'source_bce': loss_s, 'target_bce': loss_t}


@adaptation_loss('dann_image', init=_init_image_classifiers)
def dann_image(ctx, params, *, level=None, levels=None, hidden=64, gamma=10.0):
    """Image-level adversarial alignment: a per-location domain classifier on each aligned map (`aligned_levels`:
    by default the detector's alignment levels; one classifier per level), the loss the mean over the levels,
    behind gradient reversal with the coefficient schedule 2/(1+exp(-gamma p))-1 (gamma 0: a constant 1)."""
    coefficient = _reversal_coefficient(ctx, gamma)

    def per_level(name):
        classify = lambda x: ImageDomainClassifier(hidden).apply(  # noqa: E731
            {'params': params[name]}, gradient_reversal(x, coefficient))
        return _domain_loss(ctx, classify(ctx.source_features[name]), classify(ctx.target_features[name]))
    loss, metrics = level_mean([per_level(name) for name in aligned_levels(ctx, level, levels)])
    return loss, {**metrics, 'reversal': coefficient}


def _instance_logits(params, groups, hidden, coefficient):
    """Domain logits [B, sum of the groups' slots] of every group's instances by that group's classifier (behind
    gradient reversal), and their masks."""
    names = sorted(groups)
    logits = [InstanceDomainClassifier(hidden).apply(
        {'params': params[name]}, gradient_reversal(groups[name]['features'], coefficient)) for name in names]
    return jnp.concatenate(logits, axis=1), jnp.concatenate([groups[name]['mask'] for name in names], axis=1)


@adaptation_loss('dann_instance', init=_init_instance_classifiers)
def dann_instance(ctx, params, *, hidden=64, gamma=10.0):
    """Instance-level adversarial alignment on the detector's instance features: each instance goes to the
    classifier of its group (see adapt.models.detector), the BCE a masked mean over every instance of a domain's
    global batch; the reversal schedule as dann_image's."""
    coefficient = _reversal_coefficient(ctx, gamma)
    logits_s, mask_s = _instance_logits(params, ctx.source_features['instances'], hidden, coefficient)
    logits_t, mask_t = _instance_logits(params, ctx.target_features['instances'], hidden, coefficient)
    loss, metrics = _domain_loss(ctx, logits_s, logits_t, mask_s, mask_t)
    return loss, {**metrics, 'reversal': coefficient}


@adaptation_loss('mmd')
def mmd(ctx, *, level=None, levels=None, num_kernels=5, kernel_mul=2.0):
    """Multi-kernel Gaussian MMD^2 between the globally pooled features of the two domains' global batches, the
    mean over the aligned levels (`aligned_levels`)."""
    return level_mean([(gaussian_mmd(*_pooled_domains(ctx, name), num_kernels=num_kernels, kernel_mul=kernel_mul), {})
                       for name in aligned_levels(ctx, level, levels)])


@adaptation_loss('coral')
def coral_loss(ctx, *, level=None, levels=None):
    """Deep CORAL: distance between the two domains' feature covariances (pooled features, global batch), the
    mean over the aligned levels (`aligned_levels`)."""
    return level_mean([(coral(*_pooled_domains(ctx, name)), {}) for name in aligned_levels(ctx, level, levels)])


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
