"""The `translated` detector family: a frozen input transform in front of a detector of another family.

Day2Night's online translation: every frame goes night -> day through a frozen UNIT generator before the
day-trained detector sees it (no night labels, no detector retraining). The same wrapper serves the simple
baselines it must beat (gamma correction, histogram equalisation; see adapt.models.input_transforms).
Config block `config.translated`:
  detector: the wrapped family ('ssd', 'yolo', ...), built from its own block as usual;
  transform: 'unit' | 'gamma' | 'histeq', with its settings: unit_run (a finished train_unit workdir, whose
    generator the builder is given: adapt.run_models loads it) and unit_step (None: the latest; a run pins
    it), target_mean (gamma), target_cdf (histeq).
The variables are the wrapped detector's, so a run of it loads, evaluates, benchmarks and draws like any
detector; no gradient reaches the transform (it is frozen even if the detector is trained behind it).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from adapt.models.detector import DETECTORS, Detector
from adapt.models.input_transforms import build_transform


@dataclasses.dataclass(frozen=True, eq=False)
class TranslatedDetector(Detector):
    inner: Detector
    transform: Callable            # images01 -> images01, jnp, frozen
    transform_name: str
    name: str = 'translated'

    @property
    def num_classes(self):
        return self.inner.num_classes

    @property
    def image_size(self):
        return self.inner.image_size

    @property
    def score_kind(self):
        return self.inner.score_kind

    @property
    def feature_levels(self):
        return self.inner.feature_levels

    @property
    def alignment_levels(self):
        return self.inner.alignment_levels

    @property
    def frozen_params(self):
        return self.inner.frozen_params

    def translate(self, images):
        return jax.lax.stop_gradient(self.transform(images))

    def init(self, key):
        return self.inner.init(key)

    def apply(self, variables, images, train=False, labels=None):
        return self.inner.apply(variables, self.translate(images), train, labels)

    def loss(self, outputs, batch, axis_name=None, key=None):
        return self.inner.loss(outputs, batch, axis_name, key)

    def postprocess(self, outputs):
        return self.inner.postprocess(outputs)

    def dense_scores(self, outputs):
        return self.inner.dense_scores(outputs)

    def backbone(self, variables):
        return self.inner.backbone(variables)

    def with_backbone(self, variables, collection, tree):
        return self.inner.with_backbone(variables, collection, tree)

    def from_saved(self, variables):
        return self.inner.from_saved(variables)

    def for_input(self, name):
        inner = self.inner.for_input(name)
        return self if inner is self.inner else dataclasses.replace(self, inner=inner)


def build(config, num_classes, image_size, generator=None):
    """The wrapped family's detector for `image_size` (h, w) images behind `block.transform`; `generator`: the
    UNIT generator of the unit transform (adapt.models.unit.Generator)."""
    block = config.translated
    if block.detector == 'translated':
        raise ValueError('translated.detector: name the wrapped family (ssd, yolo, ...), not translated itself')
    inner = DETECTORS.get(block.detector)(config, num_classes, image_size)
    return TranslatedDetector(inner, build_transform(block, generator), block.transform)
