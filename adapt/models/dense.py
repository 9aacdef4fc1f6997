"""What the backbone families (SSD, RetinaNet, YOLO, Faster R-CNN) share behind the detector interface: a flax
model with its backbone at 'features/backbone' (adapt.models.features), built twice (`model` with BatchNorm over
the step's `axis_name`, `eval_model` without), and, for the dense heads, instances read at the best anchors.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from adapt.models.backbones import get_backbone
from adapt.models.detector import Detector


def class_scores(cls_logits, head):
    """Per-class probabilities [..., A, num_classes] (the softmax background column dropped)."""
    if head == 'softmax':
        return jax.nn.softmax(cls_logits, axis=-1)[..., 1:]
    return jax.nn.sigmoid(cls_logits)


def model_fields(settings, drop=()) -> dict:
    """Flax constructor fields from a family's `model` settings: `dtype` as a dtype, sequences as (nested)
    tuples (flax fields must hash), the keys in `drop` (the family's own, not the module's) left out."""
    tuples = lambda v: tuple(map(tuples, v)) if isinstance(v, (list, tuple)) else v  # noqa: E731
    fields = {k: tuples(v) for k, v in dict(settings).items() if k not in drop}
    fields['dtype'] = jnp.dtype(fields.get('dtype', 'float32'))
    return fields


@dataclasses.dataclass(frozen=True, eq=False)
class BackboneDetector(Detector):
    """A family whose `model` (a flax module with a 'features' submodule from adapt.models.features) is built for
    `image_size` images: `model` has BatchNorm over `axis_name` (the train step), `eval_model` none."""
    name: str
    num_classes: int
    image_size: tuple
    model: Any
    eval_model: Any

    @property
    def alignment_level(self):
        """The deepest backbone level (DA-Faster aligns the backbone output)."""
        return self.model.levels[-1]

    def init(self, key):
        """Variables {'params', 'batch_stats'} (one jit-ed program: initialising layer by layer costs a
        compilation per initializer call)."""
        return jax.jit(self.eval_model.init)(key, jnp.zeros((1, *self.image_size, 3), jnp.float32))

    def model_inputs(self, labels) -> dict:
        """Keyword arguments of the model's call besides images and train (the families that read labels)."""
        del labels
        return {}

    def apply(self, variables, images, train=False, labels=None):
        if train:
            (outputs, features), new = self.model.apply(variables, images, train=True, **self.model_inputs(labels),
                                                        mutable=['batch_stats'])
            stats = jax.tree.map(lambda x: x.astype(jnp.float32), new['batch_stats'])
        else:
            outputs, features = self.eval_model.apply(variables, images, train=False, **self.model_inputs(labels))
            stats = variables.get('batch_stats', {})
        return outputs, self.with_instances(outputs, features), stats

    def with_instances(self, outputs, features):
        """The features `apply` returns, with 'instances', 'instance_logits' and 'instance_mask' (the model's own
        by default)."""
        del outputs
        return features

    def backbone(self, variables):
        m = self.model
        module = get_backbone(m.backbone, width=m.width, **dict(m.backbone_kwargs or {}))
        sub = {c: variables[c]['features']['backbone'] for c in ('params', 'batch_stats') if c in variables}
        return m.backbone, module, sub

    def with_backbone(self, variables, collection, tree):
        target = variables[collection]['features']['backbone']
        if jax.tree.structure(target) != jax.tree.structure(tree) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(tree))):
            raise ValueError(f'backbone {collection} do not match {self.model.backbone} at width {self.model.width}')
        features = {**variables[collection]['features'], 'backbone': tree}
        return {**variables, collection: {**variables[collection], 'features': features}}


@dataclasses.dataclass(frozen=True, eq=False)
class DenseDetector(BackboneDetector):
    """A dense head (SSD, RetinaNet, YOLO): class logits 'cls_logits' [B, A, C'] at fixed anchors, and per-anchor
    'anchor_features' [B, A, D] from which the instances are the `instance_top_k` best anchors'."""
    instance_top_k: int = dataclasses.field(default=64, kw_only=True)

    def with_instances(self, outputs, features):
        """The anchor features at the `instance_top_k` anchors of highest foreground score (the choice
        carries no gradient; the features and logits there do)."""
        features = dict(features)
        anchor_features = features.pop('anchor_features')
        logits = outputs['cls_logits']
        score = jnp.max(class_scores(lax.stop_gradient(logits), self.score_kind), axis=-1)  # [B, A]
        _, top = lax.top_k(score, min(self.instance_top_k, score.shape[1]))
        take = lambda x: jnp.take_along_axis(x, top[..., None], axis=1)  # noqa: E731
        return {**features, 'instances': take(anchor_features), 'instance_logits': take(logits),
                'instance_mask': jnp.ones(top.shape, bool)}
