"""Gaussian random fields sampled spectrally.

``g ~ N(0, sigma^2 (-Laplacian + tau^2 I)^(-alpha))`` on the unit square with Neumann boundary conditions (the
FNO paper's Darcy inputs: ``alpha=2``, ``tau=3``). The covariance is diagonal in the orthonormal cosine basis
``phi_k(x, y) = c_k1 cos(pi k1 x) c_k2 cos(pi k2 y)`` (``c_0 = 1``, ``c_k = sqrt(2)``), with eigenvalues
``lambda_k = (pi^2 |k|^2 + tau^2)^(-alpha)``, so a sample is

    g(x, y) = sigma * sum_k  xi_k  lambda_k^(1/2)  phi_k(x, y),   xi_k ~ N(0, 1) i.i.d.,

truncated to the ``s x s`` lowest modes of an ``s``-point grid. As in the FNO data generator, the constant mode
``k = (0, 0)`` is dropped (the field has zero mean) and ``sigma = tau^(alpha - 1)`` (their normalisation; it only
scales the field, which the Darcy thresholding ignores).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_basis", "grf_eigenvalues", "sample_grf_2d"]


def cosine_basis(points: np.ndarray, n_modes: int) -> np.ndarray:
    """``(len(points), n_modes)`` matrix of the orthonormal Neumann eigenfunctions ``c_k cos(pi k x)``."""
    k = np.arange(n_modes)
    c = np.where(k == 0, 1.0, np.sqrt(2.0))
    return c[None, :] * np.cos(np.pi * np.outer(points, k))


def grf_eigenvalues(n_modes: int, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """``(n_modes, n_modes)`` covariance eigenvalues ``sigma^2 lambda_k``, with the constant mode set to 0."""
    k = np.arange(n_modes)
    lam = (np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau**2) ** (-alpha)
    sigma2 = tau ** (2 * (alpha - 1))
    lam = sigma2 * lam
    lam[0, 0] = 0.0
    return lam


def sample_grf_2d(
    n_samples: int,
    points: np.ndarray,
    rng: np.random.Generator,
    *,
    n_modes: int | None = None,
    alpha: float = 2.0,
    tau: float = 3.0,
) -> np.ndarray:
    """``(n_samples, len(points), len(points))`` samples on the tensor grid ``points x points`` in [0, 1]."""
    if alpha <= 1.0:
        raise ValueError(f"alpha must be > 1 for a field with finite variance in 2-D, got {alpha}")
    n_modes = len(points) if n_modes is None else n_modes
    basis = cosine_basis(np.asarray(points, dtype=np.float64), n_modes)
    sqrt_lam = np.sqrt(grf_eigenvalues(n_modes, alpha, tau))
    xi = rng.standard_normal((n_samples, n_modes, n_modes))
    coeffs = xi * sqrt_lam
    return np.einsum("ik,nkl,jl->nij", basis, coeffs, basis, optimize=True)
