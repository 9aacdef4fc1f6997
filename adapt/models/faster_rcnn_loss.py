"""Faster R-CNN's loss: the RPN's terms (adapt.models.rpn.rpn_loss) and the RoI head's, on per-example samples.

The loss matches the anchors and the proposal rows to the batch's boxes, samples anchors and RoIs with
per-example keys and sums the four terms (RPN objectness BCE, RPN box smooth L1, RoI class cross-entropy, RoI box
smooth L1 at the true class), each over the sampled count of the global batch. Matching happens in the loss, not
in the forward pass, so labels given only to the loss (mean_teacher's pseudo-labels) work too; the proposals they
are matched to then lack the appended boxes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adapt.losses.detection import smooth_l1
from adapt.models.rpn import sampled_targets, truth
from adapt.postprocess import BOX_WEIGHTS
from adapt.training.parallel import example_keys, global_mean


def per_example_keys(key, batch_size, axis_name=None):
    """`example_keys` inside a data-parallel step; outside one (a single device) the same keys, device 0's."""
    if axis_name:
        return example_keys(key, batch_size, axis_name)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def roi_loss(outputs, batch, keys, *, matcher, num_samples, positive_fraction, beta, axis_name):
    """RoI class cross-entropy and box smooth L1 of the true class (on the positives) over each image's sampled
    proposal rows, both divided by the sampled count of the global batch. -> (cls, box, positives)."""
    gt = truth(batch)
    per_image = lambda k, p, v, g: sampled_targets(k, p, v, g, matcher, num_samples, positive_fraction,  # noqa: E731
                                                   BOX_WEIGHTS)
    cls_t, box_t, pos, neg = jax.vmap(per_image)(keys, outputs['proposals'], outputs['proposal_mask'], gt)
    sampled = pos | neg
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs['cls_logits'], cls_t)
    own = jnp.take_along_axis(outputs['box_codes'], jnp.maximum(cls_t - 1, 0)[..., None, None], axis=2)[:, :, 0]
    l1 = jnp.where(pos, smooth_l1(own - box_t, beta).sum(-1), 0.0)
    return global_mean(ce, sampled, axis_name), global_mean(l1, sampled, axis_name), pos
