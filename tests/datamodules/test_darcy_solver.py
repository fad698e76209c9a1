"""The Darcy generator is a real solver: residual, maximum principle, convergence order, GRF spectrum."""

import numpy as np
import pytest

from datamodules.grf import cosine_basis, grf_eigenvalues, sample_grf_2d
from datamodules.solvers.darcy import darcy_residual, solve_darcy


def _threshold_coefficient(s, seed=0):
    g = sample_grf_2d(1, np.linspace(0, 1, s), np.random.default_rng(seed))[0]
    return np.where(g >= 0, 12.0, 3.0)


def test_discrete_residual_of_the_solution_vanishes():
    a = _threshold_coefficient(33)
    u = solve_darcy(a, 1.0)
    assert np.abs(darcy_residual(a, u, 1.0)).max() < 1e-8


def test_pressure_is_positive_inside_and_zero_on_the_boundary():
    a = _threshold_coefficient(33, seed=1)
    u = solve_darcy(a, 1.0)
    assert (u[1:-1, 1:-1] > 0).all()
    assert np.all(u[0] == 0) and np.all(u[-1] == 0) and np.all(u[:, 0] == 0) and np.all(u[:, -1] == 0)


def _manufactured(s):
    """a = 1 + x + y, u = sin(pi x) sin(pi y), f = -div(a grad u)."""
    x = np.linspace(0, 1, s)
    X, Y = np.meshgrid(x, x, indexing="ij")
    a = 1 + X + Y
    u = np.sin(np.pi * X) * np.sin(np.pi * Y)
    f = 2 * np.pi**2 * a * u - np.pi * (np.cos(np.pi * X) * np.sin(np.pi * Y) + np.sin(np.pi * X) * np.cos(np.pi * Y))
    return a, u, f


def test_grid_refinement_converges_at_second_order():
    errors = []
    for s in (17, 33, 65):
        a, u_exact, f = _manufactured(s)
        errors.append(np.abs(solve_darcy(a, f) - u_exact).max())
    rates = [np.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(1.8 < r < 2.2 for r in rates), (errors, rates)


def test_thresholded_problem_converges_against_a_finer_solve():
    # same coefficient field (a continuous GRF sampled on nested grids), error against the 129 solve shrinks
    rng_seed = 3
    fine = 129
    g = sample_grf_2d(1, np.linspace(0, 1, fine), np.random.default_rng(rng_seed))[0]
    u_ref = solve_darcy(np.where(g >= 0, 12.0, 3.0))
    errs = []
    for s in (17, 33, 65):
        k = (fine - 1) // (s - 1)
        u = solve_darcy(np.where(g[::k, ::k] >= 0, 12.0, 3.0))
        errs.append(np.sqrt(np.mean((u - u_ref[::k, ::k]) ** 2)) / np.sqrt(np.mean(u_ref**2)))
    # interfaces cut cells, so the order is lower than 2 but the error must fall steadily
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.02


def test_grf_has_the_prescribed_spectrum():
    s, n = 12, 4000
    pts = np.linspace(0, 1, s)
    g = sample_grf_2d(n, pts, np.random.default_rng(0), alpha=2.0, tau=3.0)
    basis_inv = np.linalg.inv(cosine_basis(pts, s))
    coeffs = np.einsum("ki,nij,lj->nkl", basis_inv, g, basis_inv)
    var = coeffs.var(axis=0)
    lam = grf_eigenvalues(s, 2.0, 3.0)
    assert var[0, 0] < 1e-20  # the constant mode is dropped
    low = [(i, j) for i in range(4) for j in range(4) if (i, j) != (0, 0)]
    ratios = np.array([var[i, j] / lam[i, j] for i, j in low])
    # a variance estimate from n samples has relative standard error sqrt(2/n) ~ 2.2%
    assert np.all(np.abs(ratios - 1) < 0.1), ratios
    assert abs(ratios.mean() - 1) < 0.03


def test_invalid_coefficient_is_rejected():
    with pytest.raises(ValueError, match="strictly positive"):
        solve_darcy(np.zeros((5, 5)))
