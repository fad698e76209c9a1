"""The state schema (``app.optim.schema``) against the real state, for every combination of options: a new state
key, shape or dtype that the schema does not describe fails here (and so cannot break the memory estimate, the
subspace callback's byte budget or the benchmarks, which all read the schema)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from app.optim import TensorGaLoreAdamW, TensorGRaDAdamW, group_param_schema, predict_state_bytes

# (shape, dtype, group options): Tucker on every mode, Tucker on the channel modes, the matrix path of a tensor,
# a 2-D real weight (matrix path), and full-tensor parameters of a projected and of an unprojected group
PARAMS = [
    ((6, 5, 4, 3), torch.complex64, {"galore": True}),
    ((6, 5, 4, 3), torch.complex64, {"galore": True, "proj_modes": (0, 1)}),
    ((6, 5, 4), torch.complex64, {"galore": True, "proj": "matrix", "rollup": 2}),
    ((8, 6), torch.float32, {"galore": True}),
    ((7,), torch.float32, {"galore": True}),
    ((4, 3), torch.complex64, {"galore": False}),
    ((5,), torch.float64, {"galore": False}),
]

OPTIONS = [
    dict(sparse_ratio=ratio, composition=comp, moment_dtype=md, residual=res, solver=solver)
    for ratio, comp, md, res, solver in itertools.product(
        [0.0, 0.1], ["lowrank_first", "sparse_first"], ["param", "bfloat16"], ["none", "scaled"], ["hosvd", "hooi"]
    )
    if not (ratio > 0 and res == "scaled") and not (ratio == 0 and comp == "sparse_first")
]


def _entries(opt, p, refreshes, skipped=False):
    group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
    return {
        e.key: (e.shape, e.dtype, e.nbytes) for e in group_param_schema(p, group, refreshes=refreshes, skipped=skipped)
    }


def _real(state):
    return {k: (tuple(v.shape), v.dtype, v.numel() * v.element_size()) for k, v in state.items()}


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_schema_matches_the_real_state_after_two_steps_and_one_refresh(options):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, dtype=dtype)) for shape, dtype, _ in PARAMS]
    groups = [{"params": [p], **extra} for p, (_, _, extra) in zip(params, PARAMS, strict=True)]
    opt = TensorGaLoreAdamW(groups, rank=0.5, update_proj_gap=None, **options)
    for step, refreshes in ((1, 1), (2, 1), (3, 2)):  # the third step is a requested refresh
        for p in params:
            p.grad = torch.randn_like(p)
        if step == 3:
            opt.request_refresh()
        opt.step()
        for p in params:
            assert _real(opt.state[p]) == _entries(opt, p, refreshes), (step, tuple(p.shape))
        assert opt.state_bytes()["total"] == predict_state_bytes(opt.param_groups, refreshes)
        assert opt.state_bytes()["groups"] == predict_state_bytes(opt.param_groups, refreshes, per_group=True)


@pytest.mark.parametrize("moment_dtype", ["param", "bfloat16"])
def test_schema_counts_a_skipped_step_and_the_tensorgrad_preset(moment_dtype):
    p = nn.Parameter(torch.randn(6, 5, 4, dtype=torch.complex64))
    opt = TensorGRaDAdamW([p], galore=True, nonfinite="skip", moment_dtype=moment_dtype)
    p.grad = torch.randn_like(p)
    opt.step()
    p.grad = torch.full_like(p, float("nan"))
    with pytest.warns(RuntimeWarning, match="skipped a step"):
        opt.step()
    assert _real(opt.state[p]) == _entries(opt, p, refreshes=1, skipped=True)
    assert "sparse_index" in opt.state[p]  # the preset's sparse part is part of the schema
