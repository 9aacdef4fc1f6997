"""Region proposal network (Ren et al. 2015): the head, the proposal layer and the RPN loss.

Anchors are `adapt.anchors.grid_anchors` over the RPN levels (normalised yxyx, levels in order, location-major,
ratios outer and sizes inner at a location); the head emits its outputs in that order. Box codes use
`adapt.boxes.encode_boxes` with `box_weights` (1, 1, 1, 1) as torchvision's RPN.

The proposal layer has fixed shapes under jit and carries no gradient: per level the `pre_nms_top_n` best
anchors by objectness, decoded and clipped, boxes thinner than `min_size` pixels dropped (score -inf, not a
dynamic shape), greedy NMS at `iou_threshold` within each level (boxes of different levels do not suppress each
other: torchvision's and Detectron2's batched NMS over level ids), then the `post_nms_top_n` best over all
levels, sorted by score. It is `adapt.postprocess.decode_and_nms` with the levels in the place of classes
(a level's column holds its anchors' logits, -inf elsewhere), so it runs inside shard_map.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from adapt.boxes import clip_boxes, decode_boxes
from adapt.losses.detection import smooth_l1
from adapt.matching import IGNORE_KEYS, assign_targets, near_ignored, negative_threshold, sample_balanced
from adapt.postprocess import decode_and_nms
from adapt.training.parallel import global_mean

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU shared by the levels, then per location `num_anchors` objectness logits and box codes
    (torchvision's RPNHead: normal(0.01) weights, zero biases)."""
    num_anchors: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array]):
        """maps [B, h, w, c] (one c) -> logits [B, A], codes [B, A, 4] over all levels in anchor order."""
        init = nn.initializers.normal(0.01)
        conv = nn.Conv(maps[0].shape[-1], (3, 3), kernel_init=init, dtype=self.dtype, name='conv')
        cls = nn.Conv(self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype, name='objectness')
        box = nn.Conv(4 * self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype, name='box')
        logits, codes = [], []
        for x in maps:
            x = nn.relu(conv(x))
            logits.append(cls(x).reshape(x.shape[0], -1))
            codes.append(box(x).reshape(x.shape[0], -1, 4))
        return (jnp.concatenate(logits, 1).astype(jnp.float32), jnp.concatenate(codes, 1).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class ProposalSettings:
    """The proposal layer's counts as (training, inference) pairs: `pre_nms_top_n` per level, `post_nms_top_n`
    per image (torchvision: 2000/1000 both, with FPN); NMS IoU and the smallest side kept (input pixels)."""
    pre_nms_top_n: tuple = (2000, 1000)
    post_nms_top_n: tuple = (2000, 1000)
    iou_threshold: float = 0.7
    min_size: float = 1e-3

    def counts(self, train: bool) -> tuple:
        """(pre_nms_top_n, post_nms_top_n) of a training or an inference pass."""
        i = 0 if train else 1
        return self.pre_nms_top_n[i], self.post_nms_top_n[i]


def propose(logits, codes, anchors, level_counts, image_size, settings: ProposalSettings, train: bool):
    """Proposals of a batch: logits [B, A], codes [B, A, 4], anchors [A, 4], `level_counts` anchors per level.

    Returns (boxes [B, N, 4] normalised yxyx sorted by score, logits [B, N], valid [B, N]) with N the pass's
    `post_nms_top_n`; rows past the valid ones are zeros. No gradient flows back into the RPN through them."""
    logits, codes = lax.stop_gradient(logits), lax.stop_gradient(codes)
    pre, post = settings.counts(train)
    boxes = clip_boxes(decode_boxes(codes, anchors, RPN_BOX_WEIGHTS))
    height, width = image_size
    big = (((boxes[..., 2] - boxes[..., 0]) * height >= settings.min_size)
           & ((boxes[..., 3] - boxes[..., 1]) * width >= settings.min_size))
    level_of = np.repeat(np.arange(len(level_counts)), level_counts)
    in_level = level_of[:, None] == np.arange(len(level_counts))[None, :]  # [A, L]
    scores = jnp.where(big[..., None] & in_level, logits[..., None], -jnp.inf)
    dets = decode_and_nms(codes, anchors, scores, box_weights=RPN_BOX_WEIGHTS, score_threshold=-jnp.inf,
                          iou_threshold=settings.iou_threshold, max_detections=post, pre_nms_top_k=pre)
    valid = jnp.arange(post)[None, :] < dets.num_valid[:, None]
    return dets.boxes, dets.scores, valid


def truth(batch) -> dict:
    """The matching's inputs of a batch: its objects, and its ignore regions when it has them."""
    return {k: batch[k] for k in ('boxes', 'labels', 'mask', *IGNORE_KEYS) if k in batch}


def sampled_targets(key, anchors, valid, gt, matcher, num_samples, positive_fraction, box_weights):
    """One image's targets at `anchors` [A, 4] (or proposals; `valid` [A] excludes padding) for the sampled
    minibatch: (cls_targets [A] (0 background, label + 1), box_targets [A, 4], sampled positive [A],
    sampled negative [A]) from `assign_targets` with `matcher`, then `sample_balanced` with `key`. Negatives near
    `gt`'s ignore regions (a pseudo-labelled batch's, adapt.matching.near_ignored) are never sampled."""
    t = assign_targets(anchors, gt['boxes'], gt['labels'], gt['mask'], weights=tuple(box_weights), **matcher)
    negative = t['negative'] & valid & ~near_ignored(anchors, gt, negative_threshold(matcher))
    pos, neg = sample_balanced(key, t['positive'] & valid, negative, num_samples, positive_fraction)
    return t['cls_targets'], t['box_targets'], pos, neg


def rpn_loss(logits, codes, anchors, batch, keys, *, matcher, num_samples, positive_fraction, beta, axis_name):
    """Objectness BCE and box smooth L1 (on the positives) over each image's sampled anchors (`keys`: one per
    image), both divided by the sampled count of the global batch (torchvision). -> (cls, box, positives)."""
    valid = jnp.ones(anchors.shape[:1], bool)
    per_image = lambda k, gt: sampled_targets(k, anchors, valid, gt, matcher, num_samples,  # noqa: E731
                                              positive_fraction, RPN_BOX_WEIGHTS)
    _, box_t, pos, neg = jax.vmap(per_image)(keys, truth(batch))
    sampled = pos | neg
    cls = global_mean(optax.sigmoid_binary_cross_entropy(logits, pos.astype(jnp.float32)), sampled, axis_name)
    l1 = jnp.where(pos, smooth_l1(codes - box_t, beta).sum(-1), 0.0)
    return cls, global_mean(l1, sampled, axis_name), pos
