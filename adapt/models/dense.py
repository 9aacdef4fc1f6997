"""What the backbone families (SSD, RetinaNet, YOLO, Faster R-CNN) share behind the detector interface: a flax
model with its backbone at 'features/backbone' (adapt.models.features), built twice (`model` with BatchNorm over
the step's `axis_name`, `eval_model` without), the alignment levels, and, for the dense heads, instances read at
the best anchors from the maps their class predictors read.

Variables saved before issue 26 (item 5) hold a 1x1 projection 'instance{k}' per head level of a dense family,
which instance-level alignment read then and nothing reads now: `DenseDetector.from_saved` drops them, and
`model_fields` ignores the obsolete `instance_dim` setting of such a run's run.json.
"""
from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any, Optional

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


# `model` settings a dense family's detector reads (not its flax module), and the one no family reads any more
# (the width of the removed instance projections: run.json of runs made before them still names it).
DENSE_SETTINGS = ('instance_top_k', 'alignment_levels')
OBSOLETE_SETTINGS = ('instance_dim',)
OBSOLETE_PARAMS = r'^instance\d+$'  # the removed projections: top-level modules 'instance0', 'instance1', ...


def model_fields(settings, drop=()) -> dict:
    """Flax constructor fields from a family's `model` settings: `dtype` as a dtype, sequences as (nested)
    tuples (flax fields must hash), the keys in `drop` (the family's own, not the module's) and the obsolete
    ones left out."""
    tuples = lambda v: tuple(map(tuples, v)) if isinstance(v, (list, tuple)) else v  # noqa: E731
    fields = {k: tuples(v) for k, v in dict(settings).items() if k not in (*drop, *OBSOLETE_SETTINGS)}
    fields['dtype'] = jnp.dtype(fields.get('dtype', 'float32'))
    return fields


def dense_settings(settings) -> dict:
    """DenseDetector's own fields from a family's `model` settings (`DENSE_SETTINGS`)."""
    levels = settings.get('alignment_levels')
    return dict(instance_top_k=int(settings.get('instance_top_k', 64)),
                chosen_levels=tuple(levels) if levels else None)


@dataclasses.dataclass(frozen=True, eq=False)
class BackboneDetector(Detector):
    """A family whose `model` (a flax module with a 'features' submodule from adapt.models.features) is built for
    `image_size` images: `model` has BatchNorm over `axis_name` (the train step), `eval_model` none;
    `chosen_levels`: the alignment levels of its settings (None: not derived, see `alignment_levels`)."""
    name: str
    num_classes: int
    image_size: tuple
    model: Any
    eval_model: Any
    chosen_levels: Optional[tuple] = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        unknown = [name for name in self.chosen_levels or () if name not in self.feature_levels]
        if unknown:
            raise ValueError(f'{self.name}.model.alignment_levels: unknown {", ".join(unknown)}; valid choices: '
                             f'{", ".join(self.feature_levels)}')

    @property
    def alignment_levels(self):
        """The levels chosen from the source boxes (adapt.models.alignment_levels) or set; without a choice (a
        detector built before its run derives one, or a run made before the choice existed) the deepest backbone
        level, which DA-Faster aligns."""
        return self.chosen_levels or (self.model.levels[-1],)

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
    """A dense head (SSD, RetinaNet, YOLO): class logits 'cls_logits' [B, A, C'] at fixed anchors, ordered by head
    level, then location (row-major), then anchor type at the location (`head_levels`), and the model's
    'head_maps' (one [B, h, w, C_l] per head level: the map its class predictor reads), from which the instances
    are read at the `instance_top_k` best anchors."""
    instance_top_k: int = dataclasses.field(default=64, kw_only=True)

    @property
    @abc.abstractmethod
    def head_levels(self) -> tuple:
        """(name, (h, w), anchors per location) of each head level, in the anchors' order."""

    @abc.abstractmethod
    def positives(self, batch):
        """[B, A] bool: the anchors the family's own matcher makes positive for a labelled batch."""

    def with_instances(self, outputs, features):
        """The instances at the `instance_top_k` anchors of highest foreground score over all anchors (the
        choice carries no gradient): each one's level map (the class predictor's input) at its anchor's
        location, in the group of its level (see adapt.models.detector); nothing trainable lies between the
        map and the instance, so instance-level alignment acts on what the heads read."""
        features = dict(features)
        maps = features.pop('head_maps')
        logits = outputs['cls_logits']
        score = jnp.max(class_scores(lax.stop_gradient(logits), self.score_kind), axis=-1)  # [B, A]
        _, top = lax.top_k(score, min(self.instance_top_k, score.shape[1]))
        groups, first = {}, 0
        for (name, _, per_location), level_map in zip(self.head_levels, maps):
            batch, h, w, channels = level_map.shape
            inside = (top >= first) & (top < first + h * w * per_location)
            location = jnp.clip((top - first) // per_location, 0, h * w - 1)
            values = jnp.take_along_axis(level_map.reshape(batch, h * w, channels), location[..., None], axis=1)
            groups[name] = {'features': jnp.where(inside[..., None], values, 0.0), 'mask': inside}
            first += h * w * per_location
        return {**features, 'instances': groups,
                'instance_logits': jnp.take_along_axis(logits, top[..., None], axis=1),
                'instance_mask': jnp.ones(top.shape, bool)}

    def from_saved(self, variables):
        """Saved variables without the per-level instance projections of runs made before issue 26 (item 5):
        'instance{k}' (a top-level 1x1 conv per head level, in 'params' only) read nothing the heads read and
        were trained by the reversed gradient alone; they are dropped, every other variable is kept as is."""
        return {collection: ({k: v for k, v in tree.items() if not re.match(OBSOLETE_PARAMS, k)}
                             if collection == 'params' else tree) for collection, tree in variables.items()}
