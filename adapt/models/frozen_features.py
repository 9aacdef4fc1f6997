"""A frozen backbone of ours as a feature extractor (for a detection-aware feature loss and the Frechet distance).

`FrozenFeatures(images01) -> {level: [B, h, w, c]}` runs a backbone of `adapt.models.backbones` in inference
mode (BatchNorm running statistics) on images in [0, 1], with its variables held constant (no gradient
reaches them; gradients do flow to the images). Two sources of weights:
  `from_detector(detector, variables)`: the backbone of any trained detector (through the detector
      interface: the family knows where its backbone lives; adapt.run_models.detector_features reads a run's);
  `random_features(name, ...)`: a seeded random initialisation (deterministic, for tests and as a last
      resort; such features are far weaker than trained ones).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adapt.models.backbones import get_backbone, preprocess


@dataclasses.dataclass(frozen=True)
class FrozenFeatures:
    name: str                      # backbone registry name
    module: Any                    # the backbone module (axis_name None)
    variables: Any                 # {'params', 'batch_stats'}
    levels: tuple                  # e.g. ('C3', 'C4')
    source: str = ''               # where the weights came from (for reports)

    def __call__(self, images01) -> dict:
        variables = jax.lax.stop_gradient(self.variables)
        feats = self.module.apply(variables, preprocess(self.name, images01), train=False)
        return {k: feats[k] for k in self.levels}

    def with_levels(self, levels: Sequence[str]) -> 'FrozenFeatures':
        return dataclasses.replace(self, levels=tuple(levels))


def random_features(name: str = 'resnet18', width: float = 0.25, levels: Sequence[str] = ('C3', 'C4'),
                    seed: int = 0, backbone_kwargs: dict | None = None) -> FrozenFeatures:
    module = get_backbone(name, width=width, **dict(backbone_kwargs or {}))
    init = jax.jit(lambda key: module.init(key, jnp.zeros((1, 64, 64, 3), jnp.float32), train=False))
    variables = init(jax.random.PRNGKey(seed))  # one program, not one compilation per layer
    variables = jax.tree.map(np.asarray, variables)
    return FrozenFeatures(name, module, {'params': variables['params'],
                                         'batch_stats': variables.get('batch_stats', {})},
                          tuple(levels), f'random {name} x{width} (seed {seed})')


def from_detector(detector, variables, levels: Sequence[str] = ('C3', 'C4'), source: str = '') -> FrozenFeatures:
    """The backbone of a trained detector (its family knows where the backbone lives in `variables`)."""
    name, module, variables = detector.backbone(variables)
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    return FrozenFeatures(name, module, jax.tree.map(np.asarray, variables), tuple(levels), source)
