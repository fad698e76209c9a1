"""Gaussian random fields on the unit square, sampled spectrally.

``g ~ N(0, sigma^2 (-Laplacian + tau^2 I)^(-alpha))`` with Neumann boundary conditions: the covariance is diagonal
in the orthonormal cosine eigenbasis of the Laplacian on ``[0, 1]^2``,

    phi_k(x, y) = c_k1 cos(pi k1 x) c_k2 cos(pi k2 y),   c_0 = 1, c_k = sqrt(2),
    eigenvalues of the covariance:  lambda_k = sigma^2 (pi^2 |k|^2 + tau^2)^(-alpha),

so a sample is ``g = sum_k xi_k sqrt(lambda_k) phi_k`` with ``xi_k ~ N(0, 1)`` i.i.d., truncated to the ``s x s``
lowest modes of an ``s``-node grid and evaluated at its nodes (boundary included).

Constants. The Darcy inputs of the FNO paper use ``alpha = 2``, ``tau = 3``, i.e. ``(-Laplacian + 9 I)^-2``. Their
generator (``GRF.m``) also drops the constant mode ``k = (0, 0)`` (every field has zero spatial mean, so every
permeability field mixes both phases) and scales by ``sigma = tau^(alpha - 1)``; we drop the constant mode too
and default to ``sigma = 1`` (the covariance as written; the scale is irrelevant to ``a = psi(g)``, which only
looks at the sign of ``g``). Their fields are the same series evaluated at cell centres (a DCT-II); ours at the
nodes, the grid convention of this package.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn

__all__ = ["cosine_basis", "grf_eigenvalues", "sample_grf_2d"]


def cosine_basis(points: np.ndarray, n_modes: int) -> np.ndarray:
    """``(len(points), n_modes)`` matrix of the orthonormal Neumann eigenfunctions ``c_k cos(pi k x)``."""
    k = np.arange(n_modes)
    c = np.where(k == 0, 1.0, np.sqrt(2.0))
    return c[None, :] * np.cos(np.pi * np.outer(np.asarray(points, dtype=np.float64), k))


def grf_eigenvalues(n_modes: int, alpha: float = 2.0, tau: float = 3.0, sigma: float = 1.0) -> np.ndarray:
    """``(n_modes, n_modes)`` covariance eigenvalues ``lambda_k``; the constant mode's is 0 (it is dropped)."""
    k2 = np.arange(n_modes) ** 2
    lam = sigma**2 * (np.pi**2 * (k2[:, None] + k2[None, :]) + tau**2) ** (-alpha)
    lam[0, 0] = 0.0
    return lam


def sample_grf_2d(
    s: int,
    rng: np.random.Generator,
    size: int | None = None,
    *,
    alpha: float = 2.0,
    tau: float = 3.0,
    sigma: float = 1.0,
) -> np.ndarray:
    """Samples at the ``s x s`` nodes ``(i, j) / (s - 1)`` of the unit square: ``(s, s)``, or ``(size, s, s)``.

    The series is summed with a DCT-I (``sum_k b_k c_k cos(pi k j / (s - 1))`` is a DCT-I of ``b_k c_k`` with
    the interior terms halved): O(s^2 log s), and no BLAS, whose threads crawl on a busy 2-core machine.
    """
    if alpha <= 1.0:
        raise ValueError(f"alpha={alpha} gives a field of infinite variance in 2-D; use alpha > 1 (the FNO uses 2)")
    if tau <= 0.0:
        raise ValueError(f"tau={tau} is invalid; use tau > 0 (the FNO uses 3)")
    if s < 2:
        raise ValueError(f"s={s} is invalid; a grid needs at least 2 nodes per side")
    coeffs = rng.standard_normal((1 if size is None else size, s, s)) * np.sqrt(grf_eigenvalues(s, alpha, tau, sigma))
    w = np.full(s, np.sqrt(2.0) / 2)  # c_k, halved for the interior terms of the DCT-I
    w[0], w[-1] = 1.0, np.sqrt(2.0)
    g = dctn(coeffs * (w[:, None] * w[None, :]), type=1, axes=(-2, -1))
    return g[0] if size is None else g
