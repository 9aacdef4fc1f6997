"""UNIT (Liu, Breuel, Kautz 2017): two domain VAEs sharing a latent space, and multi-scale PatchGAN critics.

Generator (`UNIT`), images in [-1, 1], NHWC:
  encoder of domain d: conv7x7 -> `n_downsample` x conv4x4 stride 2 (channels x2 each) -> private
    residual blocks -> SHARED residual blocks -> mu (the latent mean);
  decoder of domain d: SHARED residual blocks -> private residual blocks -> `n_downsample` x
    (nearest upsample x2 + conv5x5 + layer norm) -> conv7x7 + tanh.
Encoder convs and all residual blocks use instance norm (no affine, as the reference's InstanceNorm2d;
their convs have no bias, which the norm would cancel) and ReLU. The last `n_shared` encoder blocks
(`enc_shared`) and the first `n_shared` decoder blocks (`dec_shared`) are one parameter set used by
both domains: the shared latent space. Upsampling is
nearest-neighbour x2 + conv5x5 (the reference decoder's; never ConvTranspose, whose gradient is slow on
XLA:CPU), computed in its equivalent sub-pixel form (`UpConv`: 2.8x fewer FLOPs, the same function).
The latent is z = mu + eps with eps ~ N(0, 1) in training; the KL term is mean(mu^2) (`losses.gan.kl`).

Discriminator (`Discriminators`, one `MultiScaleDiscriminator` per domain): at each of `num_scales`
scales (3x3 stride-2 average pooling between scales, padding not counted) a stack of conv4x4 stride 2 +
leaky ReLU 0.2 and a 1x1 conv to a one-channel patch map.

Parameter tree: {'enc_a', 'enc_b', 'enc_shared', 'dec_shared', 'dec_a', 'dec_b'} for the generator;
{'dis_a', 'dis_b'} for the discriminators. Domain 'a' is the source (day), 'b' the target (night).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapt.settings import checked

PAD_TYPES = ('reflect', 'zero')

# The reference initialisation: Kaiming-normal (fan in) for the generator, N(0, 0.02) for the critics.
gen_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
dis_init = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class UNITConfig:
    """Architecture knobs (reference values: dim 64, 2 downsamplings, 4 residual blocks of which 1 shared,
    critics of width 64 with 4 layers at 3 scales, reflection padding)."""
    dim: int = 64                 # channels after the first conv (x2 per downsampling)
    n_downsample: int = 2
    n_res: int = 4                # residual blocks per encoder (and per decoder), shared ones included
    n_shared: int = 1             # of which shared between the domains (encoder end, decoder start)
    dis_dim: int = 64
    dis_layers: int = 4
    num_scales: int = 3
    pad_type: str = 'reflect'     # reflect | zero (upsampling convs: replicate | zero, see UpConv)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> 'UNITConfig':
        return cls(**checked(cfg, (f.name for f in dataclasses.fields(cls)), 'unit model'))

    def __post_init__(self):
        if self.pad_type not in PAD_TYPES:
            raise ValueError(f'pad_type {self.pad_type!r}: choose one of {", ".join(PAD_TYPES)}')
        if not 1 <= self.n_shared <= self.n_res:
            raise ValueError(f'n_shared must lie in [1, n_res={self.n_res}], got {self.n_shared}')

    @property
    def stride(self) -> int:
        """Total downsampling factor: image sides should be multiples of it."""
        return 2 ** self.n_downsample


def _pad(x, pad, pad_type):
    if pad == 0:
        return x
    mode = 'reflect' if pad_type == 'reflect' else 'constant'
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)


def instance_norm(x, epsilon: float = 1e-5):
    """Per-sample, per-channel standardisation over H, W (InstanceNorm2d without affine parameters).

    The means are contractions with a constant vector (einsum -> dot), not reductions: XLA:CPU runs
    these spatial reductions of NHWC tensors (and their gradients) far more slowly than the equivalent
    dots; measured, this makes the whole UNIT step ~7 % faster than flax's InstanceNorm.
    """
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    average = jnp.full((h * w,), 1.0 / (h * w), x.dtype)
    centred = flat - jnp.einsum('bnc,n->bc', flat, average)[:, None]
    variance = jnp.einsum('bnc,n->bc', centred * centred, average)
    return (centred * jax.lax.rsqrt(variance + epsilon)[:, None]).reshape(b, h, w, c)


def normalize(x, norm: str, name: str):
    """Instance norm (per sample and channel, no affine) or layer norm (per sample over H, W, C with a
    per-channel scale and offset); both per sample, so results do not depend on the batch split."""
    if norm == 'instance':
        return instance_norm(x)
    if norm == 'layer':
        return nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1, name=name)(x)
    return x


class ConvBlock(nn.Module):
    """pad -> conv -> norm -> activation (the reference's Conv2dBlock)."""
    features: int
    kernel: int
    stride: int = 1
    pad: int = 0
    norm: str = 'none'
    activation: str = 'relu'      # relu | lrelu | tanh | none
    pad_type: str = 'reflect'
    kernel_init: Any = gen_init

    @nn.compact
    def __call__(self, x):
        x = _pad(x, self.pad, self.pad_type)
        # No bias before instance norm: it would be subtracted right away (its gradient is only
        # round-off, which Adam would blow up into lr-sized random steps).
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                    padding='VALID', use_bias=self.norm != 'instance', kernel_init=self.kernel_init,
                    name='conv')(x)
        x = normalize(x, self.norm, 'norm')
        if self.activation == 'relu':
            return nn.relu(x)
        if self.activation == 'lrelu':
            return nn.leaky_relu(x, 0.2)
        if self.activation == 'tanh':
            return jnp.tanh(x)
        return x


# Which of the 5 taps (offsets -2..2 on the upsampled grid) of a 5x5 kernel fall on low-resolution
# neighbour i-1, i, i+1 of output row 2i + phase, for phase 0 and 1: the sub-pixel form below.
_TAPS = np.zeros((2, 3, 5), np.float32)
for _phase in range(2):
    for _k in range(5):
        _TAPS[_phase, (_phase + _k) // 2, _k] = 1.0


class UpConv(nn.Module):
    """nearest-upsample x2 -> pad 2 -> conv5x5, computed at the low resolution (depth-to-space).

    Each of the 2x2 output phases of conv5x5(upsample(x)) only sees a 3x3 low-resolution neighbourhood,
    so the 5x5 kernel folds into four 3x3 kernels (a [3, 3, C, 4C'] conv) followed by depth-to-space:
    the same function with 36 instead of 100 multiply-adds per low-resolution pixel and channel pair,
    and no upsampled intermediate. The parameters are the plain 5x5 conv's ('kernel' [5, 5, C, C'],
    'bias'). Border: 'zero' pads zeros (exact); 'reflect' replicates the edge at low resolution, which
    equals replicate-padding the upsampled image (reflection would differ in the outermost pixel row).
    """
    features: int
    pad_type: str = 'reflect'
    kernel_init: Any = gen_init

    @nn.compact
    def __call__(self, x):
        kernel = self.param('kernel', self.kernel_init, (5, 5, x.shape[-1], self.features))
        bias = self.param('bias', nn.initializers.zeros, (self.features,))
        taps = jnp.asarray(_TAPS)
        folded = jnp.einsum('pak,qbl,klio->abiopq', taps, taps, kernel)    # [3, 3, C, C', 2, 2]
        folded = folded.reshape(3, 3, x.shape[-1], self.features * 4)       # out channel = (o, p, q)
        mode = 'edge' if self.pad_type == 'reflect' else 'constant'
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=mode)
        y = jax.lax.conv_general_dilated(x, folded, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        b, h, w, _ = y.shape
        y = y.reshape(b, h, w, self.features, 2, 2).transpose(0, 1, 4, 2, 5, 3)
        return y.reshape(b, 2 * h, 2 * w, self.features) + bias


class UpBlock(nn.Module):
    """nearest upsample x2 + conv5x5 + layer norm + ReLU (the reference decoder's upsampling stage)."""
    features: int
    pad_type: str = 'reflect'

    @nn.compact
    def __call__(self, x):
        return nn.relu(normalize(UpConv(self.features, self.pad_type, name='conv')(x), 'layer', 'norm'))


class ResBlocks(nn.Module):
    """`n` residual blocks: x + (conv3x3 IN ReLU -> conv3x3 IN)(x)."""
    n: int
    pad_type: str = 'reflect'

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        for i in range(self.n):
            y = ConvBlock(c, 3, pad=1, norm='instance', pad_type=self.pad_type, name=f'res{i}_0')(x)
            y = ConvBlock(c, 3, pad=1, norm='instance', activation='none', pad_type=self.pad_type,
                          name=f'res{i}_1')(y)
            x = x + y
        return x


class EncoderFront(nn.Module):
    """A domain's private encoder layers (everything before the shared blocks)."""
    cfg: UNITConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        block = dict(pad_type=cfg.pad_type)
        x = ConvBlock(cfg.dim, 7, pad=3, norm='instance', name='conv_in', **block)(x)
        for i in range(cfg.n_downsample):
            x = ConvBlock(cfg.dim * 2 ** (i + 1), 4, stride=2, pad=1, norm='instance', name=f'down{i}', **block)(x)
        return ResBlocks(cfg.n_res - cfg.n_shared, name='res', **block)(x)


class DecoderBack(nn.Module):
    """A domain's private decoder layers (everything after the shared blocks)."""
    cfg: UNITConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        block = dict(pad_type=cfg.pad_type)
        x = ResBlocks(cfg.n_res - cfg.n_shared, name='res', **block)(x)
        for i in range(cfg.n_downsample):
            x = UpBlock(x.shape[-1] // 2, cfg.pad_type, name=f'up{i}')(x)
        return ConvBlock(3, 7, pad=3, activation='tanh', name='conv_out', **block)(x)


class UNIT(nn.Module):
    """The two coupled VAEs. `encode(x, d) -> mu`, `decode(z, d) -> image`; `__call__` runs every path
    (used by `init`, so all parameters are created)."""
    cfg: UNITConfig = UNITConfig()

    def setup(self):
        cfg = self.cfg
        self.enc_a, self.enc_b = EncoderFront(cfg), EncoderFront(cfg)
        self.dec_a, self.dec_b = DecoderBack(cfg), DecoderBack(cfg)
        self.enc_shared = ResBlocks(cfg.n_shared, cfg.pad_type)
        self.dec_shared = ResBlocks(cfg.n_shared, cfg.pad_type)

    def front(self, x, domain: str):
        """Domain-private encoder layers."""
        return (self.enc_a if domain == 'a' else self.enc_b)(x)

    def back(self, s, domain: str):
        """Domain-private decoder layers."""
        return (self.dec_a if domain == 'a' else self.dec_b)(s)

    def shared_encoder(self, h):
        return self.enc_shared(h)

    def shared_decoder(self, z):
        return self.dec_shared(z)

    def encode(self, x, domain: str):
        """Latent mean mu of images x of `domain`."""
        return self.enc_shared(self.front(x, domain))

    def decode(self, z, domain: str):
        return self.back(self.dec_shared(z), domain)

    def translate(self, x, source: str, target: str):
        """Deterministic translation (z = mu, as at test time)."""
        return self.decode(self.encode(x, source), target)

    def __call__(self, x_a, x_b):
        h_a, h_b = self.encode(x_a, 'a'), self.encode(x_b, 'b')
        return {'aa': self.decode(h_a, 'a'), 'ab': self.decode(h_a, 'b'),
                'ba': self.decode(h_b, 'a'), 'bb': self.decode(h_b, 'b')}


def downsample(x):
    """3x3 stride-2 average pooling, padding 1, padded pixels not counted (the reference's)."""
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=False)


class MultiScaleDiscriminator(nn.Module):
    """A list of `num_scales` patch maps [B, h_s, w_s, 1] (logits, no final activation)."""
    cfg: UNITConfig

    @nn.compact
    def __call__(self, x) -> Sequence[jax.Array]:
        cfg, outputs = self.cfg, []
        for s in range(cfg.num_scales):
            y = x
            for i in range(cfg.dis_layers):
                y = ConvBlock(cfg.dis_dim * 2 ** i, 4, stride=2, pad=1, activation='lrelu', pad_type=cfg.pad_type,
                              kernel_init=dis_init, name=f'scale{s}_conv{i}')(y)
            outputs.append(nn.Conv(1, (1, 1), kernel_init=dis_init, name=f'scale{s}_out')(y))
            if s + 1 < cfg.num_scales:
                x = downsample(x)
        return outputs


class Discriminators(nn.Module):
    """One multi-scale critic per domain: `(x, d) -> list of patch maps`."""
    cfg: UNITConfig = UNITConfig()

    def setup(self):
        self.dis_a, self.dis_b = MultiScaleDiscriminator(self.cfg), MultiScaleDiscriminator(self.cfg)

    def __call__(self, x, domain: str):
        return (self.dis_a if domain == 'a' else self.dis_b)(x)

    def init_both(self, x_a, x_b):
        return self.dis_a(x_a), self.dis_b(x_b)


def init_params(cfg: UNITConfig, key, image_size: Sequence[int]):
    """{'gen': ..., 'disc': ...} parameters for images of (height, width)."""
    x = jnp.zeros((1, *image_size, 3), jnp.float32)

    def init(key):
        kg, kd = jax.random.split(key)
        return {'gen': UNIT(cfg).init(kg, x, x)['params'],
                'disc': Discriminators(cfg).init(kd, x, x, method=Discriminators.init_both)['params']}

    # One program that runs once: compiled without LLVM optimisation (seconds instead of tens of seconds
    # on CPU, and far faster than dispatching hundreds of ops eagerly).
    key = jnp.asarray(key)
    return jax.jit(init).lower(key).compile(compiler_options={'xla_backend_optimization_level': 0})(key)


def to_model(images01):
    """Pipeline images in [0, 1] -> model images in [-1, 1]."""
    return jnp.asarray(images01, jnp.float32) * 2.0 - 1.0


def from_model(images):
    """Model images in [-1, 1] -> [0, 1] (clipped)."""
    return jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Generator:
    """A trained UNIT generator: its architecture, its parameters and the run step they come from (what
    the shared_latent and translated families read; `adapt.run_models.load_generator` loads one)."""
    config: UNITConfig
    params: Any
    step: int = 0


def pad_to_multiple(images, multiple: int):
    """Reflect-pad [B, H, W, C] at the bottom/right to sides divisible by `multiple`; returns (padded, (H, W))."""
    h, w = images.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        images = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='reflect')
    return images, (h, w)


def make_translate_fn(cfg: UNITConfig, source: str, target: str):
    """jit-ed `translate(gen_params, images01 [B, H, W, 3]) -> images01` (z = mu), any image size."""
    model = UNIT(cfg)

    @jax.jit
    def translate(gen_params, images01):
        x, (h, w) = pad_to_multiple(to_model(images01), cfg.stride)
        y = model.apply({'params': gen_params}, x, source, target, method=UNIT.translate)
        return from_model(y[:, :h, :w])

    return translate
