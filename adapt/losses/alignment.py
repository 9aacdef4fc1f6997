"""Feature-alignment building blocks for domain adaptation, as pure (jit- and grad-safe) JAX functions.

  grl_coefficient / gradient_reversal  DANN (Ganin & Lempitsky 2015): the feature extractor is trained to
                                       fool a domain classifier by flipping the classifier's gradient.
  gaussian_mmd                         DAN (Long et al. 2015): multi-kernel Gaussian MMD^2 between samples.
  coral                                Deep CORAL (Sun & Saenko 2016): match second-order statistics.
  softmax_entropy / sigmoid_entropy    entropy minimisation on unlabelled target predictions.
  domain_bce                           the domain classifier's loss against a constant domain label.

Features are padded to static shapes under jit, so every sample function takes optional boolean row masks;
masked rows are replaced by zeros before any arithmetic, so garbage (even NaN) in padding cannot leak into
the value or the gradient, and a masked call equals the unmasked call on the valid rows alone.
Matmuls use `Precision.HIGHEST` because accelerators may otherwise run float32 matmuls in TF32/bf16,
which is too coarse for differences of kernel means. Empty masks give finite values, never NaN.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def _float(x):
    """Cast to a float dtype of at least float32 (bf16/f16 features are upcast; f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _rows(x, mask):
    """(x with invalid rows zeroed, float row weights, valid count)."""
    x = _float(x)
    if mask is None:
        w = jnp.ones(x.shape[0], x.dtype)
    else:
        valid = jnp.asarray(mask).astype(bool).reshape(x.shape[0])
        x = jnp.where(valid[:, None], x, 0)
        w = valid.astype(x.dtype)
    return x, w, jnp.sum(w)


# ----------------------------------------------------------------------------------------- gradient reversal
def grl_coefficient(progress, gamma: float = 10.0) -> jax.Array:
    """Ganin & Lempitsky's ramp 2 / (1 + exp(-gamma p)) - 1 (= tanh(gamma p / 2)), p clipped to [0, 1].

    Starting at 0 keeps the noisy early domain classifier from disturbing the features; the ramp reaches ~1.
    Clipping keeps the sign of the reversal right if progress is ever computed slightly outside [0, 1].
    """
    p = jnp.clip(_float(progress), 0.0, 1.0)
    return jnp.tanh(0.5 * gamma * p)


@jax.custom_vjp
def _reverse(x, coefficient):
    return x


def _reverse_fwd(x, coefficient):
    return x, coefficient


def _reverse_bwd(coefficient, g):
    # The coefficient is a schedule, not a parameter: it gets a zero cotangent.
    return (-coefficient * g).astype(g.dtype), jnp.zeros_like(coefficient)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x, coefficient) -> jax.Array:
    """Identity forward; backward multiplies the incoming gradient by -coefficient (reverse-mode only).

    Put it between the features and a domain classifier: the classifier minimises its loss while the
    features receive the negated gradient and so learn to make the domains indistinguishable.
    `coefficient` may be a traced scalar (e.g. `grl_coefficient(step / total)`); it is not differentiated.
    """
    x = jnp.asarray(x)
    c = jnp.asarray(coefficient)
    c = c.astype(jnp.result_type(c.dtype, jnp.float32))  # keep the scale exact even for bf16 features
    return _reverse(x, c)


# ----------------------------------------------------------------------------------------------------- MMD
def _sq_dists(z):
    """Pairwise squared Euclidean distances via the Gram matrix (O(N^2) memory, not O(N^2 d)).

    Callers centre the rows first (distances are translation invariant) to limit cancellation in
    |a|^2 + |b|^2 - 2 a.b; the result is clamped at 0 and the diagonal set to exactly 0.
    """
    sq = jnp.sum(z * z, axis=1)
    gram = jnp.matmul(z, z.T, precision=_HIGHEST)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    return jnp.where(jnp.eye(z.shape[0], dtype=bool), 0.0, d2)


def gaussian_mmd(x, y, num_kernels: int = 5, kernel_mul: float = 2.0, bandwidth=None,
                 x_mask: Optional[jax.Array] = None, y_mask: Optional[jax.Array] = None) -> jax.Array:
    """Multi-kernel Gaussian MMD^2 (DAN), biased V-statistic: mean Kxx + mean Kyy - 2 mean Kxy.

    K(a, b) = sum_i exp(-|a - b|^2 / (bw * kernel_mul ** (i - num_kernels // 2))), i = 0..num_kernels-1:
    a family of widths around bw is robust to not knowing the right scale. With `bandwidth=None`, bw is the
    mean pairwise squared distance over the valid rows of [x; y] (diagonal excluded), under stop_gradient
    so that the features cannot shrink the loss by inflating the bandwidth. x: [n, d], y: [m, d].
    """
    x, wx, nx = _rows(x, x_mask)
    y, wy, ny = _rows(y, y_mask)
    dtype = jnp.result_type(x.dtype, y.dtype)
    z = jnp.concatenate([x, y], axis=0).astype(dtype)
    w = jnp.concatenate([wx, wy]).astype(dtype)
    # Centre on the valid rows only, so a masked call computes on the same numbers as an unmasked one.
    centre = jnp.sum(z * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    d2 = _sq_dists(jnp.where(w[:, None] > 0, z - centre, 0.0))
    if bandwidth is None:
        count = jnp.sum(w)
        bw = jnp.sum(d2 * (w[:, None] * w[None, :])) / jnp.maximum(count * count - count, 1.0)
        bw = jax.lax.stop_gradient(bw)
    else:
        bw = jnp.asarray(bandwidth, dtype)
    bw = jnp.where(bw > 0, bw, 1.0)  # all rows identical: every distance is 0, any width gives kernels of 1
    scales = np.array([kernel_mul ** (i - num_kernels // 2) for i in range(num_kernels)])
    kernel = jnp.sum(jnp.exp(-d2[None] / (bw * jnp.asarray(scales, dtype)[:, None, None])), axis=0)
    # s = [w_x / n_x; -w_y / n_y] makes s^T K s = mean Kxx + mean Kyy - 2 mean Kxy in one reduction.
    s = jnp.concatenate([wx / jnp.maximum(nx, 1.0), -wy / jnp.maximum(ny, 1.0)]).astype(dtype)
    return jnp.sum(kernel * (s[:, None] * s[None, :]))


# --------------------------------------------------------------------------------------------------- CORAL
def _covariance(x, w, count):
    """Unbiased covariance (divide by count - 1) of the rows with weight 1."""
    mean = jnp.sum(x * w[:, None], axis=0) / jnp.maximum(count, 1.0)
    xc = (x - mean) * w[:, None]
    return jnp.matmul(xc.T, xc, precision=_HIGHEST) / jnp.maximum(count - 1.0, 1.0)


def coral(x, y, x_mask: Optional[jax.Array] = None, y_mask: Optional[jax.Array] = None) -> jax.Array:
    """Deep CORAL: |C_x - C_y|_F^2 / (4 d^2), C the unbiased feature covariance of the (valid) rows.

    Aligning second-order statistics is a cheap, kernel-free alternative to MMD; the 1/(4 d^2) scale of
    Sun & Saenko keeps the loss comparable across feature widths.
    """
    x, wx, nx = _rows(x, x_mask)
    y, wy, ny = _rows(y, y_mask)
    d = x.shape[1]
    diff = _covariance(x, wx, nx) - _covariance(y, wy, ny)
    return jnp.sum(diff * diff) / (4.0 * d * d)


# ---------------------------------------------------------------------------------------------- entropies
def softmax_entropy(logits, axis: int = -1) -> jax.Array:
    """Shannon entropy (nats) of softmax(logits) along `axis`, from log-softmax (no log(0)).

    Written as -sum p log p with p = 0 terms dropped, so -inf logits (masked classes) give neither NaN
    values nor NaN gradients, and every term is non-negative (no cancellation for confident predictions).
    """
    logp = jax.nn.log_softmax(_float(logits), axis=axis)
    p = jnp.exp(logp)
    safe = jnp.where(p > 0, logp, 0.0)
    return -jnp.sum(p * safe, axis=axis)


def sigmoid_entropy(logits) -> jax.Array:
    """Sum over the last axis of binary entropies of sigmoid(logits), for multi-label / objectness scores.

    H(z) = sigmoid(z) softplus(-z) + sigmoid(-z) softplus(z): both terms are non-negative and finite for
    any finite z, unlike softplus(z) - z sigmoid(z), which cancels catastrophically for large |z|.
    """
    z = _float(logits)
    h = jax.nn.sigmoid(z) * jax.nn.softplus(-z) + jax.nn.sigmoid(-z) * jax.nn.softplus(z)
    return jnp.sum(h, axis=-1)


# ------------------------------------------------------------------------------------ domain classifier BCE
def domain_bce(logits, domain, mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean binary cross-entropy of domain logits (any shape) against a constant label (0 source, 1 target).

    Computed as domain * softplus(-z) + (1 - domain) * softplus(z), stable for any logit. With `mask`
    (broadcastable to the logits), the mean runs over the valid entries only, and an empty mask gives 0
    (a batch without valid boxes must not poison the step with NaN).
    """
    z = _float(logits)
    t = jnp.asarray(domain, z.dtype)
    if mask is None:
        valid = jnp.ones(z.shape, bool)
    else:
        valid = jnp.broadcast_to(jnp.asarray(mask).astype(bool), z.shape)
    z = jnp.where(valid, z, 0.0)
    loss = t * jax.nn.softplus(-z) + (1.0 - t) * jax.nn.softplus(z)
    loss = jnp.where(valid, loss, 0.0)
    return jnp.sum(loss) / jnp.maximum(jnp.sum(valid).astype(z.dtype), 1.0)
