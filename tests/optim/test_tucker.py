"""Pure Tucker/matrix building blocks of app.optim: ranks, factors, projections, solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.optim import layout, tucker
from app.optim.layout import matrix_ranks, matrix_shape, projection_layout


def _randn(shape, dtype=torch.complex64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, dtype=dtype, generator=g)


def _decaying(shape, dtype=torch.complex128, seed=0):
    """A tensor with a geometrically decaying spectrum in every mode (distinct singular values)."""
    g = _randn(shape, dtype, seed)
    for k, n in enumerate(shape):
        q, _ = torch.linalg.qr(_randn((n, n), dtype, seed + k + 1))
        g = tucker.mode_dot(g, q * (0.6 ** torch.arange(n)).to(dtype), k)
    return g


# ------------------------------------------------------------------------------------------------ ranks


def test_fraction_rank_keeps_the_nearest_fraction_spread_evenly():
    # within 25%: (46, 45, 22, 12) = 24.54%; one more on mode 0 gives 25.07%, nearer: taken
    assert layout.resolve_ranks(0.25, (64, 64, 32, 17)) == (47, 45, 22, 12)
    # within 25%: (11, 11, 5, 4) = 23.6%; the least overshoot, (12, 11, 5, 4) = 25.8%, is nearer: taken
    assert layout.resolve_ranks(0.25, (16, 16, 8, 5)) == (12, 11, 5, 4)
    # 0.25 ** (1/2) = 0.5 on the two modes of size > 1; the size-1 mode keeps 1
    assert layout.resolve_ranks(0.25, (8, 1, 6)) == (4, 1, 3)
    # (2, 2) = 20% of (5, 4); (3, 2) = 30% is as far: ties stay below
    assert layout.resolve_ranks(0.25, (5, 4)) == (2, 2)
    assert layout.resolve_ranks(1e-6, (8, 8, 8)) == (1, 1, 1)  # never below 1 per mode
    assert layout.resolve_ranks(1.0, (7, 3, 2)) == (7, 3, 2)


@pytest.mark.parametrize("shape", [(64, 64, 32, 17), (16, 16, 8, 5), (32, 32, 16, 9), (33, 7), (5, 5, 5)])
@pytest.mark.parametrize("f", [0.01, 0.1, 0.25, 0.5, 0.75, 0.9])
def test_fraction_rank_is_nearest_among_the_even_cores_around_the_target(shape, f):
    ranks = layout.resolve_ranks(f, shape)
    target = f * math.prod(shape)
    kept = math.prod(ranks)
    steps_up = [kept // r * (r + 1) for r, n in zip(ranks, shape, strict=True) if r < n]
    steps_down = [kept // r * (r - 1) for r in ranks if r > 1]
    if kept <= target:  # as large as fits: no mode can grow within the target
        assert all(up > target for up in steps_up), ranks
    else:  # one step over, taken because it is nearer than the core one step below it
        below = max(d for d in steps_down if d <= target)
        assert kept - target < target - below, ranks


def test_fraction_rank_keeps_about_that_fraction_of_elements():
    shape = (64, 64, 32, 17)
    for f in (0.1, 0.25, 0.5):
        kept = math.prod(layout.resolve_ranks(f, shape)) / math.prod(shape)
        assert abs(kept - f) / f < 0.05


def test_int_rank_is_clipped_to_each_mode_size():
    assert layout.resolve_ranks(8, (64, 4, 32, 17)) == (8, 4, 8, 8)


def test_sequence_rank_gives_ints_and_per_mode_fractions():
    assert layout.resolve_ranks([16, 0.5, 100, 1.0], (64, 64, 32, 17)) == (16, 32, 32, 17)
    assert layout.resolve_ranks((0.01, 3), (10, 10)) == (1, 3)


@pytest.mark.parametrize(
    "spec, error",
    [
        (0, ValueError),
        (-3, ValueError),
        (0.0, ValueError),
        (1.5, ValueError),
        (float("nan"), ValueError),
        (-0.5, ValueError),
        (True, TypeError),
        ("0.25", TypeError),
        (None, TypeError),
        ([], ValueError),
        ([8, 8], ValueError),
        ([8, 0, 8, 8], ValueError),
        ([8, 1.5, 8, 8], ValueError),
        ([8, "a", 8, 8], TypeError),
        ([None, None, None, None], ValueError),
        (torch.tensor(3), TypeError),
    ],
)
def test_invalid_rank_specs_raise_naming_the_value(spec, error):
    with pytest.raises(error, match="rank"):
        layout.resolve_ranks(spec, (8, 8, 4, 3))


def test_projected_modes_restrict_every_rank_form():
    shape = (16, 16, 8, 5)
    # a float is reached on the projected modes alone: 8 * 8 / (16 * 16) = 25% of all the elements
    assert layout.resolve_ranks(0.25, shape, (0, 1)) == (8, 8, None, None)
    assert layout.resolve_ranks(0.25, shape, [1, 0]) == (8, 8, None, None)  # order does not matter
    assert layout.resolve_ranks(4, shape, (0, -1)) == (4, None, None, 4)  # negative indices count from the end
    assert layout.resolve_ranks([8, 0.5, 3, 2], shape, (0, 1)) == (8, 8, None, None)  # others ignored
    assert layout.resolve_ranks([8, None, 0.5, None], shape) == (8, None, 4, None)  # None: not projected
    assert layout.resolve_ranks(0.25, shape, None) == layout.resolve_ranks(0.25, shape)


@pytest.mark.parametrize(
    "modes, error, text",
    [
        ((0, 4), ValueError, "mode 4 does not exist"),
        ((0, -5), ValueError, "mode -5 does not exist"),
        ((1, -3), ValueError, "lists a mode twice"),
        ((), ValueError, "non-empty"),
        ((0.5,), ValueError, "mode indices"),
        ("01", TypeError, "list of mode indices"),
    ],
)
def test_invalid_projected_modes_raise_naming_the_value(modes, error, text):
    with pytest.raises(error, match=text):
        layout.resolve_ranks(0.25, (16, 16, 8, 5), modes)


def test_a_sequence_rank_that_projects_none_of_the_modes_raises():
    with pytest.raises(ValueError, match="projects no mode"):
        layout.resolve_ranks([None, None, 3, 2], (16, 16, 8, 5), (0, 1))


def test_matrix_rank_projects_the_smaller_side():
    assert matrix_ranks(0.25, (8, 72)) == (2, None)
    assert matrix_ranks(0.25, (48, 12)) == (None, 3)
    assert matrix_ranks(100, (6, 6)) == (6, None)
    with pytest.raises(ValueError, match="per-mode"):
        matrix_ranks([2, 2], (6, 6))


@pytest.mark.parametrize("rollup, view", [(1, (8, 72)), (2, (48, 12)), (3, (192, 3)), (7, (192, 3))])
def test_matrix_view_rolls_up_leading_modes(rollup, view):
    assert matrix_shape((8, 6, 4, 3), rollup) == view


def test_layout_of_each_parameter_kind():
    assert projection_layout((5,), 0.25) is None
    assert projection_layout((8, 6, 4, 3), 0.25) == ((8, 6, 4, 3), (6, 4, 3, 2))
    assert projection_layout((8, 32), 0.25) == ((8, 32), (2, None))  # 2-D: matrix path even for "tucker"
    assert projection_layout((8, 6, 4, 3), 0.25, "matrix", 2) == ((48, 12), (None, 3))


# ------------------------------------------------------------------------------------------------ maths


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32])
def test_full_rank_projection_round_trip_is_identity(dtype):
    g = _randn((6, 5, 4, 3), dtype)
    res = tucker.hosvd(g, g.shape)
    torch.testing.assert_close(
        tucker.project_back(tucker.project(g, res.factors), res.factors), g, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128, torch.float32])
@pytest.mark.parametrize("sequential", [True, False])
def test_factors_are_orthonormal(dtype, sequential):
    g = _randn((9, 7, 5, 4), dtype)
    for u in tucker.hosvd(g, (4, 3, 5, 2), sequential=sequential).factors:
        eye = torch.eye(u.shape[1], dtype=dtype)
        torch.testing.assert_close(u.mH @ u, eye, atol=1e-5, rtol=0)


def test_project_uses_the_conjugate_transpose():
    g = _randn((5, 4, 3), torch.complex128)
    us = [torch.linalg.qr(_randn((n, r), torch.complex128, seed=n))[0] for n, r in zip(g.shape, (3, 2, 2), strict=True)]
    expected = torch.einsum("ijk,ia,jb,kc->abc", g, us[0].conj(), us[1].conj(), us[2].conj())
    torch.testing.assert_close(tucker.project(g, us), expected)
    back = torch.einsum("abc,ia,jb,kc->ijk", expected, *us)
    torch.testing.assert_close(tucker.project_back(expected, us), back)


def test_plain_hosvd_spans_the_top_singular_subspace_of_each_unfolding():
    g = _decaying((7, 6, 5))
    ranks = (3, 2, 4)
    res = tucker.hosvd(g, ranks, sequential=False)
    x = g.numpy()
    for k, (u, r) in enumerate(zip(res.factors, ranks, strict=True)):
        unfold = np.moveaxis(x, k, 0).reshape(x.shape[k], -1)
        svd_u = np.linalg.svd(unfold)[0][:, :r]
        np.testing.assert_allclose((u @ u.mH).numpy(), svd_u @ svd_u.conj().T, atol=1e-10)
        # spectra: all eigenvalues of the unfolding's Gram matrix, decreasing, summing to ||G||^2
        s = res.spectra[k].double()
        assert s.shape == (g.shape[k],) and torch.all(s[:-1] >= s[1:])
        assert math.isclose(float(s.sum()), float(g.abs().square().sum()), rel_tol=1e-5)


def test_sequential_hosvd_spectra_account_exactly_for_the_lost_energy():
    g = _randn((8, 7, 6, 5), torch.complex128)
    ranks = (4, 3, 3, 2)
    res = tucker.hosvd(g, ranks)
    discarded = sum(float(s[r:].sum()) for s, r in zip(res.spectra, ranks, strict=True))
    lost = float(g.abs().square().sum() - res.core.abs().square().sum())
    assert math.isclose(discarded, lost, rel_tol=1e-4)
    torch.testing.assert_close(res.core, tucker.project(g, res.factors))


def test_factor_columns_have_a_fixed_phase():
    g = _randn((6, 5, 4), torch.complex128)
    for u in tucker.hosvd(g, (3, 3, 2)).factors:
        pivot = u.gather(0, u.abs().argmax(0, keepdim=True))
        assert torch.all(pivot.imag.abs() < 1e-12) and torch.all(pivot.real > 0)


@pytest.mark.parametrize(
    "kind, solver, tolerance",
    [("decaying", "hosvd", 0.01), ("random", "hosvd", 0.03), ("random", "hooi", 0.01)],
)
def test_fast_solvers_capture_nearly_as_much_as_tensorly_hooi(kind, solver, tolerance):
    """Random tensors are the hard case: sequential HOSVD alone is ~2% short at this tiny size (<1% at FNO sizes,
    see BENCHMARKS.md); one warm-started HOOI sweep closes the gap."""
    g = _randn((16, 16, 8, 5)) if kind == "random" else _decaying((16, 16, 8, 5)).to(torch.complex64)
    ranks = layout.resolve_ranks(0.25, g.shape)
    res = tucker.hosvd(g, ranks)
    if solver == "hooi":
        res = tucker.hooi(g, res.factors, n_iter=1)
    ours = tucker.captured_energy(res.core, g)
    ref = tucker.captured_energy(tucker.tensorly_tucker(g, ranks, n_iter_max=10).core, g)
    assert float(ours) >= (1 - tolerance) * float(ref)


def test_hooi_sweep_does_not_lose_energy():
    g = _randn((12, 10, 6, 4))
    ranks = (5, 4, 3, 2)
    start = tucker.hosvd(g, ranks)
    refined = tucker.hooi(g, start.factors, n_iter=2)
    assert float(tucker.captured_energy(refined.core, g)) >= float(tucker.captured_energy(start.core, g)) - 1e-6
    torch.testing.assert_close(refined.core, tucker.project(g, refined.factors), atol=1e-5, rtol=1e-5)


def test_tensorly_solver_leaves_the_global_backend_alone():
    import tensorly as tl

    before = tl.get_backend()
    res = tucker.tensorly_tucker(_randn((6, 5, 4)), (3, None, 2), n_iter_max=2)
    assert tl.get_backend() == before
    assert res.factors[1] is None and res.core.shape == (3, 5, 2)


def test_product_order_puts_the_largest_reductions_first():
    assert tucker.product_order((100, 10, 10), (10, 9, 9)) == (0, 1, 2)
    assert tucker.product_order((10, 10, 100), (9, 9, 10))[0] == 2
    # going back (expanding), the largest expansions come last
    assert tucker.product_order((10, 9, 9), (100, 10, 10))[-1] == 0


@pytest.mark.parametrize(
    "shape, ranks",
    [((6, 5, 4, 3), (3, 5, 2, 3)), ((6, 5, 4, 3), (6, 5, 2, 3)), ((6, 5, 4, 3), (6, 5, 4, 2)), ((8, 12), (None, 3))],
)
def test_fused_back_projection_equals_unfused(shape, ranks):
    g = _randn(shape, torch.complex128)
    factors = tucker.hosvd(g, ranks).factors
    core = tucker.project(g, factors)
    target = _randn(shape, torch.complex128, seed=3)
    expected = 0.9 * target + (-0.1) * tucker.project_back(core, factors)
    torch.testing.assert_close(tucker.add_project_back_(target.clone(), core, factors, alpha=-0.1, beta=0.9), expected)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32])
def test_sliced_projections_equal_the_whole_tensor_ones(monkeypatch, dtype):
    """Beyond ``CHUNK_BYTES`` the (back-)projection runs slice by slice along the unprojected mode after the last
    product's mode (channel modes projected, Fourier modes not, as for FNO weights): the same dot products, equal
    up to the GEMM kernel's rounding for other matrix widths (bit-identical on the paper's Darcy weights)."""
    shape = (12, 12, 9, 5)
    g = _randn(shape, dtype, seed=1)
    factors = [torch.linalg.qr(_randn((12, 4), dtype, seed=2 + k))[0] for k in range(2)] + [None, None]
    core_whole = tucker.project(g, factors)
    target = _randn(shape, dtype, seed=3)
    back_whole = tucker.add_project_back_(target.clone(), core_whole, factors, alpha=-0.1, beta=0.9)
    outs = (4, 4, None, None)
    last = tucker.product_order(shape, outs)[-1]
    assert tucker._chunks(shape, outs, last, g.element_size()) == (-1, 0)  # small: no slicing
    monkeypatch.setattr(tucker, "CHUNK_BYTES", 12 * 12 * 2 * 5 * g.element_size())
    assert tucker._chunks(shape, outs, last, g.element_size()) == (last + 1, 2)
    core = tucker.project(g, factors)
    torch.testing.assert_close(core, core_whole, rtol=1e-6, atol=1e-6)
    back = tucker.add_project_back_(target.clone(), core_whole, factors, alpha=-0.1, beta=0.9)
    torch.testing.assert_close(back, back_whole, rtol=1e-6, atol=1e-6)


def test_half_precision_is_solved_in_float32_and_cast_back():
    g = _randn((8, 6, 4), torch.float32).to(torch.bfloat16)
    res = tucker.hosvd(g, (4, 3, 2))
    assert all(u.dtype == torch.bfloat16 for u in res.factors) and res.core.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in res.spectra)


def test_abs_sq_is_the_squared_magnitude():
    x = torch.tensor([3 + 4j, -1j, 0j], dtype=torch.complex64)
    assert torch.equal(tucker.abs_sq(x), torch.tensor([25.0, 1.0, 0.0]))
    assert tucker.abs_sq(x).dtype == torch.float32
    assert torch.equal(tucker.abs_sq(torch.tensor([-2.0])), torch.tensor([4.0]))


def test_captured_energy_of_a_zero_gradient_is_one():
    g = torch.zeros(4, 3, 2, dtype=torch.complex64)
    res = tucker.hosvd(g, (2, 2, 1))
    assert float(tucker.captured_energy(res.core, g)) == 1.0
    assert all(torch.isfinite(u).all() for u in res.factors)
