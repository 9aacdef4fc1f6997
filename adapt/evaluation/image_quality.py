"""Full-reference image quality (PSNR, SSIM) and the Frechet distance between feature distributions (NumPy).

Images are float arrays [N, H, W, C] (or [H, W, C]) with values in [0, data_range]; PSNR and SSIM are
returned per image, so callers can average or report spread.

SSIM follows Wang, Bovik, Sheikh & Simoncelli (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariances, computed per channel over the window positions that lie
fully inside the image ('valid'), then averaged over positions and channels. That is what
`tf.image.ssim` computes, and what skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)` computes (its filter truncates at 3.5 sigma = 11 taps and
it averages over the same interior).

The Frechet distance between Gaussians fitted to two feature sets, ||mu1 - mu2||^2 + Tr(S1 + S2 -
2 (S1 S2)^(1/2)), is FID's formula (Heusel et al. 2017). Its value depends entirely on the feature
extractor: on features of our own backbones it is NOT comparable with published (Inception) FID numbers.
"""
from __future__ import annotations

import numpy as np


def _as_batch(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x[None] if x.ndim == 3 else x


def psnr(x, y, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio per image in dB: 10 log10(range^2 / MSE); +inf for identical images."""
    x, y = _as_batch(x), _as_batch(y)
    mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
    with np.errstate(divide='ignore'):
        return 10.0 * np.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian taps (the 2-D window is their outer product)."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of [N, H, W, C] with the window w (along H, then W)."""
    k = len(w)
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    rows = sum(w[i] * x[:, i:i + h] for i in range(k))
    return sum(w[i] * rows[:, :, i:i + wd] for i in range(k))


def ssim(x, y, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> np.ndarray:
    """Mean structural similarity per image (see the module docstring for the exact definition)."""
    x, y = _as_batch(x), _as_batch(y)
    if min(x.shape[1:3]) < win_size:
        raise ValueError(f'images of {x.shape[1:3]} are smaller than the {win_size}x{win_size} SSIM window')
    w = gaussian_window(win_size, sigma)
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    vx = _filter_valid(x * x, w) - mx ** 2
    vy = _filter_valid(y * y, w) - my ** 2
    cxy = _filter_valid(x * y, w) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and sample covariance [D, D] (ddof 1, as pytorch-fid / TF-GAN) of features [N, D]."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f'need features [N >= 2, D], got {f.shape}')
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) for PSD covariances.

    Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): the inner matrix is symmetric PSD, so symmetric
    eigendecompositions give the trace without the complex round-off of a general sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def frechet_distance_of(features_x, features_y) -> float:
    """Frechet distance between Gaussians fitted (sample covariance) to feature sets [N, D] and [M, D].

    With fewer samples than dimensions (e.g. 250 images, 2048-d Inception features) the covariances
    S1 = A^T A, S2 = B^T B (A, B: centred samples / sqrt(n - 1)) have rank < D, and the nonzero
    eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T, so Tr (S1 S2)^(1/2) is the nuclear norm of the
    small [N, M] matrix A B^T: exact, and O(N M D) instead of O(D^3).
    """
    x, y = np.asarray(features_x, np.float64), np.asarray(features_y, np.float64)
    if min(len(x), len(y)) > x.shape[1]:
        return frechet_distance(*feature_statistics(x), *feature_statistics(y))
    feature_statistics(x), feature_statistics(y)  # validates the shapes
    a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    tr_sqrt = np.sum(np.linalg.svd(a @ b.T, compute_uv=False))
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum(a * a) + np.sum(b * b) - 2.0 * tr_sqrt)
