"""Gaussian random fields on the periodic unit torus ``[0, 1)^d`` (d = 1, 2), sampled spectrally with torch.

``g ~ N(0, scale * (-Laplacian + tau^2 I)^(-alpha))``: the covariance is diagonal in the Fourier basis
``e^(2 pi i k.x)`` (``k`` an integer vector) with eigenvalues

    lambda_k = scale * (4 pi^2 |k|^2 + tau^2)^(-alpha),

so ``g(x) = sum_k g_k e^(2 pi i k.x)`` with independent ``g_k`` (up to ``g_-k = conj(g_k)``) and
``E|g_k|^2 = lambda_k``; the pointwise variance is ``sum_k lambda_k``. A sample on an ``n``-point grid keeps the
modes ``|k_i| < n / 2`` (the Nyquist mode, which a grid cannot give a sign, is dropped).

It is drawn as ``Re(sqrt(2) sum_k sqrt(lambda_k) zeta_k e^(2 pi i k.x))`` with i.i.d. standard complex normals
``zeta_k`` over the full grid of modes: the real part of mode ``k`` and of mode ``-k`` together carry variance
``lambda_k`` each and the covariance is exactly ``sum_k lambda_k cos(2 pi k.(x - y))``.

The noise is drawn on the CPU from a ``torch.Generator`` in float64, so a sample depends only on the generator's
state, never on the device it is moved to afterwards.

Normalisation of published datasets: the FNO paper writes ``N(0, 625 (-Delta + 25 I)^-2)`` (Burgers) and
``N(0, 7^(3/2) (-Delta + 49 I)^-2.5)`` (Navier-Stokes). Its generators (``GRF1.m``, ``GaussianRF``) multiply the
*standard deviation* by ``sigma`` and their sampling doubles each mode's variance, so their fields have
``scale = 2 sigma^2``; e.g. the public Navier-Stokes sets use ``sigma = 7^(3/2)``, ``scale = 2 * 7^3 = 686``,
and zero mean. ``scale`` here is the covariance's factor, exactly as in the formula.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["grf_eigenvalues", "sample_grf_periodic"]


def _int_wavenumbers(n: int) -> Tensor:
    """Integer wavenumbers of an ``n``-point grid in FFT order: 0, 1, ..., -1."""
    return torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)


def grf_eigenvalues(n: int, n_dims: int, *, scale: float, tau: float, alpha: float, zero_mean: bool) -> Tensor:
    """Covariance eigenvalues ``lambda_k`` on the full ``(n,) * n_dims`` FFT grid of modes (Nyquist set to 0)."""
    k = _int_wavenumbers(n)
    k2 = sum(g**2 for g in torch.meshgrid(*([k] * n_dims), indexing="ij"))
    lam = scale * (4 * math.pi**2 * k2 + tau**2) ** (-alpha)
    if n % 2 == 0:  # drop the Nyquist mode along every axis
        nyq = (k.abs() == n // 2)
        for axis in range(n_dims):
            shape = [1] * n_dims
            shape[axis] = n
            lam = lam.masked_fill(nyq.view(shape), 0.0)
    if zero_mean:
        lam[(0,) * n_dims] = 0.0
    return lam


def sample_grf_periodic(
    n_samples: int,
    n: int,
    n_dims: int,
    generator: torch.Generator,
    *,
    scale: float,
    tau: float,
    alpha: float,
    zero_mean: bool = True,
) -> Tensor:
    """``(n_samples, n[, n])`` float64 samples on the grid ``x_j = j / n`` (CPU; move them where you solve).

    Args:
        n_samples: number of independent fields.
        n: grid points per axis.
        n_dims: 1 or 2.
        generator: a CPU ``torch.Generator``; its state alone determines the samples.
        scale: factor of the covariance operator.
        tau: inverse length scale (``tau^2`` shifts the Laplacian).
        alpha: smoothness exponent; the field has finite variance for ``alpha > n_dims / 2``.
        zero_mean: drop the constant mode ``k = 0`` (needed for a vorticity on the torus).
    """
    if n_dims not in (1, 2):
        raise ValueError(f"n_dims={n_dims} is not supported; use 1 or 2")
    if n < 2 or n_samples < 1:
        raise ValueError(f"need n >= 2 grid points and n_samples >= 1, got n={n}, n_samples={n_samples}")
    if alpha <= n_dims / 2:
        raise ValueError(f"alpha={alpha} gives infinite variance in {n_dims}-D; use alpha > {n_dims / 2}")
    if scale < 0 or tau < 0:
        raise ValueError(f"scale={scale} and tau={tau} must be >= 0")
    lam = grf_eigenvalues(n, n_dims, scale=scale, tau=tau, alpha=alpha, zero_mean=zero_mean)
    shape = (n_samples,) + (n,) * n_dims
    zeta = torch.complex(
        torch.randn(shape, generator=generator, dtype=torch.float64),
        torch.randn(shape, generator=generator, dtype=torch.float64),
    ) / math.sqrt(2.0)
    coeffs = math.sqrt(2.0) * lam.sqrt() * zeta
    dims = tuple(range(1, n_dims + 1))
    return torch.fft.ifftn(coeffs, dim=dims, norm="forward").real
