"""A frozen backbone of ours as a feature extractor (for a detection-aware feature loss and the Frechet distance).

`FrozenFeatures(images01) -> {level: [B, h, w, c]}` runs a backbone of `adapt.models.backbones` in inference
mode (BatchNorm running statistics) on images in [0, 1], with its variables held constant (no gradient
reaches them; gradients do flow to the images). Two sources of weights:
  `from_detector_workdir(workdir)`: the backbone of a detector trained by experiments/train_detector.py
      (its config.json names the backbone; the latest checkpoint holds params['features']['backbone']);
  `random_features(name, ...)`: a seeded random initialisation (deterministic, for tests and as a last
      resort; such features are far weaker than trained ones).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
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
    variables = module.init(jax.random.PRNGKey(seed), np.zeros((1, 64, 64, 3), np.float32), train=False)
    variables = jax.tree.map(np.asarray, variables)
    return FrozenFeatures(name, module, {'params': variables['params'],
                                         'batch_stats': variables.get('batch_stats', {})},
                          tuple(levels), f'random {name} x{width} (seed {seed})')


def from_detector_workdir(workdir: str, levels: Sequence[str] = ('C3', 'C4'),
                          step: int | None = None) -> FrozenFeatures:
    """The backbone of the detector trained in `workdir` (config.json + checkpoints/, latest step)."""
    from adapt.training.checkpoint import Checkpointer  # orbax: only when a checkpoint is read
    config_path = os.path.join(workdir, 'config.json')
    if not os.path.exists(config_path):
        raise FileNotFoundError(f'{workdir} has no config.json: not a train_detector workdir')
    with open(config_path) as f:
        model_cfg = json.load(f)['model']
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
    try:
        restored = ckpt.restore(step=step)
        used_step = ckpt.latest_step() if step is None else step
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints')
    state, _ = restored
    params = state['params']['features']['backbone']
    stats = state.get('batch_stats', {}).get('features', {}).get('backbone', {})
    module = get_backbone(model_cfg['backbone'], width=model_cfg.get('width', 1.0),
                          **dict(model_cfg.get('backbone_kwargs') or {}))
    return FrozenFeatures(model_cfg['backbone'], module,
                          {'params': jax.tree.map(np.asarray, params), 'batch_stats': jax.tree.map(np.asarray, stats)},
                          tuple(levels), f'detector {workdir} step {used_step}')
