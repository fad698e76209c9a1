"""bfloat16 optimizer state (``moment_dtype="bfloat16"``, with or without a sparse part): storage, rounding,
float32 update."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from app.optim import TensorGaLoreAdamW, TensorGRaDAdamW, sparse
from app.optim.tensor_galore import decode_moments
from tests.optim.helpers import gen as _gen
from tests.optim.helpers import grads as _grads
from tests.optim.helpers import spectral_least_squares, train


def test_complex_moments_are_stored_as_bfloat16_real_and_imaginary_parts():
    shape = (6, 5, 4, 3)
    p, d = nn.Parameter(torch.zeros(shape, dtype=torch.complex64)), nn.Parameter(torch.zeros(7))
    opt = TensorGRaDAdamW(
        [{"params": [p], "galore": True}, {"params": [d]}], rank=0.4, sparse_ratio=0.1, moment_dtype="bfloat16"
    )
    p.grad, d.grad = torch.randn_like(p), torch.randn_like(d)
    opt.step()
    s = opt.state[p]
    core = tuple(s["exp_avg_sq"].shape)
    assert s["exp_avg"].dtype == torch.bfloat16 and tuple(s["exp_avg"].shape) == (*core, 2)
    assert s["exp_avg_sq"].dtype == torch.bfloat16
    k = s["sparse_index"].numel()
    assert s["sparse_exp_avg"].shape == (k, 2) and s["sparse_exp_avg_sq"].shape == (k,)
    assert opt.state[d]["exp_avg"].dtype == opt.state[d]["exp_avg_sq"].dtype == torch.bfloat16
    assert opt.state[d]["exp_avg"].shape == d.shape
    # factors, spectra and counters keep their precision
    assert s["factor_0"].dtype == torch.complex64 and s["spectrum_0"].dtype == torch.float32


def test_nearest_rounding_is_round_to_nearest_and_stochastic_rounding_is_unbiased():
    x = torch.randn(4096, generator=_gen(0))
    assert torch.equal(sparse.to_bfloat16(x), x.to(torch.bfloat16))
    down = x.to(torch.bfloat16).float()
    draws = torch.stack([sparse.to_bfloat16(x, _gen(s)).float() for s in range(400)])
    lo = torch.minimum(down, draws.min(0).values)
    hi = torch.maximum(down, draws.max(0).values)
    assert (draws.unique(dim=0).shape[0] > 1) and bool(((draws == lo) | (draws == hi)).all())  # two neighbours
    ulp = (x.abs() * 2.0**-7).clamp_min(1e-30)
    bias = (draws.mean(0) - x) / ulp
    assert bias.abs().mean() < 0.05  # unbiased: mean error far below the ulp
    z = torch.randn(50, dtype=torch.complex64, generator=_gen(1))
    assert torch.allclose(sparse.from_bfloat16(sparse.to_bfloat16(z, _gen(2)), torch.complex64), z, rtol=1e-2)


def test_stochastic_rounding_adds_the_generators_16_bits_below_the_kept_half():
    """The rounding's bits are pinned (a resumed or sharded run draws the same numbers): float32 bits plus 16
    random bits from the generator, the low half cut off, for real and complex (real, imaginary) values."""
    for x in (torch.randn(999, generator=_gen(3)), torch.randn(333, dtype=torch.complex64, generator=_gen(4))):
        r = torch.view_as_real(x) if x.is_complex() else x
        noise = torch.randint(0, 1 << 16, r.shape, generator=_gen(7), dtype=torch.int32)
        want = ((r.view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)
        assert torch.equal(sparse.to_bfloat16(x, _gen(7)).view(torch.int16), want.view(torch.int16))


def test_stochastic_rounding_keeps_a_slow_second_moment_average_moving_where_nearest_freezes_it():
    beta2, target, steps = 0.999, 0.5, 1000
    exact = target + (1.0 - target) * beta2**steps
    for rounding in ("nearest", "stochastic"):
        v = sparse.to_bfloat16(torch.ones(2000))
        for t in range(steps):
            gen = _gen(t) if rounding == "stochastic" else None
            v = sparse.to_bfloat16(v.float() * beta2 + (1 - beta2) * target, gen)
        if rounding == "nearest":
            assert torch.all(v.float() == 1.0)  # each step's change is below half an ulp
        else:
            assert v.float().mean().item() == pytest.approx(exact, rel=0.01)


def test_the_update_is_computed_in_float32_from_the_stored_bfloat16_moments():
    """A bf16-state step equals a float32-state step started from the decoded bf16 moments."""
    shape = (6, 5, 4, 3)
    grads = _grads(shape, 4)

    def make(p, moment_dtype):
        return TensorGRaDAdamW(
            [p], lr=1e-2, galore=True, rank=0.4, sparse_ratio=0.1, update_proj_gap=None, moment_dtype=moment_dtype
        )

    p = nn.Parameter(torch.randn(shape, dtype=torch.complex64, generator=_gen(0)))
    low = make(p, "bfloat16")
    for g in grads[:3]:
        p.grad = g.clone()
        low.step()
    q = nn.Parameter(p.detach().clone())
    full = make(q, "param")
    full.load_state_dict(copy.deepcopy(low.state_dict()))  # no tensor shared with `low`
    full.param_groups[0]["moment_dtype"] = "param"  # the loaded groups say bfloat16; a group key switches it
    decode_moments(q, full.state[q])
    assert full.state[q]["exp_avg"].dtype == torch.complex64
    p.grad, q.grad = grads[3].clone(), grads[3].clone()
    low.step()
    full.step()
    assert torch.equal(p, q)
    assert full.state[q]["exp_avg"].dtype == torch.complex64  # moment_dtype="param" keeps float32 from now on


def test_load_state_dict_keeps_bfloat16_moments_of_real_parameters():
    # torch.optim.Optimizer would cast floating state to a real parameter's dtype (float32) on load
    p = nn.Parameter(torch.randn(5, 4))
    opt = TensorGRaDAdamW([p], lr=1e-2, moment_dtype="bfloat16")
    p.grad = torch.randn_like(p)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q = nn.Parameter(p.detach().clone())
    other = TensorGRaDAdamW([q], lr=1e-2, moment_dtype="bfloat16")
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.state[q]["exp_avg"].dtype == other.state[q]["exp_avg_sq"].dtype == torch.bfloat16
    assert other.state[q]["step"].dtype == torch.float32


@pytest.mark.parametrize(
    "cls, kw",
    [(TensorGRaDAdamW, dict(sparse_ratio=0.05)), (TensorGaLoreAdamW, {})],
    ids=["tensorgrad", "tensor_galore"],
)
def test_bfloat16_state_converges_on_a_complex_least_squares_problem_like_float32(cls, kw):
    """bfloat16 moments with stochastic rounding, with and without a sparse part (plain Tensor-GaLore)."""
    final = {}
    for moment_dtype in ("param", "bfloat16"):
        w_true, loss_fn = spectral_least_squares((8, 8, 4, 3))
        w = nn.Parameter(torch.zeros_like(w_true))
        opt = cls([w], lr=0.05, galore=True, rank=0.5, update_proj_gap=20, moment_dtype=moment_dtype, **kw)
        train(opt, w, loss_fn, 150)
        final[moment_dtype] = float((w.detach() - w_true).norm() / w_true.norm())
        assert (opt.state[w]["exp_avg"].dtype == torch.bfloat16) == (moment_dtype == "bfloat16")
    assert final["param"] < 0.3
    assert final["bfloat16"] < 1.5 * final["param"] + 0.02
