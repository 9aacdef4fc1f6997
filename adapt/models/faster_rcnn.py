"""Faster R-CNN (Ren et al. 2015), optionally with an FPN (Lin et al. 2017): a two-stage detector family.

backbone -> (FPN) -> RPN over anchors -> proposals (adapt.models.rpn: fixed counts, no gradient) -> RoIAlign or
RoI max pooling (adapt.roi_ops; with the FPN each RoI reads the level of FPN's canonical rule) -> two FC
layers -> class logits (softmax with background column 0) and per-class box codes. The backbone and the FPN
are adapt.models.features' module (named 'features': the backbone at 'features/backbone' as in SSD, the FPN
at 'features/fpn').

`FasterRCNN(...).apply(variables, images01, train, labels)` returns (outputs, features):
  outputs: 'rpn_logits' [B, A] and 'rpn_codes' [B, A, 4] at `model.anchors(image_size)`; 'proposals' [B, R, 4]
    (normalised yxyx, no gradient) with 'proposal_mask' [B, R]; 'cls_logits' [B, R, C + 1] and 'box_codes'
    [B, R, C, 4] (encode_boxes against the proposal, weights 10, 10, 5, 5). R is the pass's post_nms_top_n,
    plus max_boxes when `labels` are given: the true boxes are appended to the proposals in a labelled
    training pass (torchvision, Detectron2), so the RoI head sees positives from the first step;
  features: the backbone levels ('C3', ...), the FPN levels ('P3', ...; 'P6' for the pooled extra level), and
    'instances' {'roi': {'features': [B, K, D], 'mask': [B, K]}} (one group: the RoI head's hidden features of
    the K best proposals, which carry their gradient), 'instance_logits' [B, K, C + 1] and 'instance_mask'
    [B, K] (DA-Faster's instance level; the layout: adapt.models.detector).

The loss: adapt.models.faster_rcnn_loss; the family behind the detector interface and its config:
adapt.models.faster_rcnn_detector.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapt.anchors import grid_anchors
from adapt.models.features import BackboneModel
from adapt.models.backbones import FEATURE_STRIDES
from adapt.models.rpn import ProposalSettings, RPNHead, propose
from adapt.roi_ops import check_roi_op, fpn_levels, roi_align, roi_pool

FAMILY = 'faster_rcnn'


@dataclasses.dataclass(frozen=True)
class RoISettings:
    """How RoI features are read: `op` 'align' | 'pool', a square `output_size`, RoIAlign's `sampling_ratio`
    and half-pixel `aligned` flag, FPN's level rule (a box of canonical_scale^2 pixels reads P<canonical_level>)."""
    op: str = 'align'
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True
    canonical_scale: float = 224.0
    canonical_level: int = 4

    def extract(self, maps, scales, boxes, levels):
        """One image's RoI features [R, s, s, C] (adapt.roi_ops)."""
        if check_roi_op(self.op) == 'pool':
            return roi_pool(maps, scales, boxes, levels, self.output_size)
        return roi_align(maps, scales, boxes, levels, self.output_size, self.sampling_ratio, self.aligned)




class RoIHead(nn.Module):
    """Two FC layers + ReLU (torchvision's TwoMLPHead) on the flattened RoI features [B, R, s, s, C], then class
    logits [B, R, C' + 1] (normal(0.01)) and per-class box codes [B, R, C', 4] (normal(0.001), Detectron2).
    -> (logits, codes, hidden features [B, R, dim])."""
    num_classes: int
    dim: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.reshape(*x.shape[:2], -1)
        for i in range(2):
            x = nn.relu(nn.Dense(self.dim, dtype=self.dtype, name=f'fc{i}')(x))
        logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                          name='cls')(x)
        codes = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                         name='box')(x)
        return (logits.astype(jnp.float32), codes.reshape(*codes.shape[:2], self.num_classes, 4).astype(jnp.float32),
                x.astype(jnp.float32))


class FasterRCNN(BackboneModel):
    """Faster R-CNN (see the module docstring).

    Attributes (besides adapt.models.features.BackboneModel's):
      levels: backbone maps ('C2' = stride 4, ...): the FPN's inputs, or the one map RPN and RoIs read without it.
      fpn, fpn_channels, pool_level: the FPN; `pool_level` adds a stride-2 subsampled last level for the RPN.
      anchor_sizes: anchor sides in input pixels: one per RPN level with the FPN, any number (each at every
        location) at the one level without; None until set or derived from the data (adapt.models.families).
      anchor_ratios: width / height of the anchors, at every level.
      head_dim: width of the RoI head's two FC layers; instance_top_k: proposals whose RoI features are the
        instances.
      proposals: adapt.models.rpn.ProposalSettings; roi: RoISettings.
    """
    backbone: str = 'resnet50'
    levels: Sequence[str] = ('C2', 'C3', 'C4', 'C5')
    fpn: bool = True
    fpn_channels: int = 256
    pool_level: bool = True
    anchor_sizes: Any = None
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    head_dim: int = 1024
    instance_top_k: int = 64
    proposals: ProposalSettings = ProposalSettings()
    roi: RoISettings = RoISettings()

    @property
    def rpn_levels(self) -> tuple:
        """Names of the maps the RPN reads: 'P<k>' per FPN level ('P<k+1>' pooled), else the backbone level."""
        if not self.fpn:
            return tuple(self.levels)
        names = tuple(f'P{name[1:]}' for name in self.levels)
        return names + ((f'P{int(self.levels[-1][1:]) + 1}',) if self.pool_level else ())

    @property
    def strides(self) -> tuple:
        """Input pixels per cell of each RPN level."""
        strides = [FEATURE_STRIDES[name] for name in self.levels]
        return tuple(strides + ([2 * strides[-1]] if self.fpn and self.pool_level else []))

    def check(self):
        """One-line ValueErrors for settings that cannot build."""
        if not self.fpn and len(self.levels) != 1:
            raise ValueError(f'{FAMILY}: without the FPN, levels must name one backbone map, got {tuple(self.levels)}')
        strides = [FEATURE_STRIDES.get(name) for name in self.levels]
        if None in strides or any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(f'{FAMILY}: levels must be consecutive backbone maps of '
                             f'{", ".join(FEATURE_STRIDES)}, got {tuple(self.levels)}')
        if self.anchor_sizes is None:
            raise ValueError(f'{FAMILY}: model.anchor_sizes is None: set it, or let adapt.trainers.detection.train '
                             'derive it from the training boxes (adapt.models.families)')
        if self.fpn and len(self.anchor_sizes) != len(self.rpn_levels):
            raise ValueError(f'{FAMILY}: with the FPN, anchor_sizes needs one size per RPN level '
                             f'{self.rpn_levels}, got {tuple(self.anchor_sizes)}')
        if self.instance_top_k > min(self.proposals.post_nms_top_n):
            raise ValueError(f'{FAMILY}: instance_top_k {self.instance_top_k} exceeds the proposals kept '
                             f'{tuple(self.proposals.post_nms_top_n)}')
        check_roi_op(self.roi.op)

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_ratios) * (1 if self.fpn else len(self.anchor_sizes))

    def feature_module(self, **kwargs):
        """The backbone + FPN part; kwargs: `name` inside `__call__`, `parent=None` outside."""
        return self.backbone_features(fpn_channels=self.fpn_channels if self.fpn else None,
                                      pool_level=self.pool_level, **kwargs)

    def rpn_maps(self, maps):
        """The maps the RPN reads among the feature module's: the FPN levels, or the one backbone level."""
        return maps[len(self.levels):] if self.fpn else maps

    def anchors_for(self, feature_sizes, image_size):
        """grid_anchors [A, 4] (normalised) of the RPN levels of these (h, w) sizes, for `image_size` inputs."""
        sizes = [(s,) for s in self.anchor_sizes] if self.fpn else [tuple(self.anchor_sizes)]
        return grid_anchors(feature_sizes, image_size, self.strides, sizes, tuple(self.anchor_ratios))

    def anchors(self, image_size):
        """Anchors [A, 4] (NumPy, normalised yxyx) in the order of the RPN outputs for `image_size` images."""
        self.check()
        return self.anchors_for(self.rpn_maps(self.feature_sizes(image_size)), image_size)

    @nn.compact
    def __call__(self, images, train=False, labels=None):
        self.check()
        all_maps = self.feature_module(name='features')(images, train)
        backbone_maps, maps = all_maps[:len(self.levels)], self.rpn_maps(all_maps)
        image_size = tuple(images.shape[1:3])
        rpn_logits, rpn_codes = RPNHead(self.anchors_per_location, self.dtype, name='rpn')(maps)
        sizes = [tuple(m.shape[1:3]) for m in maps]
        anchors = self.anchors_for(sizes, image_size)
        counts = [h * w * self.anchors_per_location for h, w in sizes]
        boxes, _, valid = propose(rpn_logits, rpn_codes, anchors, counts, image_size, self.proposals, train)
        if labels is not None:
            boxes = jnp.concatenate([boxes, jnp.asarray(labels['boxes'], jnp.float32)], 1)
            valid = jnp.concatenate([valid, jnp.asarray(labels['mask'], bool)], 1)
        logits, codes, hidden = RoIHead(self.num_classes, self.head_dim, self.dtype, name='roi_head')(
            self.roi_features(maps[:len(self.levels)], boxes, image_size))
        outputs = {'rpn_logits': rpn_logits, 'rpn_codes': rpn_codes, 'proposals': boxes, 'proposal_mask': valid,
                   'cls_logits': logits, 'box_codes': codes}
        features = {name: m.astype(jnp.float32) for name, m in zip(self.levels, backbone_maps)}
        if self.fpn:
            features.update({name: m.astype(jnp.float32) for name, m in zip(self.rpn_levels, maps)})
        k = self.instance_top_k
        features.update({'instances': {'roi': {'features': hidden[:, :k], 'mask': valid[:, :k]}},
                         'instance_logits': logits[:, :k], 'instance_mask': valid[:, :k]})
        return outputs, features

    def roi_features(self, maps, boxes, image_size):
        """RoI features [B, R, s, s, C] of boxes [B, R, 4] (normalised) from `maps` (one per RoI level)."""
        pixels = boxes * jnp.asarray(image_size * 2, jnp.float32)
        scales = [1.0 / s for s in self.strides[:len(maps)]]
        if len(maps) == 1:
            return jax.vmap(lambda m, b: self.roi.extract([m], scales, b, None))(maps[0], pixels)
        first = int(np.log2(self.strides[0]))
        levels = fpn_levels(pixels, first, first + len(maps) - 1, self.roi.canonical_scale, self.roi.canonical_level)
        return jax.vmap(lambda ms, b, lv: self.roi.extract(ms, scales, b, lv))(list(maps), pixels, levels)
