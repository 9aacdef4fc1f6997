"""shared_latent: SSD's head on the UNIT shared latent space (the lectures' shared latent feature space).

A finished UNIT run's generator (`adapt.models.unit.Generator`) maps day images (domain a) and night images
(domain b) through their own encoder fronts into one shared latent space. The detector reads that latent
map: `latent = shared_encoder(front(to_model(images01), domain))` (stride 2**n_downsample), then SSD's
extra stride-2 layers, with SSD's (softmax) or RetinaNet's (sigmoid) head on 'latent', 'extra0', ...
Trained on labelled day images through the day encoder, it predicts on night images through the night
encoder: `for_input(name)` routes a training domain or evaluation split to the encoder of its domain.

Variables: the encoder sits under 'features/encoder' with the UNIT generator's names ('enc_a', 'enc_b',
'enc_shared'), both fronts always present, so one variable set fits both routes and `init` puts the UNIT
generator's parameters in place by key. With `train_encoder` off the encoder is a fixed feature extractor: no
gradient flows into it (the backward pass stops at the latent map), and `frozen_params` freezes it in the
optimizer under any method, so weight decay cannot move it either.

Config block `config.shared_latent`: SSD's (`model` without a backbone, `matcher`, `loss`, `postprocess`)
plus `unit_run` (the train_unit workdir), `variant` ('ssd' | 'retinanet'), `train_encoder` and
`target_inputs` (comma-separated words: input names containing one go through the night encoder).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from adapt.models.dense import DENSE_SETTINGS, model_fields
from adapt.models.features import extra_layers
from adapt.models.ssd import SSD, VARIANTS, SSDDetector, detector_settings
from adapt.models.unit import UNIT, Generator, UNITConfig, to_model

ENCODER = 'encoder'  # the encoder's scope under 'features' (the UNIT generator's names below it)
FROZEN_ENCODER = rf'^detector/features/{ENCODER}/'


class LatentFeatures(nn.Module):
    """The UNIT encoder of `domain` on images in [0, 1] (the latent mean), then `extra_layers`."""
    unit: UNITConfig
    domain: str
    extra_channels: tuple
    train_encoder: bool = False
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train=False):
        encoder = UNIT(self.unit, name=ENCODER)
        x = to_model(images)
        if self.is_initializing():  # both fronts' parameters exist whichever domain this route reads
            encoder.front(x, 'b' if self.domain == 'a' else 'a')
        latent = encoder.encode(x, self.domain)
        if not self.train_encoder:
            latent = lax.stop_gradient(latent)
        latent = latent.astype(self.dtype)
        return [latent] + extra_layers(latent, self.extra_channels, train, self.frozen_bn, self.axis_name,
                                       self.dtype)


class SharedLatentSSD(SSD):
    """SSD whose features are `LatentFeatures` (levels 'latent', 'extra0', ...) instead of a backbone's."""
    unit: UNITConfig = UNITConfig()
    domain: str = 'a'
    train_encoder: bool = False
    levels: tuple = ('latent',)

    def feature_module(self, **kwargs):
        return LatentFeatures(self.unit, self.domain, tuple(self.extra_channels), self.train_encoder,
                              self.frozen_bn, self.axis_name, self.dtype, **kwargs)


def input_words(text: str) -> tuple:
    """'night,dusk' -> ('night', 'dusk')."""
    return tuple(w.strip() for w in text.split(',') if w.strip())


def input_domain(name: str, target_inputs) -> str:
    """'b' (the night encoder) for the training domain 'target' and for input names containing a word of
    `target_inputs` ('validation_night'); 'a' (the day encoder) otherwise."""
    return 'b' if name == 'target' or any(word in name for word in target_inputs) else 'a'


@dataclasses.dataclass(frozen=True, eq=False)
class SharedLatentDetector(SSDDetector):
    """SSDDetector on a `SharedLatentSSD`; `generator_params`: the UNIT generator parameters whose encoders
    `init` puts in place; `routes`: {domain: detector}, shared by the detectors `for_input` returns (built
    once each)."""
    generator_params: Any = dataclasses.field(default=None, repr=False)
    target_inputs: tuple = ('night', 'dusk')
    routes: dict = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        super().__post_init__()
        self.routes.setdefault(self.model.domain, self)

    def for_input(self, name):
        domain = input_domain(name, self.target_inputs)
        if domain not in self.routes:
            self.routes[domain] = dataclasses.replace(self, model=self.model.clone(domain=domain),
                                                      eval_model=self.eval_model.clone(domain=domain))
        return self.routes[domain]

    @property
    def frozen_params(self):
        return () if self.model.train_encoder else (FROZEN_ENCODER,)

    def init(self, key):
        """A fresh head (extra layers included) on the UNIT generator's encoder parameters, copied as they are."""
        variables = super().init(key)
        params = variables['params']
        encoder = {part: self.generator_params[part] for part in params['features'][ENCODER]}
        return {**variables, 'params': {**params, 'features': {**params['features'], ENCODER: encoder}}}

    def backbone(self, variables):
        raise ValueError('shared_latent has no backbone of adapt.models.backbones: its features are the UNIT '
                         'encoders of shared_latent.unit_run')

    def with_backbone(self, variables, collection, tree):
        raise ValueError('no Keras backbone import for shared_latent: its features are the UNIT encoders of '
                         'shared_latent.unit_run')


def build(config, num_classes, image_size, generator: Generator, axis_name='data'):
    """The detector of `config.shared_latent` (see the module docstring) for `image_size` (h, w) images, on
    the encoders of `generator` (the UNIT run of `shared_latent.unit_run`)."""
    block = config.shared_latent
    if block.variant not in VARIANTS:
        raise ValueError(f'shared_latent.variant {block.variant!r}; valid choices: {", ".join(VARIANTS)}')
    model = SharedLatentSSD(num_classes=num_classes, head=VARIANTS[block.variant]['head'], axis_name=axis_name,
                            unit=generator.config, train_encoder=bool(block.train_encoder),
                            **model_fields(block.model, drop=DENSE_SETTINGS))
    return SharedLatentDetector('shared_latent', num_classes, image_size, model, model.clone(axis_name=None),
                                model.anchors(image_size), **detector_settings(block.variant, block),
                                generator_params=generator.params, target_inputs=input_words(block.target_inputs))
