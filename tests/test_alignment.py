"""Feature-alignment losses against independent references: NumPy float64 loops, np.cov, hand numbers.

Nothing here compares the module with itself, except where the contract is a consistency property
(a masked call equals the unmasked call on the valid rows), and that is also checked against the reference.
"""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt.losses import alignment as al

# Each test gathers its computations in one jitted function: XLA compilation, not arithmetic, is the cost.

# ------------------------------------------------------------------------------------------------ helpers


def _x64():
    """A context manager enabling float64 in JAX (jax.enable_x64 today, jax.experimental.enable_x64 before)."""
    for owner in (jax, getattr(jax, 'experimental', None)):
        ctx = getattr(owner, 'enable_x64', None)
        if ctx is not None:
            return ctx(True)
    return None


X64 = _x64() is not None


@contextlib.contextmanager
def maybe_x64():
    ctx = _x64()
    if ctx is None:
        yield False
    else:
        with ctx:
            yield True


def np_schedule(p, gamma=10.0):
    return 2.0 / (1.0 + np.exp(-gamma * p)) - 1.0


def ref_sq_dists(z):
    n = len(z)
    d2 = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            diff = z[i] - z[j]
            d2[i, j] = float(np.dot(diff, diff))
    return d2


def ref_bandwidth(x, y):
    """Sum of pairwise squared distances over [x; y] / (N^2 - N), by explicit loops."""
    z = np.concatenate([x, y]).astype(np.float64)
    n = len(z)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += float(np.sum((z[i] - z[j]) ** 2))
    return total / (n * n - n)


def ref_mmd(x, y, num_kernels=5, kernel_mul=2.0, bandwidth=None):
    """Multi-kernel Gaussian MMD^2, biased V-statistic, by explicit double loops over pairs in float64."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    bw = ref_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    widths = [bw * kernel_mul ** (i - num_kernels // 2) for i in range(num_kernels)]

    def k(a, b):
        d2 = float(np.sum((a - b) ** 2))
        return sum(np.exp(-d2 / w) for w in widths)

    kxx = sum(k(a, b) for a in x for b in x) / (len(x) * len(x))
    kyy = sum(k(a, b) for a in y for b in y) / (len(y) * len(y))
    kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return kxx + kyy - 2.0 * kxy


def ref_coral(x, y):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    d = x.shape[1]
    diff = np.cov(x, rowvar=False) - np.cov(y, rowvar=False)
    return float(np.sum(diff ** 2) / (4.0 * d * d))


def central_diff(f, x, eps=1e-6):
    """Central finite differences of a scalar NumPy function f at x (float64)."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
    return g


RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 4)).astype(np.float32)
Y = (RNG.normal(size=(9, 4)) * 1.3 + 0.6).astype(np.float32)  # n != m, a shifted and wider domain
X_MASK = np.array([1, 1, 0, 1, 1, 0], bool)
Y_MASK = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1], bool)


def poisoned(a, mask, value=np.nan):
    """Rows outside the mask hold garbage: a correct masked loss never looks at them."""
    a = a.copy()
    a[~mask] = value
    return a


# ---------------------------------------------------------------------------------------- gradient reversal


def test_gradient_reversal_forward_is_identity_and_backward_is_negated_scaled():
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    w = RNG.normal(size=(3, 5)).astype(np.float32)
    c = 0.37
    wb = jnp.asarray(w, jnp.bfloat16)

    @jax.jit
    def run(x, c):
        out = al.gradient_reversal(x, c)
        gx, gc = jax.grad(lambda x, c: jnp.sum(w * al.gradient_reversal(x, c)), argnums=(0, 1))(x, c)
        # Low-precision features: the gradient keeps the feature dtype.
        gb = jax.grad(lambda x: jnp.sum(wb * al.gradient_reversal(x, c)))(x.astype(jnp.bfloat16))
        return out, gx, gc, gb

    out, gx, gc, gb = run(x, jnp.float32(c))
    np.testing.assert_array_equal(np.asarray(out), x)
    np.testing.assert_allclose(np.asarray(gx), -c * w, rtol=1e-6)
    assert float(gc) == 0.0  # the coefficient is a schedule, not a parameter
    assert gb.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(gb, np.float32), -c * np.asarray(wb, np.float32), rtol=1e-2)


def test_grl_schedule_values_and_derivative():
    ps = np.array([0.0, 1.0, 0.05, 0.2, 0.5, 0.8] + list(np.linspace(0.0, 1.0, 11)), np.float32)

    @jax.jit
    def run(ps):
        values = jax.vmap(al.grl_coefficient)(ps)
        slopes = jax.vmap(jax.grad(al.grl_coefficient))(ps)
        return values, slopes, al.grl_coefficient(ps[4], gamma=4.0)

    values, slopes, gamma4 = (np.asarray(a, np.float64) for a in run(ps))
    assert values[0] == 0.0
    np.testing.assert_allclose(values[1], 2.0 / (1.0 + np.exp(-10.0)) - 1.0, rtol=1e-6)
    np.testing.assert_allclose(values, np_schedule(ps.astype(np.float64)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gamma4, np_schedule(0.5, 4.0), rtol=1e-6)
    # Central finite differences of the NumPy schedule against jax.grad, at interior points. In float32 the
    # derivative of a near-saturated tanh (1 - tanh^2) cancels, hence the small absolute slack.
    h = 1e-5
    for p, slope in zip(ps[2:6].astype(np.float64), slopes[2:6]):
        fd = (np_schedule(p + h) - np_schedule(p - h)) / (2 * h)
        np.testing.assert_allclose(slope, fd, rtol=1e-4, atol=2e-6)


def test_gradient_through_scheduled_reversal():
    w = RNG.normal(size=(4, 3)).astype(np.float32)
    x = RNG.normal(size=(4, 3)).astype(np.float32)

    @jax.jit
    def grads(x, p):
        return jax.grad(lambda x, p: jnp.sum(w * al.gradient_reversal(x, al.grl_coefficient(p))),
                        argnums=(0, 1))(x, p)

    for p in (0.0, 0.25, 1.0):
        gx, gp = grads(jnp.asarray(x), jnp.float32(p))
        np.testing.assert_allclose(np.asarray(gx), -np_schedule(p) * w, rtol=1e-5, atol=1e-7)
        assert float(gp) == 0.0


# ---------------------------------------------------------------------------------------------------- MMD

# (bandwidth, num_kernels, kernel_mul): odd/even kernel counts move the centre exponent.
MMD_CASES = ((None, 5, 2.0), (3.0, 5, 2.0), (3.0, 4, 1.5), (None, 1, 2.0))


def test_mmd_matches_pairwise_loops():
    @jax.jit
    def run(x, y):
        return [al.gaussian_mmd(x, y, nk, mul, bandwidth) for bandwidth, nk, mul in MMD_CASES]

    for value, (bandwidth, nk, mul) in zip(run(X, Y), MMD_CASES):
        expected = ref_mmd(X, Y, nk, mul, bandwidth)
        assert expected > 0.05  # the test actually sees a domain gap
        np.testing.assert_allclose(float(value), expected, rtol=2e-5, atol=1e-6)


def test_mmd_masked_equals_reference_on_valid_rows():
    # Rows outside the masks hold NaN: the masked loss must equal the loss of the valid rows alone.
    @jax.jit
    def run(x, y, mx, my):
        return [al.gaussian_mmd(x, y, bandwidth=bandwidth, x_mask=mx, y_mask=my) for bandwidth in (None, 2.5)]

    for value, bandwidth in zip(run(poisoned(X, X_MASK), poisoned(Y, Y_MASK), X_MASK, Y_MASK), (None, 2.5)):
        np.testing.assert_allclose(float(value), ref_mmd(X[X_MASK], Y[Y_MASK], bandwidth=bandwidth),
                                   rtol=2e-5, atol=1e-6)


def test_mmd_of_identical_samples_is_zero():
    same = np.ones((3, 4), np.float32)  # zero spread: the automatic bandwidth is 0, the loss stays finite

    @jax.jit
    def run(x, same):
        return al.gaussian_mmd(x, x[::-1]), al.gaussian_mmd(same, same)

    np.testing.assert_allclose([float(v) for v in run(X, same)], 0.0, atol=1e-5)


@pytest.mark.skipif(not X64, reason='needs float64 in JAX')
def test_mmd_gradient_matches_finite_differences():
    x = RNG.normal(size=(4, 3))
    y = RNG.normal(size=(5, 3)) + 0.4
    mx = np.array([1, 0, 1, 1], bool)
    my = np.array([1, 1, 0, 1, 1], bool)
    # Masked cases get garbage (huge / NaN) rows: no value, gradient or NaN may leak from them.
    cases = [(bandwidth, masked) for bandwidth in (1.7, None) for masked in (False, True)]
    with maybe_x64():
        @jax.jit
        def run(x, y, x_bad, y_bad):
            return [jax.grad(lambda x: al.gaussian_mmd(x, y_bad if masked else y, bandwidth=bandwidth,
                                                       x_mask=mx if masked else None,
                                                       y_mask=my if masked else None))(x_bad if masked else x)
                    for bandwidth, masked in cases]

        grads = run(jnp.asarray(x), jnp.asarray(y), poisoned(x, mx, 1e6), poisoned(y, my))
        assert all(g.dtype == jnp.float64 for g in grads)
        grads = [np.asarray(g) for g in grads]
    for g, (bandwidth, masked) in zip(grads, cases):
        vx = mx if masked else np.ones(4, bool)
        vy = my if masked else np.ones(5, bool)
        # The automatic bandwidth is under stop_gradient: differentiate with it frozen at its value at x.
        bw = ref_bandwidth(x[vx], y[vy]) if bandwidth is None else bandwidth
        fd = central_diff(lambda xv: ref_mmd(xv, y[vy], bandwidth=bw), x[vx])
        np.testing.assert_allclose(g[vx], fd, rtol=1e-6, atol=1e-9)
        assert np.all(g[~vx] == 0)


# -------------------------------------------------------------------------------------------------- CORAL


def test_coral_matches_np_cov_with_and_without_masks():
    @jax.jit
    def run(x, y, x_bad, y_bad, mx, my):
        return al.coral(x, y), al.coral(x, x[::-1] + 5.0), al.coral(x_bad, y_bad, mx, my)

    full, shifted, masked = run(X, Y, poisoned(X, X_MASK), poisoned(Y, Y_MASK), X_MASK, Y_MASK)
    assert ref_coral(X, Y) > 1e-3
    np.testing.assert_allclose(float(full), ref_coral(X, Y), rtol=1e-5)
    np.testing.assert_allclose(float(shifted), 0.0, atol=1e-6)  # a shift and a reordering are invisible
    np.testing.assert_allclose(float(masked), ref_coral(X[X_MASK], Y[Y_MASK]), rtol=1e-5)


@pytest.mark.skipif(not X64, reason='needs float64 in JAX')
def test_coral_gradient_matches_finite_differences():
    x = RNG.normal(size=(5, 3))
    y = RNG.normal(size=(7, 3)) * 2.0
    mx = np.array([1, 1, 0, 1, 1], bool)
    with maybe_x64():
        @jax.jit
        def run(x, x_bad, y):
            return jax.grad(lambda x: al.coral(x, y))(x), jax.grad(lambda x: al.coral(x, y, mx))(x_bad)

        grads = [np.asarray(g) for g in run(jnp.asarray(x), poisoned(x, mx, 1e6), jnp.asarray(y))]
    for g, valid in zip(grads, (np.ones(5, bool), mx)):
        fd = central_diff(lambda xv: ref_coral(xv, y), x[valid])
        np.testing.assert_allclose(g[valid], fd, rtol=1e-6, atol=1e-9)
        assert np.all(g[~valid] == 0)


# ---------------------------------------------------------------------------------------------- entropies


def np_softmax_entropy(logits, axis=-1):
    z = np.asarray(logits, np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    p = np.exp(z)
    p = p / np.sum(p, axis=axis, keepdims=True)
    with np.errstate(divide='ignore', invalid='ignore'):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -np.sum(terms, axis=axis)


def np_sigmoid_entropy(logits):
    z = np.asarray(logits, np.float64)
    with np.errstate(over='ignore'):
        p = 1.0 / (1.0 + np.exp(-z))
        q = 1.0 / (1.0 + np.exp(z))  # 1 - p without cancellation
    with np.errstate(divide='ignore', invalid='ignore'):
        h = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0))
    return np.sum(h, axis=-1)


def test_softmax_entropy_against_numpy():
    logits = RNG.normal(size=(5, 7)).astype(np.float32) * 3
    extreme = np.array([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4], [0.0, 0.0, -np.inf]],
                       np.float32)

    @jax.jit
    def run(logits, extreme):
        return (al.softmax_entropy(logits), al.softmax_entropy(logits.T, axis=0),
                al.softmax_entropy(jnp.zeros(4)), al.softmax_entropy(extreme),
                jax.grad(lambda z: jnp.sum(al.softmax_entropy(z)))(extreme))

    h, h_axis0, h_uniform, h_extreme, g = (np.asarray(a) for a in run(logits, extreme))
    np.testing.assert_allclose(h, np_softmax_entropy(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_axis0, np_softmax_entropy(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_uniform, np.log(4.0), rtol=1e-6)
    assert np.all(np.isfinite(h_extreme))
    np.testing.assert_allclose(h_extreme, [0.0, np.log(2.0), np.log(3.0), np.log(2.0)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_extreme, np_softmax_entropy(extreme), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(g))


def test_sigmoid_entropy_against_numpy():
    logits = (RNG.normal(size=(4, 6)) * 4).astype(np.float32)
    extreme = np.array([[1e4, -1e4, 20.0, -20.0]], np.float32)

    @jax.jit
    def run(logits, extreme):
        return (al.sigmoid_entropy(logits), al.sigmoid_entropy(jnp.zeros(3)), al.sigmoid_entropy(extreme),
                jax.grad(lambda z: jnp.sum(al.sigmoid_entropy(z)))(extreme))

    h, h_zero, h_extreme, g = (np.asarray(a) for a in run(logits, extreme))
    np.testing.assert_allclose(h, np_sigmoid_entropy(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_zero, 3 * np.log(2.0), rtol=1e-6)
    assert np.all(np.isfinite(h_extreme))
    # Confident but not saturated logits (+-20) keep their tiny entropy (no cancellation to 0).
    np.testing.assert_allclose(h_extreme, np_sigmoid_entropy(extreme), rtol=1e-4, atol=0)
    assert np.all(np.isfinite(g))


# ---------------------------------------------------------------------------------------- domain classifier


LOGITS = np.array([[2.0, -1.0], [0.0, 3.0]], np.float32)
# -log(sigmoid(z)) and -log(1 - sigmoid(z)) for z = 2, -1, 0, 3, worked out by hand (log1p(exp(-z))).
NEG_LOG_SIG = {2.0: 0.1269280110, -1.0: 1.3132616875, 0.0: 0.6931471806, 3.0: 0.0485873516}
NEG_LOG_1M_SIG = {2.0: 2.1269280110, -1.0: 0.3132616875, 0.0: 0.6931471806, 3.0: 3.0485873516}


def test_hand_numbers_are_right():
    for z, v in NEG_LOG_SIG.items():
        np.testing.assert_allclose(-np.log(1 / (1 + np.exp(-z))), v, rtol=1e-9)
        np.testing.assert_allclose(-np.log(1 - 1 / (1 + np.exp(-z))), NEG_LOG_1M_SIG[z], rtol=1e-9)


def test_domain_bce_by_hand():
    diag = np.array([[True, False], [False, True]])
    empty = np.zeros_like(diag)
    poisoned_logits = np.where(diag, LOGITS, np.nan).astype(np.float32)
    big = np.array([1e4, -1e4], np.float32)

    @jax.jit
    def run(z, z_bad, big):
        return dict(
            target=al.domain_bce(z, 1), source=al.domain_bce(z, 0), flat=al.domain_bce(z.reshape(-1), 1.0),
            diag=al.domain_bce(z_bad, 1, diag), column=al.domain_bce(z, 0, np.array([True, False])),
            empty=al.domain_bce(z, 1, empty),
            empty_grad=jax.grad(lambda z: al.domain_bce(z, 1, empty))(z_bad),
            diag_grad=jax.grad(lambda z: al.domain_bce(z, 1, diag))(z),
            big0=al.domain_bce(big, 0), big1=al.domain_bce(big, 1), right=al.domain_bce(big[:1], 1))

    r = {k: np.asarray(v) for k, v in run(LOGITS, poisoned_logits, big).items()}
    target = np.mean(list(NEG_LOG_SIG.values()))  # domain 1: -log sigmoid(z)
    source = np.mean(list(NEG_LOG_1M_SIG.values()))  # domain 0: -log(1 - sigmoid(z))
    np.testing.assert_allclose(r['target'], target, rtol=1e-6)
    np.testing.assert_allclose(r['source'], source, rtol=1e-6)
    np.testing.assert_allclose(r['flat'], target, rtol=1e-6)
    # Masked: the same-shape mask keeps z = 2 and z = 3 (NaN elsewhere); the broadcast [2] mask keeps
    # column 0 (z = 2, 0).
    np.testing.assert_allclose(r['diag'], (NEG_LOG_SIG[2.0] + NEG_LOG_SIG[3.0]) / 2, rtol=1e-6)
    np.testing.assert_allclose(r['column'], (NEG_LOG_1M_SIG[2.0] + NEG_LOG_1M_SIG[0.0]) / 2, rtol=1e-6)
    # Empty mask: 0, with a zero (not NaN) gradient.
    assert r['empty'] == 0.0 and np.all(r['empty_grad'] == 0)
    # Gradient of the masked mean: (sigmoid(z) - domain) / count on the valid entries.
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(r['diag_grad'], [[(sig(2.0) - 1) / 2, 0.0], [0.0, (sig(3.0) - 1) / 2]], rtol=1e-5)
    # Saturated logits stay finite: 1e4 when wrong, 0 when right.
    np.testing.assert_allclose(r['big0'], 5e3, rtol=1e-6)
    np.testing.assert_allclose(r['big1'], 5e3, rtol=1e-6)
    np.testing.assert_allclose(r['right'], 0.0, atol=1e-6)
