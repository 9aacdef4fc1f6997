"""The backbone-feature module every backbone family shares: backbone levels, then SSD's extra stride-2 levels or
an FPN over them.

A family's model calls it as its submodule 'features', so the backbone sits at 'features/backbone' in every
family (one Keras import and one `backbone` accessor for all: adapt.models.dense) and the parts after it keep
their names: 'features/extra{i}_conv{j}' (SSD, RetinaNet), 'features/fpn/lateral{i}' (Faster R-CNN).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapt.models.backbones import BACKBONES, preprocess
from adapt.models.layers import conv_init


def extra_layers(x, extra_channels, train=False, frozen_bn=False, axis_name=None, dtype=jnp.float32):
    """SSD's extra levels after the map `x`: per entry c of `extra_channels`, a 1x1 conv to c/2 and a 3x3
    stride-2 conv to c (each + BN + ReLU). Call it inside a compact module: the layers ('extra{i}_conv{j}',
    'extra{i}_bn{j}') become that module's own, so every family keeps the same parameter paths."""
    maps = []
    for i, channels in enumerate(extra_channels):
        for j, (c, k, s) in enumerate(((max(channels // 2, 8), 1, 1), (channels, 3, 2))):
            x = nn.Conv(c, (k, k), strides=(s, s), use_bias=False, kernel_init=conv_init, dtype=dtype,
                        name=f'extra{i}_conv{j}')(x)
            x = nn.BatchNorm(use_running_average=frozen_bn or not train, momentum=0.99, epsilon=1e-5,
                             axis_name=axis_name, dtype=dtype, name=f'extra{i}_bn{j}')(x)
            x = nn.relu(x)
        maps.append(x)
    return maps


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down nearest x2 upsampling + sum, 3x3 outputs (torchvision's
    FeaturePyramidNetwork, no normalisation); with `pool_level`, an extra level subsampled from the last
    (torchvision's LastLevelMaxPool, for the RPN only)."""
    channels: int
    pool_level: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, maps):
        conv = functools.partial(nn.Conv, self.channels, kernel_init=conv_init, dtype=self.dtype)
        laterals = [conv((1, 1), name=f'lateral{i}')(m) for i, m in enumerate(maps)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            up = jnp.repeat(jnp.repeat(merged[0], 2, axis=1), 2, axis=2)[:, :lateral.shape[1], :lateral.shape[2]]
            merged.insert(0, lateral + up)
        outputs = [conv((3, 3), name=f'output{i}')(x) for i, x in enumerate(merged)]
        if self.pool_level:
            outputs.append(outputs[-1][:, ::2, ::2])  # max pool, kernel 1, stride 2
        return outputs


class BackboneFeatures(nn.Module):
    """Backbone levels, then `extra_layers` (one stride-2 level per `extra_channels` entry after the last level),
    then, with `fpn_channels`, the FPN over the levels. -> a list of maps: the levels, the extra levels, the FPN
    levels."""
    backbone: str
    levels: Sequence[str]
    extra_channels: Sequence[int] = ()
    fpn_channels: Optional[int] = None
    pool_level: bool = False
    width: float = 1.0
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    @nn.compact
    def __call__(self, images, train=False):
        bn = dict(frozen_bn=self.frozen_bn, axis_name=self.axis_name, dtype=self.dtype)
        x = preprocess(self.backbone, images).astype(self.dtype)  # validates the backbone name
        net = BACKBONES[self.backbone](width=self.width, name='backbone', **bn, **dict(self.backbone_kwargs or {}))
        feats = net(x, train=train)
        maps = [feats[name] for name in self.levels]
        maps = maps + extra_layers(maps[-1], self.extra_channels, train, **bn)
        if self.fpn_channels is None:
            return maps
        return maps + FPN(self.fpn_channels, self.pool_level, self.dtype, name='fpn')(maps[:len(self.levels)])


class BackboneModel(nn.Module):
    """The fields every backbone family's model has (its subclasses add their heads' own).

    Attributes:
      num_classes: dataset classes (background not counted).
      backbone / width / backbone_kwargs: see adapt.models.backbones (e.g. {'batch_norm': True} for VGG16).
      levels: backbone feature maps the family reads ('C3' = stride 8, ...).
      frozen_bn, axis_name ('data' in the data-parallel train step), dtype: as the backbones.
    """
    num_classes: int
    backbone: str = 'resnet18'
    width: float = 1.0
    levels: Sequence[str] = ('C3', 'C4', 'C5')
    frozen_bn: bool = False
    axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    backbone_kwargs: Any = None

    def feature_module(self, **kwargs):
        """The family's `BackboneFeatures`; kwargs: `name` inside `__call__`, `parent=None` outside."""
        return self.backbone_features(**kwargs)

    def backbone_features(self, **kwargs) -> BackboneFeatures:
        """`BackboneFeatures` of this model's backbone fields; kwargs: the module's other fields, and `name` or
        `parent`."""
        return BackboneFeatures(backbone=self.backbone, levels=tuple(self.levels), width=self.width,
                                frozen_bn=self.frozen_bn, axis_name=self.axis_name, dtype=self.dtype,
                                backbone_kwargs=self.backbone_kwargs, **kwargs)

    def feature_sizes(self, image_size):
        """(height, width) of every map of the feature module for images of `image_size` (h, w), from shapes
        only (cached)."""
        return list(feature_map_sizes(self.feature_module(parent=None), tuple(image_size)))


_SIZES = {}


def feature_map_sizes(module, image_size):
    """(height, width) of each map `module` returns for images of `image_size` (h, w). Shape inference costs
    ~2 s of tracing, and every detector build (a run loaded, a setup) asks for the same sizes: kept per module
    settings (its repr: flax modules with dict fields do not hash)."""
    key = (repr(module), tuple(image_size))
    if key not in _SIZES:
        dummy = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
        maps, _ = jax.eval_shape(module.init_with_output, jax.random.key(0), dummy)
        _SIZES[key] = tuple(tuple(m.shape[1:3]) for m in maps)
    return _SIZES[key]
