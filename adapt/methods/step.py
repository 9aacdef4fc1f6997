"""One generic per-device train step for any method (run by `adapt.training.data_parallel`).

The state's params are {'detector': ..., 'adaptation': {term: params}} and its aux state
{'ema': variables (when on), 'method': the method's own}. Source and target go through separate
forward passes, computed only when an active term (weight != 0) reads that domain; BatchNorm statistics
are updated from the source pass (from the target pass when the method reads no source), a documented
choice: domain-specific statistics would be a method of their own. Terms of weight 0 are not computed, so
a method with every adaptation weight 0 takes exactly the source-only step.

Views: a domain's batch may carry a strong view `image_strong` (strong augmentation of the same crop);
the trained model then sees it, and a teacher sees the weak view `image`. Freezing: parameters matching a
`frozen` pattern (the optimizer's param_groups of multiplier 0, matched on 'detector/...' paths) get no
update, and their BatchNorm statistics (same paths) are kept too, so a frozen stage stays bit-identical.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from jax import lax

from adapt.methods.base import DOMAINS, StepContext
from adapt.training.optim import param_path
from adapt.training.parallel import AXIS, mean_value_and_grad


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
    """The labelled part {'boxes', 'labels', 'mask'} of a domain's batch, None for an unlabelled one."""
    return {k: batch[k] for k in ('boxes', 'labels', 'mask')} if 'boxes' in batch else None


def ema_update(ema, variables, decay):
    """ema <- decay * ema + (1 - decay) * variables (BatchNorm statistics included)."""
    return jax.tree.map(lambda e, v: decay * e + (1.0 - decay) * v, ema, variables)


def make_step(detector, method, terms, num_steps: int, ema_decay: float = 0.0, axis_name: str = AXIS,
              frozen=()):
    """`step(state, batch, key) -> (state, metrics)`; batch {'source': ..., 'target': ...} (domains the
    method does not read may be absent). Metrics: 'loss' (the weighted total), every term's (unweighted)
    value under its name and its own metrics under '<name>/'."""
    active = [t for t in terms if t.weight != 0]
    domains = active_domains(terms)
    if not domains:
        raise ValueError(f'method {method.name!r}: no active loss term')

    def step(state, batch, key):
        if method.transform_batch is not None:
            batch = method.transform_batch(batch, jax.random.fold_in(key, 1))
        progress = jnp.clip(state.step.astype(jnp.float32) / max(num_steps, 1), 0.0, 1.0)
        teacher_vars = method.teacher(state) if method.teacher is not None else None

        def loss_fn(params):
            variables = {'params': params['detector'], 'batch_stats': state.batch_stats}
            ctx = StepContext(detector, source=batch.get('source'), target=batch.get('target'), progress=progress,
                              key=key, aux=state.aux.get('method'), axis_name=axis_name)
            new_stats = None
            for domain in domains:
                routed = detector.for_input(domain)
                outputs, features, stats = routed.apply(variables, view(batch[domain], True), train=True,
                                                        labels=ground_truth(batch[domain]))
                setattr(ctx, f'{domain}_outputs', outputs)
                setattr(ctx, f'{domain}_features', features)
                new_stats = stats if new_stats is None else new_stats  # the first pass: source if read
                if teacher_vars is not None:
                    t_out, t_feat, _ = routed.apply(lax.stop_gradient(teacher_vars), view(batch[domain], False))
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
