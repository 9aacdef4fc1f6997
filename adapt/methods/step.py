"""One generic per-device train step for any method (run by `adapt.training.data_parallel`).

The state's params are {'detector': ..., 'adaptation': {term: params}} and its aux state
{'ema': variables (when on), 'method': the method's own}. A domain is passed through the trained model only
when an active term (weight != 0) reads it. Terms of weight 0 are not computed, so a method with every
adaptation weight 0 takes exactly the source-only step.

BatchNorm policy (`bn_policy`, one per run, the same for every method so that every row trains the regime
it is evaluated in):
  source: separate passes; batch statistics normalise each domain's batch, the running statistics follow
    the source pass (the target pass when the method reads no source). Evaluation and a teacher then use
    day statistics on night images that training normalised with night ones.
  frozen: the running statistics normalise every pass and are never updated (Detectron2's FrozenBN; scale
    and offset still train): training normalises exactly as evaluation does. The model is built with
    `frozen_bn` (adapt.trainers.detection).
  joint: source and target in one concatenated pass, normalised and tracked with the mixed batch's
    statistics.

Views: a domain's batch may carry a strong view `image_strong` (strong augmentation of the same crop);
the trained model then sees it, and a teacher sees the weak view `image`. Freezing: parameters matching a
`frozen` pattern (the optimizer's param_groups of multiplier 0, matched on 'detector/...' paths) get no
update, and their BatchNorm statistics (same paths) are kept too, so a frozen stage stays bit-identical.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from adapt.methods.base import DOMAINS, StepContext
from adapt.training.optim import param_path
from adapt.training.parallel import AXIS, mean_value_and_grad


BN_POLICIES = ('source', 'frozen', 'joint')


def check_bn_policy(policy: str) -> str:
    """`policy`, or ValueError (one line) listing the valid choices."""
    if policy not in BN_POLICIES:
        raise ValueError(f'bn_policy {policy!r}; valid choices: {", ".join(BN_POLICIES)}')
    return policy


def active_domains(terms) -> tuple:
    """The domains some term of non-zero weight reads, in DOMAINS order."""
    return tuple(d for d in DOMAINS if any(t.weight != 0 and d in t.domains for t in terms))


def where_path(patterns, matched, other):
    """`matched`'s leaves where 'detector/<path>' matches one of the regexes `patterns`, `other`'s elsewhere."""
    def pick(path, m, o):
        name = 'detector/' + param_path(path)
        return m if any(re.search(p, name) for p in patterns) else o
    return jax.tree_util.tree_map_with_path(pick, matched, other)


def keep_frozen_stats(old, new, frozen=()):
    """`new` BatchNorm statistics, except `old` where 'detector/<path>' matches a frozen pattern."""
    return where_path(frozen, old, new) if frozen else new


def view(batch, strong):
    """The image a pass sees: the strong view when asked for and present, else `image`."""
    return batch['image_strong'] if strong and 'image_strong' in batch else batch['image']


def ground_truth(batch):
    """The objects {'boxes', 'labels', 'mask'} of a domain's batch (its rows of a class: a pseudo-labelled
    batch's ignore rows are not objects), None for an unlabelled one."""
    if 'boxes' not in batch:
        return None
    return {'boxes': batch['boxes'], 'labels': batch['labels'], 'mask': batch['mask'] & (batch['labels'] >= 0)}


def joint_ground_truth(batches):
    """The objects of several batches concatenated along the batch (an unlabelled one: rows of no object);
    None when none is labelled."""
    truths = [ground_truth(b) for b in batches]
    like = next((t for t in truths if t is not None), None)
    if like is None:
        return None
    empty = lambda b: {k: jnp.zeros((b['image'].shape[0], *v.shape[1:]), v.dtype) for k, v in like.items()}  # noqa: E731
    truths = [t if t is not None else empty(b) for t, b in zip(truths, batches)]
    return {k: jnp.concatenate([t[k] for t in truths]) for k in like}


def forward_passes(detector, variables, batch, domains, joint):
    """{domain: (outputs, features)} of the trained model in training mode (strong views) and its new
    BatchNorm statistics: those of the first domain's pass, or of the one concatenated pass when `joint`."""
    if joint:
        images = [view(batch[d], True) for d in domains]
        outputs, features, stats = detector.apply(variables, jnp.concatenate(images), train=True,
                                                  labels=joint_ground_truth([batch[d] for d in domains]))
        bounds = np.cumsum([0] + [x.shape[0] for x in images])
        part = lambda tree, i: jax.tree.map(lambda x: x[bounds[i]:bounds[i + 1]], tree)  # noqa: E731
        return {d: (part(outputs, i), part(features, i)) for i, d in enumerate(domains)}, stats
    passes, first = {}, None
    for domain in domains:
        outputs, features, stats = detector.for_input(domain).apply(
            variables, view(batch[domain], True), train=True, labels=ground_truth(batch[domain]))
        passes[domain] = (outputs, features)
        first = stats if first is None else first
    return passes, first


def ema_update(ema, variables, decay):
    """ema <- decay * ema + (1 - decay) * variables (BatchNorm statistics included)."""
    return jax.tree.map(lambda e, v: decay * e + (1.0 - decay) * v, ema, variables)


def make_step(detector, method, terms, num_steps: int, ema_decay: float = 0.0, axis_name: str = AXIS,
              frozen=(), bn_policy: str = 'source'):
    """`step(state, batch, key) -> (state, metrics)`; batch {'source': ..., 'target': ...} (domains the
    method does not read may be absent). Metrics: 'loss' (the weighted total), every term's (unweighted)
    value under its name and its own metrics under '<name>/'. `bn_policy` 'frozen' expects a detector built
    with frozen BatchNorm (the step itself passes as under 'source')."""
    active = [t for t in terms if t.weight != 0]
    domains = active_domains(terms)
    if not domains:
        raise ValueError(f'method {method.name!r}: no active loss term')
    joint = check_bn_policy(bn_policy) == 'joint' and len(domains) > 1
    if joint and len({id(detector.for_input(d)) for d in domains}) > 1:
        raise ValueError(f'bn_policy joint: {detector.name} routes the domains through different layers; '
                         f'use source or frozen')

    def step(state, batch, key):
        if method.transform_batch is not None:
            batch = method.transform_batch(batch, jax.random.fold_in(key, 1))
        progress = jnp.clip(state.step.astype(jnp.float32) / max(num_steps, 1), 0.0, 1.0)
        teacher_vars = method.teacher(state) if method.teacher is not None else None

        def loss_fn(params):
            variables = {'params': params['detector'], 'batch_stats': state.batch_stats}
            ctx = StepContext(detector, source=batch.get('source'), target=batch.get('target'), progress=progress,
                              key=key, aux=state.aux.get('method'), axis_name=axis_name)
            passes, new_stats = forward_passes(detector, variables, batch, domains, joint)
            for domain, (outputs, features) in passes.items():
                setattr(ctx, f'{domain}_outputs', outputs)
                setattr(ctx, f'{domain}_features', features)
                if teacher_vars is not None:
                    t_out, t_feat, _ = detector.for_input(domain).apply(lax.stop_gradient(teacher_vars),
                                                                        view(batch[domain], False))
                    ctx.teacher_outputs[domain], ctx.teacher_features[domain] = t_out, t_feat
            total, metrics = 0.0, {}
            for term in active:
                value, term_metrics = term.value(ctx, params['adaptation'].get(term.name))
                total = total + term.weight * value
                metrics[term.name] = value
                metrics.update({f'{term.name}/{k}': v for k, v in term_metrics.items() if k != 'loss'})
            metrics['loss'] = total
            return total, (metrics, new_stats)

        (_, (metrics, stats)), grads = mean_value_and_grad(loss_fn, has_aux=True, axis_name=axis_name)(state.params)
        state = state.apply_gradients(grads, batch_stats=keep_frozen_stats(state.batch_stats, stats, frozen))
        if 'ema' in state.aux:
            current = {'params': state.params['detector'], 'batch_stats': state.batch_stats}
            state = state.replace(aux={**state.aux, 'ema': ema_update(state.aux['ema'], current, ema_decay)})
        if method.after_update is not None:
            state = method.after_update(state)
        return state, metrics

    return step
