"""The Darcy generator is a real solver: residual, maximum principle, known values, convergence order."""

import numpy as np
import pytest

from datamodules.darcy import A_HIGH, A_LOW
from datamodules.grf import sample_grf_2d
from datamodules.solvers.darcy import darcy_matrix, darcy_residual, solve_darcy


def _thresholded(s, seed=0):
    """An FNO-style piecewise-constant permeability on an s x s grid."""
    g = sample_grf_2d(s, np.random.default_rng(seed))
    return np.where(g >= 0, A_HIGH, A_LOW)


def _grid(s):
    x = np.linspace(0, 1, s)
    return np.meshgrid(x, x, indexing="ij")


def _manufactured(s):
    """A smooth, non-separable coefficient and u = sin(pi x) sin(pi y); f = -div(a grad u) by hand."""
    X, Y = _grid(s)
    pi = np.pi
    a = 2 + np.sin(2 * pi * X) * np.cos(3 * pi * Y)
    a_x = 2 * pi * np.cos(2 * pi * X) * np.cos(3 * pi * Y)
    a_y = -3 * pi * np.sin(2 * pi * X) * np.sin(3 * pi * Y)
    u = np.sin(pi * X) * np.sin(pi * Y)
    u_x = pi * np.cos(pi * X) * np.sin(pi * Y)
    u_y = pi * np.sin(pi * X) * np.cos(pi * Y)
    f = -(a_x * u_x + a_y * u_y) + 2 * pi**2 * a * u
    return a, u, f


def test_discrete_residual_of_the_solution_vanishes():
    a = _thresholded(33)
    u = solve_darcy(a, 1.0)
    # the residual is computed face by face, independently of the assembled matrix
    assert np.abs(darcy_residual(a, u, 1.0)).max() < 1e-9
    assert np.abs(darcy_residual(a, np.zeros_like(u), 1.0)).max() == pytest.approx(1.0)  # and it is not vacuous


def test_system_matrix_is_symmetric_positive_definite():
    A = darcy_matrix(_thresholded(17, seed=4)).toarray()
    np.testing.assert_allclose(A, A.T)
    assert np.linalg.eigvalsh(A).min() > 0


def test_pressure_is_positive_inside_and_zero_on_the_boundary():
    u = solve_darcy(_thresholded(33, seed=1), 1.0)
    assert (u[1:-1, 1:-1] > 0).all()
    for edge in (u[0], u[-1], u[:, 0], u[:, -1]):
        assert np.all(edge == 0)


def test_constant_coefficient_matches_the_torsion_function_of_the_square():
    # -div(c grad u) = 1 on the unit square: u(1/2, 1/2) = 0.0736713532... / c (Timoshenko's torsion constant)
    for c in (1.0, 3.0):
        u = solve_darcy(np.full((65, 65), c), 1.0)
        assert u[32, 32] * c == pytest.approx(0.0736713532, rel=5e-4)


def test_manufactured_solution_converges_at_second_order():
    errors = []
    for s in (17, 33, 65):
        a, u_exact, f = _manufactured(s)
        errors.append(np.abs(solve_darcy(a, f) - u_exact).max())
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    assert all(3.5 < r < 4.5 for r in ratios), (errors, ratios)  # halving h divides the error by ~4


def _observed_orders(coefficient, sizes=(17, 33, 65, 129)):
    """log2 of successive differences of solves on nested grids (Richardson), at the coarsest grid's nodes."""
    fine = sizes[-1]
    a_fine = coefficient(fine)
    u = []
    for s in sizes:
        k = (fine - 1) // (sizes[0] - 1)
        step = (fine - 1) // (s - 1)
        u.append(solve_darcy(a_fine[::step, ::step])[:: k // step, :: k // step])
    diffs = [np.sqrt(np.mean((u[i] - u[i + 1]) ** 2)) for i in range(len(u) - 1)]
    return [np.log2(diffs[i] / diffs[i + 1]) for i in range(len(diffs) - 1)]


def test_refinement_against_finer_solves_converges_at_second_order_for_smooth_coefficients():
    orders = _observed_orders(lambda s: _manufactured(s)[0])
    assert all(1.8 < p < 2.2 for p in orders), orders


def test_refinement_against_finer_solves_converges_for_the_thresholded_coefficient():
    # a jump in a (FNO's 12/3 field, sampled on nested grids) limits the order to about one
    g = sample_grf_2d(129, np.random.default_rng(3))
    orders = _observed_orders(lambda s: np.where(g[:: 128 // (s - 1), :: 128 // (s - 1)] >= 0, A_HIGH, A_LOW))
    assert all(p > 0.5 for p in orders), orders


def test_invalid_coefficient_is_rejected():
    with pytest.raises(ValueError, match="strictly positive"):
        solve_darcy(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="square grid"):
        solve_darcy(np.ones((5, 6)))
