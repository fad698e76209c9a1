"""TensorGRaDAdamW: low-rank + sparse composition, sparse selection, exact update, state and byte accounting."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from app.memory import adamw_state_bytes
from app.memory_estimate import predict_state_bytes
from app.optim import TensorGaLoreAdamW, TensorGRaDAdamW, sparse, tucker
from app.optim.layout import projection_layout
from app.optim.schema import factors_from_state
from tests.optim.helpers import gen as _gen
from tests.optim.helpers import grads as _grads
from tests.optim.helpers import param as _param
from tests.optim.helpers import reference_optimizer
from tests.optim.helpers import run as _run


def _factors(opt, p, rank):
    return factors_from_state(opt.state[p], projection_layout(p.shape, rank))


# ------------------------------------------------------------------------------------ composition


def _planted(shape, ranks, n_spikes, spike, seed=0):
    """A Tucker tensor of multilinear rank ``ranks`` plus ``n_spikes`` entries of modulus ``spike * max|L|``."""
    g = _gen(seed)
    core = torch.randn(ranks, dtype=torch.complex64, generator=g)
    fs = [
        torch.linalg.qr(torch.randn(n, r, dtype=torch.complex64, generator=g))[0]
        for n, r in zip(shape, ranks, strict=True)
    ]
    low = tucker.project_back(core, fs)
    pos = torch.randperm(low.numel(), generator=g)[:n_spikes]
    phase = torch.exp(2j * math.pi * torch.rand(n_spikes, generator=g))
    spikes = torch.zeros(low.numel(), dtype=torch.complex64)
    spikes[pos] = spike * low.abs().max() * phase
    return low + spikes.reshape(shape)


@pytest.mark.parametrize("composition", ["lowrank_first", "sparse_first"])
def test_planted_lowrank_plus_spikes_is_reconstructed_far_better_by_the_composition_than_by_either_part(
    composition,
):
    shape, ranks, n_spikes = (12, 10, 8, 6), (3, 3, 2, 2), 20
    g = _planted(shape, ranks, n_spikes, spike=3.0)  # the spikes hold about half of the energy
    ratio = n_spikes / g.numel()
    p = nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    opt = TensorGRaDAdamW([p], lr=0.0, galore=True, rank=ranks, sparse_ratio=ratio, composition=composition)
    p.grad = g.clone()
    opt.step()
    fs, index = _factors(opt, p, ranks), opt.state[p]["sparse_index"]
    if composition == "lowrank_first":
        low = tucker.project_back(tucker.project(g, fs), fs)
        both = low + sparse.scatter(sparse.gather(g - low, index), index, shape)
    else:
        s = sparse.scatter(sparse.gather(g, index), index, shape)
        both = s + tucker.project_back(tucker.project(g - s, fs), fs)

    galore = TensorGaLoreAdamW([q := nn.Parameter(torch.zeros(shape, dtype=torch.complex64))], galore=True, rank=ranks)
    q.grad = g.clone()
    galore.step()
    fq = _factors(galore, q, ranks)
    low_only = tucker.project_back(tucker.project(g, fq), fq)
    top = sparse.topk_indices(g, index.numel())
    sparse_only = sparse.scatter(sparse.gather(g, top), top, shape)

    def err(x):
        return float((x - g).norm() / g.norm())

    assert err(low_only) > 0.5 and err(sparse_only) > 0.5
    assert err(both) < 0.2 * min(err(low_only), err(sparse_only))


def test_sparse_ratio_zero_gives_tensor_galore_bit_for_bit():
    shape = (6, 5, 4, 3)
    grads = _grads(shape, 7)
    out = []
    for cls, extra in ((TensorGaLoreAdamW, {}), (TensorGRaDAdamW, {"sparse_ratio": 0.0})):
        p = _param(shape)
        opt = cls([p], lr=1e-2, weight_decay=0.1, galore=True, rank=0.4, update_proj_gap=3, **extra)
        _run(opt, [p], [grads])
        out.append(p.detach().clone())
        assert not any(k.startswith("sparse") for k in opt.state[p])
    assert torch.equal(out[0], out[1])


def _mode_apply(x, mats):
    for k, m in enumerate(mats):
        x = np.moveaxis(np.tensordot(m, np.moveaxis(x, k, 0), axes=1), 0, k)
    return x


@pytest.mark.parametrize("composition", ["lowrank_first", "sparse_first"])
def test_update_is_the_sum_of_the_backprojected_and_the_weighted_sparse_adam_directions(composition):
    """Against an independent float64 numpy TensorGRaD with the optimizer's (fixed) factors and positions."""
    shape, n_steps = (6, 5, 4, 3), 6
    hp = dict(lr=3e-2, b1=0.8, b2=0.95, eps=1e-6, wd=0.1, scale=0.5, sparse_scale=2.5)
    p = _param(shape, torch.complex128)
    w0 = p.detach().numpy().copy()
    grads = _grads(shape, n_steps, torch.complex128)
    opt = reference_optimizer(
        TensorGRaDAdamW, p, hp, rank=0.3, sparse_scale=hp["sparse_scale"], sparse_ratio=0.1, composition=composition
    )
    assert opt.param_groups[0]["complex_norm"] == "component"  # the default: sqrt(V_hat / 2) for complex
    _run(opt, [p], [grads])
    us = [u.numpy() for u in _factors(opt, p, 0.3)]
    idx = opt.state[p]["sparse_index"].numpy()

    w, m, v, ms, vs = w0.copy(), 0.0, 0.0, 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        g = g.numpy()
        if composition == "sparse_first":
            s = g.reshape(-1)[idx]
            resid = g.copy().reshape(-1)
            resid[idx] = 0
            r = _mode_apply(resid.reshape(shape), [u.conj().T for u in us])
        else:
            r = _mode_apply(g, [u.conj().T for u in us])
            s = (g - _mode_apply(r, us)).reshape(-1)[idx]
        m, ms = hp["b1"] * m + (1 - hp["b1"]) * r, hp["b1"] * ms + (1 - hp["b1"]) * s
        v = hp["b2"] * v + (1 - hp["b2"]) * (r * r.conj()).real
        vs = hp["b2"] * vs + (1 - hp["b2"]) * (s * s.conj()).real
        c1, c2 = 1 - hp["b1"] ** t, 1 - hp["b2"] ** t
        n_low = _mode_apply((m / c1) / (np.sqrt(v / c2 / 2) + hp["eps"]), us)
        n_sparse = np.zeros(w.size, dtype=w.dtype)
        n_sparse[idx] = (ms / c1) / (np.sqrt(vs / c2 / 2) + hp["eps"])
        w = w * (1 - hp["lr"] * hp["wd"]) - hp["lr"] * (
            hp["scale"] * n_low + hp["sparse_scale"] * n_sparse.reshape(shape)
        )
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------ selection


def test_topk_indices_are_exactly_the_largest_entries_sorted_and_int32():
    x = torch.randn(7, 6, 5, dtype=torch.complex64, generator=_gen(3))
    k = 23
    idx = sparse.topk_indices(x, k)
    expected = torch.argsort(x.abs().reshape(-1), descending=True)[:k].sort().values
    assert idx.dtype == torch.int32
    assert torch.equal(idx.to(torch.int64), expected)
    kept = x.abs().reshape(-1)[idx.long()]
    rest = np.delete(x.abs().reshape(-1).numpy(), idx.numpy())
    assert kept.min() > rest.max()


@pytest.mark.parametrize("composition", ["lowrank_first", "sparse_first"])
def test_optimizer_topk_keeps_the_largest_entries_of_what_it_sparsifies(composition):
    shape, rank = (8, 7, 6, 4), 0.3
    p = _param(shape)
    g = torch.randn(shape, dtype=torch.complex64, generator=_gen(5))
    opt = TensorGRaDAdamW([p], lr=1e-3, galore=True, rank=rank, sparse_ratio=0.04, composition=composition)
    p.grad = g.clone()
    opt.step()
    index = opt.state[p]["sparse_index"]
    if composition == "sparse_first":
        target = g
    else:
        fs = _factors(opt, p, rank)
        target = g - tucker.project_back(tucker.project(g, fs), fs)
    k = sparse.sparse_count(0.04, g.numel())
    assert index.numel() == k == round(0.04 * g.numel())
    assert torch.equal(index, sparse.topk_indices(target, k))
    assert torch.equal(p.grad, g)  # the gradient itself is never modified


def _randk_opt(p, seed=0, gap=3, **kw):
    return TensorGRaDAdamW(
        [p], lr=1e-3, galore=True, rank=0.3, sparse_type="randk", sparse_ratio=0.1, update_proj_gap=gap, seed=seed, **kw
    )


def test_randk_is_identical_across_instances_with_the_same_seed_and_step_whatever_the_gradients():
    shape = (8, 7, 6, 4)
    pa, pb = _param(shape, seed=0), _param(shape, seed=1)
    a, b = _randk_opt(pa), _randk_opt(pb)
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    seen = []
    for t, (ga, gb) in enumerate(zip(_grads(shape, 7, seed=2), _grads(shape, 7, seed=3), strict=True)):
        pa.grad, pb.grad = ga, gb
        a.step()
        b.step()
        ia, ib = a.state[pa]["sparse_index"], b.state[pb]["sparse_index"]
        assert torch.equal(ia, ib), f"step {t}"
        seen.append(ia.clone())
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is never used
    # refreshed with the subspace (steps 0, 3, 6), a new draw each time, fixed in between
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[3], seen[5])
    assert not torch.equal(seen[0], seen[3]) and not torch.equal(seen[3], seen[6])
    # uniform: the positions spread over the whole tensor
    assert seen[0].unique().numel() == seen[0].numel() and seen[0].max() > 0.9 * pa.numel()


def test_randk_depends_on_the_seed_and_on_the_parameter_position():
    shape = (8, 7, 6, 4)
    p, q = _param(shape), _param(shape)
    p.grad, q.grad = _grads(shape, 2)
    opt = TensorGRaDAdamW(
        [{"params": [p], "galore": True}, {"params": [q], "galore": True}],
        lr=1e-3,
        rank=0.3,
        sparse_type="randk",
        sparse_ratio=0.1,
    )
    opt.step()
    assert not torch.equal(opt.state[p]["sparse_index"], opt.state[q]["sparse_index"])
    r = _param(shape)
    r.grad = p.grad
    other_seed = _randk_opt(r, seed=1)
    other_seed.step()
    assert not torch.equal(opt.state[p]["sparse_index"], other_seed.state[r]["sparse_index"])


# ------------------------------------------------------------------------------------ state


@pytest.mark.parametrize(
    "options",
    [
        dict(sparse_type="topk", composition="lowrank_first"),
        dict(sparse_type="randk", composition="sparse_first"),
        dict(sparse_type="randk", composition="lowrank_first", refresh_moments="project"),
        dict(sparse_type="topk", composition="sparse_first", moment_dtype="bfloat16"),
    ],
    ids=["topk-lowrank_first", "randk-sparse_first", "randk-project", "topk-sparse_first-bf16"],
)
def test_state_round_trips_with_weights_only_and_the_next_steps_are_bit_identical(options):
    shape = (6, 5, 4, 3)
    grads = _grads(shape, 9)
    dense_grads = _grads((5,), 9, torch.float32, seed=7)

    def make(params):
        return TensorGRaDAdamW(
            [{"params": params[:1], "galore": True}, {"params": params[1:]}],
            lr=1e-2,
            weight_decay=0.01,
            rank=0.4,
            sparse_ratio=0.1,
            update_proj_gap=3,
            **options,
        )

    p, d = _param(shape), _param((5,), torch.float32, seed=4)
    ref = make([p, d])
    _run(ref, [p, d], [grads[:5], dense_grads[:5]])
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    p2, d2 = nn.Parameter(p.detach().clone()), nn.Parameter(d.detach().clone())
    resumed = make([p2, d2])
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    state = resumed.state[p2]
    assert state["sparse_index"].dtype == torch.int32
    expect = torch.bfloat16 if options.get("moment_dtype") == "bfloat16" else torch.complex64
    assert state["sparse_exp_avg"].dtype == state["exp_avg"].dtype == expect
    _run(ref, [p, d], [grads[5:], dense_grads[5:]])  # steps 5..8 include a refresh (step 6): new positions
    _run(resumed, [p2, d2], [grads[5:], dense_grads[5:]])
    assert torch.equal(p, p2) and torch.equal(d, d2)
    for key, value in ref.state[p].items():
        assert torch.equal(value, resumed.state[p2][key]), key


def test_a_skipped_nonfinite_step_changes_no_sparse_state():
    shape = (6, 5, 4, 3)
    p = _param(shape)
    opt = TensorGRaDAdamW([p], lr=1e-2, galore=True, rank=0.4, composition="sparse_first", nonfinite="skip")
    _run(opt, [p], [_grads(shape, 2)])
    before = {k: v.clone() for k, v in opt.state[p].items()}
    w = p.detach().clone()
    bad = _grads(shape, 1, seed=9)[0]
    bad.view(-1)[opt.state[p]["sparse_index"][0]] = float("inf")  # at a kept position: only S sees it directly
    p.grad = bad
    with pytest.warns(RuntimeWarning, match="skipped a step"):
        opt.step()
    assert torch.equal(p, w)
    for key, value in before.items():
        if key != "nonfinite_skips":
            assert torch.equal(opt.state[p][key], value), key


def test_invalid_options_raise_with_the_value_in_the_message():
    p = _param((4, 4, 3, 2))
    for kwargs, err, text in [
        (dict(sparse_ratio=1.5), ValueError, "sparse_ratio=1.5"),
        (dict(sparse_ratio="0.1"), TypeError, "sparse_ratio='0.1'"),
        (dict(sparse_type="random"), ValueError, "sparse_type='random'"),
        (dict(composition="sum"), ValueError, "composition='sum'"),
        (dict(sparse_scale=-1.0), ValueError, "sparse_scale=-1.0"),
        (dict(seed=-3), ValueError, "seed=-3"),
        (dict(moment_dtype="float16"), ValueError, "moment_dtype='float16'"),
        (dict(moment_rounding="up"), ValueError, "moment_rounding='up'"),
    ]:
        with pytest.raises(err, match=text):
            TensorGRaDAdamW([p], galore=True, **kwargs)
    with pytest.raises(ValueError, match="residual='scaled' with sparse_ratio=0.05"):
        TensorGRaDAdamW([p], galore=True, residual="scaled")
    TensorGRaDAdamW([p], galore=True, residual="scaled", sparse_ratio=0.0)  # no sparse part: allowed
    with pytest.raises(ValueError, match=r"param_groups\[1\].*sparse_ratio=-0.1"):
        TensorGRaDAdamW([{"params": [p]}, {"params": [_param((3,))], "sparse_ratio": -0.1}])
    opt = TensorGRaDAdamW([p], galore=True)
    with pytest.raises(ValueError, match="sparse_type='x'"):
        opt.add_param_group({"params": [_param((3,))], "sparse_type": "x"})
    assert opt.param_groups[0]["sparse_ratio"] == 0.05 and opt.defaults["composition"] == "lowrank_first"
    per_group = TensorGRaDAdamW([{"params": [p], "galore": True, "sparse_ratio": 0.1}], sparse_type="randk")
    assert per_group.param_groups[0]["sparse_ratio"] == 0.1 and per_group.param_groups[0]["sparse_type"] == "randk"


def test_subspace_stats_report_the_sparse_part():
    shape = (6, 5, 4, 3)
    p = _param(shape)
    opt = TensorGRaDAdamW([p], lr=1e-2, galore=True, rank=0.4, sparse_ratio=0.1)
    _run(opt, [p], [_grads(shape, 1)])
    (entry,) = opt.subspace_stats()
    assert entry["sparse_numel"] == sparse.sparse_count(0.1, p.numel())
    assert 0.0 < entry["sparse_energy"] < 1.0
    assert entry["core_numel"] == opt.state[p]["exp_avg_sq"].numel()


# ------------------------------------------------------------------------------------ bytes


@pytest.mark.parametrize("moment_dtype", ["param", "bfloat16"])
def test_byte_accounting_matches_a_hand_count(moment_dtype):
    shape, ranks = (8, 8, 6, 4), (4, 4, 3, 2)
    p, d = _param(shape), _param((10,), torch.float32)
    opt = TensorGRaDAdamW(
        [{"params": [p], "galore": True}, {"params": [d]}], rank=ranks, sparse_ratio=0.05, moment_dtype=moment_dtype
    )
    predicted = predict_state_bytes(opt)
    p.grad, d.grad = torch.randn_like(p), torch.randn_like(d)
    opt.step()
    k = 77  # round(0.05 * 1536)
    core = 4 * 4 * 3 * 2
    factors = (8 * 4 + 8 * 4 + 6 * 3 + 4 * 2) * 8  # complex64
    spectra = (8 + 8 + 6 + 4) * 4
    counters = 4 + 4 + 8 + 8  # step, energy, last_refresh, refreshes
    if moment_dtype == "param":
        moments, sparse_entry, dense = core * (8 + 4), 8 + 4 + 4, 4 + 10 * (4 + 4)
    else:  # bfloat16: complex first moment = 2 x 2 bytes, real second moment 2 bytes
        moments, sparse_entry, dense = core * (4 + 2), 4 + 2 + 4, 4 + 10 * (2 + 2)
    hand = moments + factors + spectra + counters + k * sparse_entry + 4 + dense  # + 4: sparse_energy
    assert opt.state[p]["sparse_index"].numel() == k
    assert opt.state_bytes()["total"] == hand == predicted


def test_state_at_rank_0_2_plus_sparse_0_05_is_below_30_percent_of_adamw_for_a_spectral_weight():
    shape = (32, 32, 16, 9)  # the default FNO's spectral weight
    p = nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    q = nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    ours = TensorGRaDAdamW([p], galore=True, rank=0.2, sparse_ratio=0.05)
    adamw = torch.optim.AdamW([q])
    p.grad = q.grad = torch.randn(shape, dtype=torch.complex64, generator=_gen(0))
    ours.step()
    adamw.step()
    measured_adamw = sum(v.numel() * v.element_size() for v in adamw.state[q].values())
    assert measured_adamw == adamw_state_bytes([q])
    assert ours.state_bytes()["total"] < 0.30 * measured_adamw


def test_predicted_state_bytes_match_measured_for_an_fno():
    from app.models import FNO
    from app.param_groups import split_param_groups

    torch.manual_seed(0)
    m = FNO(n_modes=(8, 8), hidden_channels=16, n_layers=2)
    for kw in (dict(), dict(moment_dtype="bfloat16", sparse_type="randk", composition="sparse_first")):
        opt = TensorGRaDAdamW(split_param_groups(m), **kw)
        predicted = predict_state_bytes(opt)
        m.zero_grad()
        m(torch.randn(2, 1, 16, 16)).pow(2).mean().backward()
        opt.step()
        assert predicted == opt.state_bytes()["total"]


# ------------------------------------------------------------------------------------ benchmark script


def test_benchmark_builds_every_row_from_its_config_and_writes_only_its_section(tmp_path):
    from bench import tensorgrad_bench as bench

    p = nn.Parameter(torch.zeros(4, 4, 3, 2, dtype=torch.complex64))
    for name, (config, overrides) in bench.ROWS.items():
        make, kwargs = bench.optimizer_factory(config, overrides)
        opt = make([{"params": [p], "galore": True}])
        expected = (
            torch.optim.AdamW if name == "AdamW" else (TensorGaLoreAdamW if "GaLore" in name else TensorGRaDAdamW)
        )

        def plain(v):  # YAML lists are stored as tuples (betas, proj_modes)
            return tuple(v) if isinstance(v, list) else v

        assert type(opt) is expected
        assert all(plain(opt.param_groups[0][k]) == plain(v) for k, v in kwargs.items()), name
    weight = {
        n: {"bytes": 100, "predicted": 100, "step": 1.0, "refresh": None if n == "AdamW" else 2.0} for n in bench.ROWS
    }
    errors = {n: [0.1, 0.2, 0.3] for n in bench.ROWS}
    body = bench.render(weight, (errors, "data", 60.0), "cmd", 3, 2)
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    bench.write_section(path, body)
    bench.write_section(path, body)
    text = path.read_text()
    assert "keep me" in text and text.count(bench.START) == 1 and "| TensorGRaD, bf16 state |" in text


@pytest.mark.gpu
def test_randk_positions_on_cuda_equal_those_on_cpu_and_bfloat16_state_steps_there():
    shape = (8, 7, 6, 4)
    out = {}
    for device in ("cpu", "cuda"):
        p = nn.Parameter(torch.zeros(shape, dtype=torch.complex64, device=device))
        opt = _randk_opt(p, moment_dtype="bfloat16")
        for g in _grads(shape, 4):
            p.grad = g.to(device)
            opt.step()
        out[device] = opt.state[p]
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16 and opt.state[p]["exp_avg"].device == p.device
    assert torch.equal(out["cpu"]["sparse_index"], out["cuda"]["sparse_index"].cpu())
