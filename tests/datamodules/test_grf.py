"""The Gaussian random field has the prescribed spectrum.

The sampler sums its cosine series with a DCT; the tests project the samples back with the explicit basis matrix
of ``c_k1 cos(pi k1 x) c_k2 cos(pi k2 y)`` at the nodes, an independent computation.
"""

import numpy as np
import pytest

from datamodules.grf import cosine_basis, grf_eigenvalues, sample_grf_2d


def _coefficients(g):
    """Cosine-series coefficients of fields on the s x s nodes (the s x s basis matrix is invertible)."""
    s = g.shape[-1]
    inv = np.linalg.inv(cosine_basis(np.linspace(0, 1, s), s))
    return inv @ g @ inv.T


def test_projection_recovers_a_single_mode():
    x = np.linspace(0, 1, 17)
    X, Y = np.meshgrid(x, x, indexing="ij")
    b = _coefficients(2 * np.cos(2 * np.pi * X) * np.cos(3 * np.pi * Y))  # phi_(2, 3)
    expected = np.zeros_like(b)
    expected[2, 3] = 1.0
    np.testing.assert_allclose(b, expected, atol=1e-10)


@pytest.mark.parametrize("alpha, tau", [(2.0, 3.0), (2.5, 7.0)])
def test_grf_has_the_prescribed_spectrum(alpha, tau):
    s, n = 17, 4000
    g = sample_grf_2d(s, np.random.default_rng(0), n, alpha=alpha, tau=tau)
    var = (_coefficients(g) ** 2).mean(axis=0)  # the coefficients have zero mean
    lam = grf_eigenvalues(s, alpha, tau)
    assert lam[1, 2] == pytest.approx((5 * np.pi**2 + tau**2) ** -alpha)  # (pi^2 |k|^2 + tau^2)^-alpha
    assert var[0, 0] < 1e-25  # the constant mode is dropped (FNO's convention)
    modes = [(i, j) for i in range(6) for j in range(6) if (i, j) != (0, 0)]
    ratios = np.array([var[m] / lam[m] for m in modes])
    # each variance estimate from n samples has relative standard error sqrt(2 / n) ~ 2.2%
    assert np.all(np.abs(ratios - 1) < 0.1), ratios
    assert abs(ratios.mean() - 1) < 0.02


def test_pointwise_variance_matches_the_covariance():
    # Var g(x) = sum_k lambda_k phi_k(x)^2, checked at the centre and at a corner
    s, n = 33, 4000
    g = sample_grf_2d(s, np.random.default_rng(1), n)
    phi = cosine_basis(np.linspace(0, 1, s), s)
    lam = grf_eigenvalues(s)
    for i in (16, 0):
        expected = np.einsum("k,l,kl->", phi[i] ** 2, phi[i] ** 2, lam)
        assert g[:, i, i].var() == pytest.approx(expected, rel=0.1)


def test_samples_are_reproducible_and_balanced():
    a = sample_grf_2d(33, np.random.default_rng(7), 3)
    np.testing.assert_array_equal(a, sample_grf_2d(33, np.random.default_rng(7), 3))
    np.testing.assert_array_equal(a[0], sample_grf_2d(33, np.random.default_rng(7)))
    assert not np.allclose(a[0], a[1])
    # zero mean and symmetric: about half of the points of many fields are >= 0 (the 12 / 3 phases of Darcy)
    g = sample_grf_2d(33, np.random.default_rng(0), 500)
    assert (g >= 0).mean() == pytest.approx(0.5, abs=0.02)


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="alpha=1.0"):
        sample_grf_2d(9, np.random.default_rng(0), alpha=1.0)
    with pytest.raises(ValueError, match="tau=0"):
        sample_grf_2d(9, np.random.default_rng(0), tau=0)
