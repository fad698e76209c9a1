"""TensorGaLoreAdamW: exactness against Algorithm 1, AdamW equivalence, refresh control, state, robustness."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from app.memory import adamw_state_bytes
from app.optim import NonFiniteGradientError, TensorGaLoreAdamW, layout, tucker
from tests.optim.helpers import gen as _gen
from tests.optim.helpers import grads as _grads
from tests.optim.helpers import param as _param
from tests.optim.helpers import reference_optimizer, spectral_least_squares, train
from tests.optim.helpers import run as _run

# ------------------------------------------------------------------------------------ exactness


def _mode_apply(x, mats):
    """x x_k mats[k] for every k (numpy, written independently of app.optim)."""
    for k, m in enumerate(mats):
        x = np.moveaxis(np.tensordot(m, np.moveaxis(x, k, 0), axes=1), 0, k)
    return x


def _algorithm_1(w0, grads, factors, *, lr, b1, b2, eps, wd, scale, c=1.0):
    """Tensor-GaLore Adam (paper's Algorithm 1) with fixed factors and a complex-conjugate second moment;
    ``c = 2`` divides it by 2 for complex tensors (``complex_norm="component"``)."""
    w = w0.copy()
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        r = _mode_apply(g, [u.conj().T for u in factors])
        m = b1 * m + (1 - b1) * r
        v = b2 * v + (1 - b2) * (r * r.conj()).real
        n = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) / c) + eps)
        w = w * (1 - lr * wd) - lr * scale * _mode_apply(n, factors)
    return w


@pytest.mark.parametrize("complex_norm", ["element", "component"])
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_matches_an_independent_float64_algorithm_1(dtype, complex_norm):
    shape, n_steps = (6, 5, 4, 3), 12
    p = _param(shape, dtype)
    w0 = p.detach().numpy().copy()
    grads = _grads(shape, n_steps, dtype)
    hp = dict(lr=3e-2, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, scale=0.5)
    opt = reference_optimizer(TensorGaLoreAdamW, p, hp, rank=0.3, complex_norm=complex_norm)
    _run(opt, [p], [grads])
    state = opt.state[p]
    assert int(state["refreshes"]) == 1
    factors = [state[f"factor_{k}"].numpy() for k in range(4)]
    c = 2.0 if dtype.is_complex and complex_norm == "component" else 1.0
    expected = _algorithm_1(w0, [g.numpy() for g in grads], factors, **hp, c=c)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-10)


def _algorithm_1_with_residual(w0, grads, factors, *, lr, b1, b2, eps, wd, scale, c, limit):
    """Algorithm 1 plus Fira's scaled residual, formed explicitly: ``W -= lr * (scale * back(N) + phi * (G -
    back(R)))`` with ``phi = ||N|| / ||R||`` and the norm-growth limiter on ``||phi * (G - back(R))||``."""
    w = w0.copy()
    m = v = 0.0
    last = 0.0
    for t, g in enumerate(grads, start=1):
        r = _mode_apply(g, [u.conj().T for u in factors])
        m = b1 * m + (1 - b1) * r
        v = b2 * v + (1 - b2) * (r * r.conj()).real
        n = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) / c) + eps)
        residual = g - _mode_apply(r, factors)
        phi = np.linalg.norm(n) / np.linalg.norm(r)
        norm = phi * np.linalg.norm(residual)
        if limit is not None and last > 0 and norm > limit * last:
            phi, norm = phi * limit * last / norm, limit * last
        last = norm
        w = w * (1 - lr * wd) - lr * (scale * _mode_apply(n, factors) + phi * residual)
    return w


@pytest.mark.parametrize("limit", [None, 1.01])
@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_residual_step_matches_an_independent_float64_reference(dtype, limit):
    shape, n_steps = (6, 5, 4, 3), 12
    p = _param(shape, dtype)
    w0 = p.detach().numpy().copy()
    g = _gen(3)
    # growing gradients, so that the limiter acts on most steps
    grads = [torch.randn(shape, dtype=dtype, generator=g) * (1 + 0.5 * t) for t in range(n_steps)]
    hp = dict(lr=3e-2, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, scale=2.0)
    opt = reference_optimizer(TensorGaLoreAdamW, p, hp, rank=0.3, residual="scaled", residual_limit=limit)
    _run(opt, [p], [grads])
    state = opt.state[p]
    factors = [state[f"factor_{k}"].numpy() for k in range(4)]
    c = 2.0 if dtype.is_complex else 1.0
    expected = _algorithm_1_with_residual(w0, [x.numpy() for x in grads], factors, **hp, c=c, limit=limit)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-10)
    assert state["residual_norm"].dtype == torch.float64 and float(state["residual_norm"]) > 0
    without = _algorithm_1(w0, [x.numpy() for x in grads], factors, **hp, c=c)
    assert np.abs(expected - without).max() > 1e-3  # the residual step really moves the weights


def test_residual_step_limiter_caps_the_growth_of_the_residual_update():
    p = _param((6, 5, 4), torch.complex64)
    opt = TensorGaLoreAdamW([p], lr=1e-2, galore=True, rank=0.3, update_proj_gap=None, residual="scaled")
    norms = []
    for t in range(6):
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=_gen(t)) * 10.0**t  # a 10x jump every step
        opt.step()
        norms.append(float(opt.state[p]["residual_norm"]))
    ratios = [b / a for a, b in zip(norms, norms[1:], strict=False)]
    assert all(r <= 1.01 * (1 + 1e-5) for r in ratios), ratios


@pytest.mark.parametrize("dtype", [torch.complex64, torch.float32])
def test_residual_step_at_full_rank_is_the_low_rank_step(dtype):
    """At full rank nothing lies outside the subspace: the residual step adds (numerically) nothing."""
    shape = (5, 4, 3)
    a, b = _param(shape, dtype), _param(shape, dtype)
    b.data.copy_(a.data)
    grads = _grads(shape, 5, dtype)
    opts = [
        TensorGaLoreAdamW([q], lr=1e-2, galore=True, rank=1.0, update_proj_gap=2, residual=r)
        for q, r in ((a, "none"), (b, "scaled"))
    ]
    for opt, q in zip(opts, (a, b), strict=True):
        _run(opt, [q], [grads])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_residual_step_on_the_matrix_path_and_unprojected_groups():
    """The matrix (GaLore) path gets the residual too; full-tensor groups are unaffected by the option."""
    w = _param((8, 6), torch.float32)
    full = _param((7,), torch.float32, seed=1)
    ref = nn.Parameter(full.detach().clone())
    opt = TensorGaLoreAdamW([{"params": [w], "galore": True}, {"params": [full]}], lr=1e-2, rank=2, residual="scaled")
    torch_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.0)
    w0 = w.detach().clone()
    for g_w, g_f in zip(_grads(w.shape, 3, torch.float32), _grads(full.shape, 3, torch.float32, seed=5), strict=True):
        w.grad, full.grad, ref.grad = g_w, g_f.clone(), g_f.clone()
        opt.step()
        torch_opt.step()
    assert torch.equal(full, ref)
    assert "residual_norm" not in opt.state[full] and "residual_norm" in opt.state[w]
    assert "factor_0" not in opt.state[w]
    u = opt.state[w]["factor_1"]  # (6, 2): the smaller side; with the residual the update leaves the subspace
    delta = (w - w0).detach()
    assert (delta - (delta @ u) @ u.T).norm() > 1e-3 * delta.norm()


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_projected_modes_leave_the_other_modes_whole_and_unrotated(dtype):
    """proj_modes=[0, 1]: factors on the channel modes only; the update is Algorithm 1 with identity factors on
    the other modes (their coordinates are neither cut nor rotated)."""
    shape, n_steps = (8, 6, 4, 3), 6
    p = _param(shape, dtype)
    w0 = p.detach().numpy().copy()
    grads = _grads(shape, n_steps, dtype)
    hp = dict(lr=3e-2, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, scale=2.0)
    opt = reference_optimizer(TensorGaLoreAdamW, p, hp, rank=0.25, proj_modes=[0, 1])
    _run(opt, [p], [grads])
    state = opt.state[p]
    assert sorted(k for k in state if k.startswith("factor_")) == ["factor_0", "factor_1"]
    assert tuple(state["exp_avg"].shape) == (4, 3, 4, 3)  # 4 * 3 / (8 * 6) = 25% of the elements
    factors = [state["factor_0"].numpy(), state["factor_1"].numpy(), np.eye(4), np.eye(3)]
    c = 2.0 if dtype.is_complex else 1.0
    expected = _algorithm_1(w0, [g.numpy() for g in grads], factors, **hp, c=c)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=0, atol=1e-10)
    assert opt.param_groups[0]["proj_modes"] == (0, 1)


def test_projected_modes_out_of_range_name_the_parameter():
    with pytest.raises(ValueError, match=r"param_groups\[0\] params\[0\].*mode 3 does not exist"):
        TensorGaLoreAdamW([_param((4, 3, 2))], galore=True, proj_modes=[0, 3])


def _complex_adam(w0, grads, *, lr, b1, b2, eps, wd, c=2.0):
    """Complex-correct AdamW on full tensors: complex first moment, real |g|^2 second moment, divided by ``c`` in
    the denominator (2: the default ``complex_norm="component"``)."""
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros(w0.shape, dtype=w0.real.dtype)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g.real**2 + g.imag**2)
        w = w * (1 - lr * wd) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t) / c).sqrt() + eps)
    return w


@pytest.mark.parametrize("rule", ["keep", "project"])
def test_identity_factors_reduce_to_complex_correct_adam(monkeypatch, rule):
    shape = (5, 4, 3)

    def identity_solver(g, ranks, **_):
        eye = [torch.eye(n, dtype=g.dtype) for n in g.shape]
        return tucker.TuckerResult(g.clone(), eye, [torch.ones(n) for n in g.shape])

    monkeypatch.setattr(tucker, "hosvd", identity_solver)
    p, q = _param(shape, torch.complex128), _param(shape, torch.complex128)
    with torch.no_grad():
        q.copy_(p)
    w0 = p.detach().clone()
    grads = _grads(shape, 8, torch.complex128)
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    projected = TensorGaLoreAdamW([p], galore=True, rank=1.0, update_proj_gap=3, refresh_moments=rule, **kw)
    full = TensorGaLoreAdamW([q], galore=False, **kw)
    _run(projected, [p], [grads])
    _run(full, [q], [grads])
    expected = _complex_adam(w0, grads, lr=1e-2, b1=0.9, b2=0.99, eps=1e-8, wd=0.05)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.detach(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_real_full_tensor_groups_match_torch_adamw_bit_for_bit(weight_decay):
    shapes = [(7,), (6, 5), (4, 3, 2)]
    ours = [_param(s, torch.float32, seed=i) for i, s in enumerate(shapes)]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    opt = TensorGaLoreAdamW(ours, **kw)
    torch_opt = torch.optim.AdamW(ref, foreach=False, **kw)
    grads = [_grads(s, 6, torch.float32, seed=10 + i) for i, s in enumerate(shapes)]
    _run(opt, ours, grads)
    _run(torch_opt, ref, grads)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg_sq"], torch_opt.state[b]["exp_avg_sq"])


def test_full_tensor_real_groups_of_mixed_dtypes_match_torch_adamw_bit_for_bit():
    """Full real tensors are updated with foreach ops grouped by device and dtype; mixed dtypes and a complex
    parameter in the same group keep their own results."""
    ours = [_param((5, 3), torch.float32), _param((4,), torch.float64, seed=1), _param((3, 2), torch.float32, seed=2)]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    c = _param((3, 3), seed=3)
    opt = TensorGaLoreAdamW(ours + [c], **kw)
    torch_opt = torch.optim.AdamW(ref, foreach=False, **kw)
    grads = [_grads(p.shape, 5, p.dtype, seed=20 + i) for i, p in enumerate(ours)]
    _run(opt, ours + [c], grads + [_grads((3, 3), 5, seed=30)])
    _run(torch_opt, ref, grads)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_complex_full_tensor_second_moment_is_real_abs_sq():
    p = _param((4, 3))
    g = torch.tensor([[3 + 4j] * 3] * 4, dtype=torch.complex64)
    opt = TensorGaLoreAdamW([p], betas=(0.9, 0.99))
    p.grad = g
    opt.step()
    v = opt.state[p]["exp_avg_sq"]
    assert v.dtype == torch.float32 and v.shape == (4, 3)
    torch.testing.assert_close(v, torch.full((4, 3), 0.01 * 25.0))


@pytest.mark.parametrize("galore", [False, True])
def test_component_norm_is_element_norm_with_lr_and_eps_times_sqrt2(galore):
    """``complex_norm="component"`` divides by sqrt(V_hat / 2): the same as "element" with lr and eps scaled by
    sqrt(2) (no weight decay, which would see the scaled lr); projected and full tensors alike."""
    shape = (6, 5, 4)
    a, b = _param(shape), _param(shape)
    b.data.copy_(a.data)
    kw = dict(betas=(0.9, 0.99), galore=galore, rank=0.5, update_proj_gap=3)
    comp = TensorGaLoreAdamW([a], lr=1e-2, eps=1e-6, complex_norm="component", **kw)
    elem = TensorGaLoreAdamW([b], lr=1e-2 * math.sqrt(2), eps=1e-6 * math.sqrt(2), complex_norm="element", **kw)
    grads = _grads(shape, 7, seed=3)
    _run(comp, [a], [grads])
    _run(elem, [b], [grads])
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comp.state[a]["exp_avg_sq"], elem.state[b]["exp_avg_sq"])


def test_component_norm_moves_each_part_like_torch_adamw_on_a_balanced_gradient():
    """A gradient whose real and imaginary parts are equal has ``|g|^2 / 2 = re^2 = im^2``: the "component" step
    then equals torch.optim.AdamW's on the real view, part for part."""
    shape = (5, 4)
    a = _param(shape)
    b = nn.Parameter(a.detach().clone())
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    ours = TensorGaLoreAdamW([a], complex_norm="component", **kw)
    ref = torch.optim.AdamW([b], foreach=False, weight_decay=0.0, **kw)
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        re = torch.randn(shape, generator=g)
        grad = torch.complex(re, re)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def test_complex_norm_leaves_real_parameters_bit_identical():
    a = _param((4, 3), torch.float32)
    b = nn.Parameter(a.detach().clone())
    opts = [TensorGaLoreAdamW([p], lr=1e-2, complex_norm=n) for p, n in ((a, "component"), (b, "element"))]
    grads = _grads((4, 3), 4, torch.float32, seed=5)
    _run(opts[0], [a], [grads])
    _run(opts[1], [b], [grads])
    assert torch.equal(a, b)


def test_never_modifies_the_gradient():
    p = _param((6, 5, 4))
    g = _grads((6, 5, 4), 1)[0]
    p.grad = g.clone()
    opt = TensorGaLoreAdamW([p], galore=True, weight_decay=0.1)
    opt.step()
    opt.step()
    assert torch.equal(p.grad, g)


# ------------------------------------------------------------------------------------ state layout


def test_state_holds_core_shaped_moments_and_plain_tensors():
    p = _param((8, 6, 4, 3))
    opt = TensorGaLoreAdamW([p], galore=True, rank=0.25)
    p.grad = _grads(p.shape, 1)[0]
    opt.step()
    state = opt.state[p]
    core = layout.resolve_ranks(0.25, p.shape)
    assert core == (6, 4, 3, 2)
    assert state["exp_avg"].shape == core and state["exp_avg"].dtype == torch.complex64
    assert state["exp_avg_sq"].shape == core and state["exp_avg_sq"].dtype == torch.float32
    for k, (n, r) in enumerate(zip(p.shape, core, strict=True)):
        assert state[f"factor_{k}"].shape == (n, r) and state[f"factor_{k}"].dtype == torch.complex64
        assert state[f"spectrum_{k}"].shape == (n,)
    assert state["step"].shape == () and state["step"].dtype == torch.float32
    assert state["last_refresh"].dtype == torch.int64 and int(state["last_refresh"]) == 0
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize(
    "rollup, core, factor",
    [(1, (2, 72), ("factor_0", (8, 2))), (2, (48, 3), ("factor_1", (12, 3))), (3, (192, 1), ("factor_1", (3, 1)))],
)
def test_matrix_baseline_rolls_up_modes_and_projects_the_smaller_side(rollup, core, factor):
    p = _param((8, 6, 4, 3))
    opt = TensorGaLoreAdamW([p], galore=True, proj="matrix", rollup=rollup, rank=0.25)
    p.grad = _grads(p.shape, 1)[0]
    opt.step()
    state = opt.state[p]
    assert state["exp_avg"].shape == core and state["exp_avg_sq"].shape == core
    assert [k for k in state if k.startswith("factor_")] == [factor[0]]
    assert state[factor[0]].shape == factor[1]


def test_two_dim_parameters_use_the_matrix_path_in_tucker_groups():
    p = _param((6, 20), torch.float32)
    opt = TensorGaLoreAdamW([p], galore=True, rank=0.5)
    p.grad = _grads(p.shape, 1, torch.float32)[0]
    opt.step()
    assert opt.state[p]["exp_avg"].shape == (3, 20) and opt.state[p]["factor_0"].shape == (6, 3)


def test_one_dim_parameters_of_projected_groups_get_full_adamw():
    p = _param((5,), torch.float32)
    opt = TensorGaLoreAdamW([p], galore=True)
    p.grad = torch.ones(5)
    opt.step()
    assert opt.state[p]["exp_avg"].shape == (5,) and not any(k.startswith("factor_") for k in opt.state[p])


def test_state_at_rank_quarter_is_at_most_22pct_of_adamw_for_a_spectral_weight():
    p = _param((64, 64, 32, 17))
    opt = TensorGaLoreAdamW([p], galore=True, rank=0.25)
    p.grad = torch.zeros_like(p)
    p.grad[0, 0, 0, 0] = 1.0
    opt.step()
    ours = opt.state_bytes()["total"]
    assert ours == sum(v.numel() * v.element_size() for v in opt.state[p].values())
    assert ours <= 0.22 * adamw_state_bytes([p])
    # hand count: core 47*45*22*12 complex64 + float32 moments, factors, spectra, energy/step and int64 counters
    core = 47 * 45 * 22 * 12
    factors = 8 * (64 * 47 + 64 * 45 + 32 * 22 + 17 * 12)
    expected = core * (8 + 4) + factors + 4 * (64 + 64 + 32 + 17) + 4 + 4 + 8 + 8
    assert ours == expected


def test_state_bytes_are_reported_per_group():
    a, b = _param((6, 5, 4)), _param((3,), torch.float32)
    opt = TensorGaLoreAdamW([{"params": [a], "galore": True}, {"params": [b]}])
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    opt.step()
    report = opt.state_bytes()
    assert report["groups"][1] == 2 * 3 * 4 + 4 and report["total"] == sum(report["groups"])


# ------------------------------------------------------------------------------------ refresh control


def test_gap_50_refreshes_exactly_4_times_in_200_steps(monkeypatch):
    calls = []
    real = tucker.hosvd

    def spy(g, ranks, **kw):
        calls.append(1)
        return real(g, ranks, **kw)

    monkeypatch.setattr(tucker, "hosvd", spy)
    p = _param((4, 3, 2))
    opt = TensorGaLoreAdamW([p], galore=True, update_proj_gap=50, lr=1e-3)
    refresh_steps = []
    for s in range(200):
        p.grad = torch.ones_like(p)
        opt.step()
        if int(opt.state[p]["last_refresh"]) == s:
            refresh_steps.append(s)
    assert refresh_steps == [0, 50, 100, 150] and len(calls) == 4 and int(opt.state[p]["refreshes"]) == 4


def test_request_refresh_acts_at_the_next_step_and_restarts_the_gap():
    p = _param((4, 3, 2))
    opt = TensorGaLoreAdamW([p], galore=True, update_proj_gap=10)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    opt.request_refresh()
    assert opt.param_groups[0]["refresh_pending"] is True
    assert int(opt.state[p]["last_refresh"]) == 0  # nothing happens until the next step
    p.grad = torch.randn_like(p)
    opt.step()
    assert int(opt.state[p]["last_refresh"]) == 3 and opt.param_groups[0]["refresh_pending"] is False
    for _ in range(9):
        opt.step()
    assert int(opt.state[p]["last_refresh"]) == 3  # next automatic refresh is 10 steps after step 3
    opt.step()
    assert int(opt.state[p]["last_refresh"]) == 13 and int(opt.state[p]["refreshes"]) == 3


def test_a_pending_refresh_waits_for_a_step_in_which_its_group_has_gradients():
    """Fused per-layer updates step the optimizer once per parameter, with only that parameter's gradient set:
    a requested refresh must survive the steps of the other groups."""
    a, b = _param((4, 3, 2)), _param((4, 3, 2), seed=1)
    opt = TensorGaLoreAdamW([{"params": [a]}, {"params": [b]}], galore=True, update_proj_gap=None)
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    opt.step()
    opt.request_refresh()
    b.grad = None
    opt.step()  # only a
    assert int(opt.state[a]["refreshes"]) == 2 and opt.param_groups[0]["refresh_pending"] is False
    assert opt.param_groups[1]["refresh_pending"] is True
    a.grad, b.grad = None, torch.randn_like(b)
    opt.step()  # only b
    assert int(opt.state[b]["refreshes"]) == 2 and opt.param_groups[1]["refresh_pending"] is False


def test_request_refresh_targets_one_group():
    a, b = _param((4, 3, 2)), _param((4, 3, 2), seed=1)
    opt = TensorGaLoreAdamW([{"params": [a]}, {"params": [b]}], galore=True, update_proj_gap=None)
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    opt.step()
    opt.request_refresh(group_idx=1)
    opt.step()
    assert int(opt.state[a]["refreshes"]) == 1 and int(opt.state[b]["refreshes"]) == 2
    with pytest.raises(ValueError, match="group_idx=5"):
        opt.request_refresh(group_idx=5)


def test_set_rank_applies_at_the_next_refresh():
    p = _param((8, 6, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=0.5, update_proj_gap=5)
    p.grad = torch.randn_like(p)
    opt.step()
    before = opt.state[p]["exp_avg"].shape
    opt.set_rank(2)
    assert opt.param_groups[0]["rank"] == 2
    for _ in range(4):
        opt.step()
        assert opt.state[p]["exp_avg"].shape == before
    opt.step()  # step 5: refresh
    assert opt.state[p]["exp_avg"].shape == (2, 2, 2)
    assert [opt.state[p][f"factor_{k}"].shape[1] for k in range(3)] == [2, 2, 2]


def test_set_rank_validates_before_changing_anything():
    p = _param((8, 6, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=0.5)
    with pytest.raises(ValueError, match="3 modes"):
        opt.set_rank([2, 2])
    with pytest.raises(ValueError, match="rank=2.0"):
        opt.set_rank(2.0)
    assert opt.param_groups[0]["rank"] == 0.5


@pytest.mark.parametrize("rule", ["keep", "project", "reset"])
@pytest.mark.parametrize("new_rank", [2, 5, [1, 6, 3]])
def test_moments_match_the_core_after_a_rank_change(rule, new_rank):
    p = _param((8, 6, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=3, refresh_moments=rule, update_proj_gap=None)
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    opt.set_rank(new_rank)
    opt.request_refresh()
    p.grad = torch.randn_like(p)
    opt.step()
    core = layout.resolve_ranks(new_rank, p.shape)
    state = opt.state[p]
    assert state["exp_avg"].shape == core and state["exp_avg_sq"].shape == core
    assert torch.isfinite(p).all() and bool((state["exp_avg_sq"] >= 0).all())
    opt.step()
    assert torch.isfinite(p).all()


def test_project_rule_rotates_the_first_moment_exactly():
    p = _param((8, 6, 4), torch.complex128)
    opt = TensorGaLoreAdamW(
        [p], galore=True, rank=4, refresh_moments="project", update_proj_gap=None, betas=(0.9, 0.99)
    )
    for _ in range(3):
        p.grad = torch.randn_like(p)
        opt.step()
    state = opt.state[p]
    old = [state[f"factor_{k}"].clone() for k in range(3)]
    m_old, v_old = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    opt.set_rank(3)
    opt.request_refresh()
    g = torch.randn_like(p)
    p.grad = g
    opt.step()
    new = [state[f"factor_{k}"] for k in range(3)]
    rot = [u.mH @ v for u, v in zip(new, old, strict=True)]
    core = tucker.project(g, new)
    torch.testing.assert_close(state["exp_avg"], 0.9 * tucker.multi_mode_dot(m_old, rot) + 0.1 * core)
    v_rot = tucker.multi_mode_dot(v_old, [r.abs().square() for r in rot])
    torch.testing.assert_close(state["exp_avg_sq"], 0.99 * v_rot + 0.01 * core.abs().square())


def test_keep_rule_keeps_coordinates_and_crops_on_rank_decrease():
    p = _param((8, 6, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=4, refresh_moments="keep", update_proj_gap=None)
    p.grad = torch.randn_like(p)
    opt.step()
    m_old = opt.state[p]["exp_avg"].clone()
    opt.set_rank(2)
    opt.request_refresh()
    g = torch.randn_like(p)
    p.grad = g
    opt.step()
    core = tucker.project(g, [opt.state[p][f"factor_{k}"] for k in range(3)])
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.9 * m_old[:2, :2, :2] + 0.1 * core)


def test_reset_rule_zeroes_moments_and_restarts_bias_correction():
    p = _param((8, 6, 4), torch.complex128)
    opt = TensorGaLoreAdamW(
        [p],
        galore=True,
        rank=3,
        refresh_moments="reset",
        update_proj_gap=4,
        lr=0.1,
        eps=0.0,
        complex_norm="element",
        scale=1.0,
    )
    for _ in range(4):
        p.grad = torch.randn_like(p)
        opt.step()
    w = p.detach().clone()
    g = torch.randn_like(p)
    p.grad = g
    opt.step()  # refresh at step 4
    state = opt.state[p]
    fs = [state[f"factor_{k}"] for k in range(3)]
    core = tucker.project(g, fs)
    torch.testing.assert_close(state["exp_avg"], 0.1 * core)
    # first step after a reset is a bias-corrected Adam first step: lr * core / |core|
    torch.testing.assert_close(p.detach(), w - 0.1 * tucker.project_back(core / core.abs(), fs))


# ------------------------------------------------------------------------------------ checkpoints


def _mixed_model_params():
    return [
        _param((8, 6, 4, 3), torch.complex64, seed=0),  # Tucker
        _param((6, 10), torch.float32, seed=1),  # 2-D, matrix path
        _param((5, 4, 3), torch.float16, seed=2),  # half precision Tucker (state dtypes differ from torch's cast)
        _param((7,), torch.float32, seed=3),  # full AdamW
        _param((3, 4), torch.complex64, seed=4),  # full complex AdamW
    ]


def _mixed_optimizer(params, residual="none"):
    return TensorGaLoreAdamW(
        [{"params": params[:3], "galore": True}, {"params": params[3:], "galore": False, "weight_decay": 0.01}],
        lr=1e-2,
        rank=0.5,
        update_proj_gap=3,
        refresh_moments="project",
        residual=residual,
    )


@pytest.mark.parametrize("residual", ["none", "scaled"])
@pytest.mark.parametrize("n_before", [2, 3])
def test_state_dict_round_trip_with_weights_only_gives_a_bit_identical_next_step(n_before, residual):
    params = _mixed_model_params()
    opt = _mixed_optimizer(params, residual)
    grads = [_grads(p.shape, n_before + 2, p.dtype, seed=20 + i) for i, p in enumerate(params)]
    _run(opt, params, [g[:n_before] for g in grads])
    opt.request_refresh(0)

    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    clones = [nn.Parameter(p.detach().clone()) for p in params]
    resumed = _mixed_optimizer(clones, residual)
    resumed.load_state_dict(loaded)

    for a, b in zip(params, clones, strict=True):
        sa, sb = opt.state[a], resumed.state[b]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device, k
            assert torch.equal(sa[k], sb[k]), k
    assert resumed.param_groups[0]["refresh_pending"] is True

    _run(opt, params, [g[n_before:] for g in grads])
    _run(resumed, clones, [g[n_before:] for g in grads])
    for a, b in zip(params, clones, strict=True):
        assert torch.equal(a, b)
        for k in opt.state[a]:
            assert torch.equal(opt.state[a][k], resumed.state[b][k]), k


def test_every_option_is_a_group_key_saved_in_the_state_dict():
    p = _param((4, 3, 2))
    opt = TensorGaLoreAdamW([{"params": [p], "rank": 2, "proj": "matrix"}], galore=True, solver="hooi")
    group = opt.state_dict()["param_groups"][0]
    for key in (
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "galore",
        "rank",
        "update_proj_gap",
        "scale",
        "proj",
        "proj_modes",
        "rollup",
        "solver",
        "solver_iters",
        "refresh_moments",
        "nonfinite",
        "complex_norm",
        "residual",
        "residual_limit",
        "refresh_pending",
    ):
        assert key in group, key
    assert (group["rank"], group["proj"], group["solver"], group["galore"]) == (2, "matrix", "hooi", True)


# ------------------------------------------------------------------------------------ robustness


def test_nonfinite_error_names_the_parameter_and_step_and_changes_nothing():
    a, b = _param((4, 3, 2)), _param((5,), torch.float32)
    opt = TensorGaLoreAdamW([{"params": [a], "galore": True}, {"params": [b]}])
    for _ in range(2):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        opt.step()
    before = {k: v.clone() for k, v in opt.state[a].items()}
    a_before = a.detach().clone()
    b.grad = torch.tensor([1.0, float("nan"), 0.0, 0.0, 0.0])
    with pytest.raises(NonFiniteGradientError, match=r"param_groups\[1\] params\[0\] \(shape \(5,\).*step 2"):
        opt.step()
    assert torch.equal(a, a_before)
    assert all(torch.equal(before[k], opt.state[a][k]) for k in before)


@pytest.mark.parametrize("refresh", [False, True])
def test_nonfinite_skip_leaves_everything_untouched_and_counts(refresh):
    p = _param((4, 3, 2))
    opt = TensorGaLoreAdamW([p], galore=True, nonfinite="skip", update_proj_gap=None)
    p.grad = torch.randn_like(p)
    opt.step()
    if refresh:
        opt.request_refresh()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    w = p.detach().clone()
    g = torch.randn_like(p)
    g[1, 1, 1] = complex(float("inf"), 0)
    p.grad = g
    with pytest.warns(RuntimeWarning, match="skipped a step.*step 1"):
        opt.step()
    assert torch.equal(p, w)
    assert all(torch.equal(before[k], opt.state[p][k]) for k in before)
    assert int(opt.state[p]["nonfinite_skips"]) == 1
    assert opt.param_groups[0]["refresh_pending"] is refresh  # a pending refresh waits for a real step
    p.grad = torch.randn_like(p)
    opt.step()
    assert int(opt.state[p]["step"]) == 2 and torch.isfinite(p).all()


def test_nonfinite_on_the_first_step_leaves_no_moments():
    p = _param((4, 3, 2))
    opt = TensorGaLoreAdamW([p], galore=True, nonfinite="skip")
    p.grad = torch.full_like(p, float("nan"))
    with pytest.warns(RuntimeWarning):
        opt.step()
    assert set(opt.state[p]) == {"nonfinite_skips"}
    p.grad = torch.randn_like(p)
    opt.step()
    assert int(opt.state[p]["step"]) == 1 and int(opt.state[p]["refreshes"]) == 1


def test_solver_failure_keeps_the_old_factors_and_warns(monkeypatch):
    p = _param((6, 5, 4))
    opt = TensorGaLoreAdamW([p], galore=True, update_proj_gap=2)
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    old = {k: v.clone() for k, v in opt.state[p].items() if k.startswith("factor_")}

    def broken_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("simulated: the algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", broken_eigh)
    p.grad = torch.randn_like(p)
    with pytest.warns(RuntimeWarning, match="solver 'hosvd' failed.*keeping the previous factors"):
        opt.step()  # step 2 refreshes
    assert all(torch.equal(old[k], opt.state[p][k]) for k in old)
    assert int(opt.state[p]["last_refresh"]) == 2 and torch.isfinite(p).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # no new attempt before the next scheduled refresh


def test_solver_failure_at_the_first_step_uses_coordinate_subspaces(monkeypatch):
    def broken_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("simulated")

    monkeypatch.setattr(torch.linalg, "eigh", broken_eigh)
    p = _param((6, 5, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=2)
    p.grad = torch.randn_like(p)
    with pytest.warns(RuntimeWarning, match="coordinate subspaces"):
        opt.step()
    assert torch.equal(opt.state[p]["factor_0"], torch.eye(6, 2, dtype=torch.complex64))
    assert torch.isfinite(p).all()


def test_zero_gradient_is_harmless():
    p = _param((6, 5, 4))
    w = p.detach().clone()
    opt = TensorGaLoreAdamW([p], galore=True)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p, w) and float(opt.state[p]["energy"]) == 1.0


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("lr", -1.0, ValueError),
        ("lr", float("nan"), ValueError),
        ("betas", (1.0, 0.9), ValueError),
        ("betas", (0.9,), TypeError),
        ("eps", -1e-8, ValueError),
        ("weight_decay", -0.1, ValueError),
        ("galore", "yes", TypeError),
        ("galore", 1, TypeError),
        ("rank", 1.5, ValueError),
        ("rank", 0, ValueError),
        ("rank", True, TypeError),
        ("update_proj_gap", 0, ValueError),
        ("update_proj_gap", 2.5, ValueError),
        ("scale", 0.0, ValueError),
        ("proj", "cp", ValueError),
        ("rollup", 0, ValueError),
        ("solver", "svd", ValueError),
        ("solver_iters", 0, ValueError),
        ("refresh_moments", "rotate", ValueError),
        ("nonfinite", "ignore", ValueError),
        ("complex_norm", "modulus", ValueError),
        ("proj_modes", [], ValueError),
        ("proj_modes", "0,1", TypeError),
        ("residual", "fira", ValueError),
        ("residual_limit", 1.0, ValueError),
        ("residual_limit", "1.01", TypeError),
        ("refresh_pending", None, TypeError),
    ],
)
def test_invalid_options_raise_in_init_and_add_param_group(option, value, error):
    if option != "refresh_pending":  # a group key, not a constructor argument
        with pytest.raises(error, match=option):
            TensorGaLoreAdamW([_param((4, 3, 2))], **{option: value})
    opt = TensorGaLoreAdamW([_param((4, 3, 2))])
    with pytest.raises(error, match=option):
        opt.add_param_group({"params": [_param((4, 3, 2), seed=1)], option: value})
    assert len(opt.param_groups) == 1


def test_a_per_mode_rank_that_does_not_fit_names_the_parameter():
    with pytest.raises(ValueError, match=r"param_groups\[1\] params\[1\].*has 3 entries"):
        TensorGaLoreAdamW(
            [
                {"params": [_param((3,))]},
                {"params": [_param((4, 3, 2)), _param((5, 4, 3, 2))], "galore": True, "rank": [2, 2, 2]},
            ]
        )
    # a 2-D parameter cannot take per-mode ranks
    with pytest.raises(ValueError, match="per-mode"):
        TensorGaLoreAdamW([_param((4, 6))], galore=True, rank=[2, 2])


@pytest.mark.parametrize("solver", ["hooi", "tensorly"])
def test_reference_solvers_run_through_the_optimizer(solver):
    p = _param((6, 5, 4))
    opt = TensorGaLoreAdamW([p], galore=True, solver=solver, solver_iters=2, update_proj_gap=2)
    for _ in range(4):
        p.grad = torch.randn_like(p)
        opt.step()
    assert int(opt.state[p]["refreshes"]) == 2 and torch.isfinite(p).all()


def test_subspace_stats_are_plain_numbers():
    a, b = _param((8, 6, 4)), _param((5,), torch.float32)
    opt = TensorGaLoreAdamW([{"params": [a], "galore": True, "rank": 3}, {"params": [b]}])
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    opt.step()
    (stats,) = opt.subspace_stats(spectra=True)
    assert stats["ranks"] == (3, 3, 3) and stats["group"] == 0 and stats["index"] == 0
    assert stats["last_refresh"] == 0 and stats["refreshes"] == 1 and stats["step"] == 1
    assert 0 < stats["energy"] <= 1 and all(0 < e <= 1 for e in stats["mode_energy"])
    assert [len(s) for s in stats["spectra"]] == [8, 6, 4]

    def plain(x):
        return (
            x is None or isinstance(x, (int, float, str)) or (isinstance(x, (list, tuple)) and all(plain(y) for y in x))
        )

    assert all(plain(v) for v in stats.values())


def test_closure_is_evaluated_with_grad_enabled():
    p = _param((4, 3, 2))
    opt = TensorGaLoreAdamW([p], galore=True)

    def closure():
        opt.zero_grad()
        loss = p.abs().square().sum()
        loss.backward()
        return loss.detach()

    assert float(opt.step(closure)) > 0 and int(opt.state[p]["step"]) == 1


# ------------------------------------------------------------------------------------ training


def test_converges_on_complex_least_squares():
    """An FNO-like spectral contraction y = sum_i x_i W_io (per mode); W is recovered from data."""
    w_true, loss_fn = spectral_least_squares((6, 6, 4, 3))
    w = nn.Parameter(torch.zeros_like(w_true))
    opt = TensorGaLoreAdamW([w], lr=0.05, galore=True, rank=0.25, update_proj_gap=10)
    train(opt, w, loss_fn, 600, torch.optim.lr_scheduler.CosineAnnealingLR(opt, 600))
    rel = float((w.detach() - w_true).norm() / w_true.norm())
    assert rel < 1e-3


def test_app_optim_imports_neither_lightning_nor_neuralop():
    code = (
        "import sys, app.optim; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'neuralop')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_parser_reads_every_rank_form_from_yaml():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(TensorGaLoreAdamW, "opt", skip={"params"})
    for text, expected in [("0.25", 0.25), ("8", 8), ("[32, 32, 0.5, 9]", [32, 32, 0.5, 9])]:
        cfg = parser.parse_args([f"--opt.rank={text}"])
        assert cfg.opt.rank == expected and type(cfg.opt.rank) is type(expected)
    cfg = parser.parse_args(["--opt.rank=[8, 8, null, null]", "--opt.proj_modes=[0, 1]"])
    assert cfg.opt.rank == [8, 8, None, None] and list(cfg.opt.proj_modes) == [0, 1]
    cfg = parser.parse_args(["--opt.update_proj_gap=null", "--opt.galore=true", "--opt.proj=matrix"])
    assert cfg.opt.update_proj_gap is None and cfg.opt.galore is True and cfg.opt.proj == "matrix"
    assert math.isclose(cfg.opt.lr, 1e-3)


def test_switching_a_group_between_projected_and_full_rebuilds_the_state():
    p = _param((6, 5, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=2, update_proj_gap=None)
    p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0]["galore"] = False
    opt.step()
    state = opt.state[p]
    assert state["exp_avg"].shape == p.shape and not any(k.startswith("factor_") for k in state)
    assert int(state["step"]) == 2
    opt.param_groups[0].update(galore=True, proj="matrix")
    opt.step()
    assert opt.state[p]["exp_avg"].shape == (2, 20) and int(opt.state[p]["last_refresh"]) == 2
    assert torch.isfinite(p).all()


def test_overlap_measures_subspace_drift_between_refreshes():
    p = _param((8, 6, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=3, update_proj_gap=None)
    g = torch.randn_like(p)
    p.grad = g
    opt.step()
    assert opt.subspace_stats()[0]["overlap"] is None
    opt.request_refresh()
    opt.step()  # same gradient: same subspaces
    assert all(abs(x - 1) < 1e-5 for x in opt.subspace_stats()[0]["overlap"])
    p.grad = torch.randn_like(p)
    opt.request_refresh()
    opt.step()
    assert all(0 <= x < 0.99 for x in opt.subspace_stats()[0]["overlap"])


def test_captured_energy_now_uses_the_current_gradient_and_subspace():
    p = _param((8, 6, 4))
    opt = TensorGaLoreAdamW([p], galore=True, rank=3, update_proj_gap=None)
    assert opt.captured_energy_now() == []
    g = torch.randn_like(p)
    p.grad = g
    opt.step()
    (now,) = opt.captured_energy_now()
    assert (now["group"], now["index"]) == (0, 0)
    assert abs(now["energy"] - opt.subspace_stats()[0]["energy"]) < 1e-5
    fs = [opt.state[p][f"factor_{k}"] for k in range(3)]
    p.grad = tucker.project_back(tucker.project(torch.randn_like(p), fs), fs)  # inside the subspace
    assert abs(opt.captured_energy_now()[0]["energy"] - 1) < 1e-5


def test_host_counters_are_not_copied_every_step(monkeypatch):
    """Counters live on the CPU; only after something (Lightning's ``_optimizer_to_device``) moved them to an
    accelerator are they copied back, once (needs a GPU to exercise)."""
    p = _param((6, 5, 4))
    opt = TensorGaLoreAdamW([p], galore=True, update_proj_gap=2)
    p.grad = torch.randn_like(p)
    opt.step()
    moved = []
    original = torch.Tensor.cpu

    def spy(t, *args, **kwargs):
        moved.append(t)
        return original(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", spy)
    opt.step()
    assert moved == []  # nothing to move back in the normal case
