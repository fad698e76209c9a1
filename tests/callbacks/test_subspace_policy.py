"""SubspaceScheduler's policy against a plain TensorGaLoreAdamW (no Trainer): lazy refresh, automatic ranks,
byte budget, the optimizer's gradient spectra, and the callback's saved state."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import pytest
import torch

from app.optim import TensorGaLoreAdamW, tucker
from callbacks.schedules import RankSchedule
from callbacks.subspace import LayerSpectra, SubspaceScheduler, allocate_ranks, energy_rank

_OPTIONS = dict(moment_dtype="param", residual="none", sparse_ratio=0.0)  # what the state schema reads


def _orthonormal(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.complex64, generator=g))
    return q


def _planted(shape, ranks, g, noise=0.0, factors=None, spread=None):
    """A complex tensor ``core x_k U_k`` of multilinear rank ``ranks`` plus Gaussian noise (relative std)."""
    factors = factors or [_orthonormal(n, r, g) for n, r in zip(shape, ranks, strict=True)]
    core = torch.randn(*ranks, dtype=torch.complex64, generator=g)
    if spread is not None:  # scale the core's entries: energy concentrated on the leading ones
        core = core * spread
    t = tucker.project_back(core, factors)
    if noise:
        t = t + noise * t.abs().pow(2).mean().sqrt() * torch.randn(*shape, dtype=torch.complex64, generator=g)
    return t


class _Driver:
    """Runs the callback's hooks around ``opt.step()`` the way Lightning's loop does, with a stand-in trainer."""

    def __init__(self, cb: SubspaceScheduler, opt, log_every_n_steps: int = 50):
        self.cb, self.opt = cb, opt
        self.trainer = SimpleNamespace(
            global_step=0, current_epoch=0, log_every_n_steps=log_every_n_steps, loggers=[], optimizers=[opt]
        )

    def step(self, grads) -> None:
        for p, grad in grads.items():
            p.grad = grad
        self.cb.on_before_optimizer_step(self.trainer, None, self.opt)
        self.opt.step()
        self.trainer.global_step += 1
        self.cb.on_train_batch_end(self.trainer, None, None, None, 0)


def _refreshes(opt) -> list[int]:
    return [s["refreshes"] for s in opt.subspace_stats()]


def test_lazy_refresh_fires_when_the_gradient_leaves_the_subspace_and_not_before():
    g = torch.Generator().manual_seed(0)
    shape, r = (8, 8, 6, 4), 2
    qs = [_orthonormal(n, 2 * r, g) for n in shape]
    inside = [q[:, :r] for q in qs]
    outside = [q[:, r:] for q in qs]  # orthogonal to the first subspace in every mode
    p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True, "name": "w"}], lr=1e-3, rank=r)
    cb = SubspaceScheduler(refresh="lazy", check_every=4, lazy_threshold=0.5, min_gap=1)
    drive = _Driver(cb, opt)
    history = []
    for step in range(24):
        factors = inside if step < 10 else outside  # the gradient moves to another subspace at step 10
        drive.step({p: _planted(shape, (r,) * 4, g, noise=1e-3, factors=factors)})
        history.append((step, opt.subspace_stats()[0]["last_refresh"]))
    refresh_steps = sorted({last for _, last in history})
    # first step, then the first check (every 4 steps) after the gradient left: step 12; none at checks 4 and 8,
    # and none after 12 because the new subspace captures the new gradient
    assert refresh_steps == [0, 12]
    assert _refreshes(opt) == [2]
    assert cb.last_refresh == {"w": 12} and cb.refresh_energy["w"] > 0.99


def test_lazy_refresh_honours_max_gap_without_measuring():
    g = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.zeros(6, 5, 4, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], rank=2)
    cb = SubspaceScheduler(refresh="lazy", check_every=1000, max_gap=5)
    drive = _Driver(cb, opt)
    for _ in range(11):
        drive.step({p: torch.randn(p.shape, dtype=p.dtype, generator=g)})
    assert _refreshes(opt) == [3]  # steps 0, 5, 10
    assert cb.last_refresh == {"group0": 10}


def test_diagnostics_are_read_back_only_at_refreshes_and_lazy_checks():
    p = torch.nn.Parameter(torch.zeros(6, 5, 4, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], rank=2)
    calls = []
    for method in ("subspace_stats", "captured_energy_now", "gradient_spectra"):
        original = getattr(opt, method)
        setattr(
            opt,
            method,
            lambda *a, _m=method, _f=original, **k: calls.append((drive.trainer.global_step, _m)) or _f(*a, **k),
        )
    drive = _Driver(SubspaceScheduler(refresh="lazy", check_every=4, max_gap=6, lazy_threshold=0.01), opt)
    for _ in range(9):
        drive.step({p: torch.randn_like(p)})
    # refreshes at 0 (first) and 6 (max_gap): stats read after their steps; lazy checks at 4 and 8
    assert calls == [
        (1, "subspace_stats"),
        (4, "captured_energy_now"),
        (7, "subspace_stats"),
        (8, "captured_energy_now"),
    ]


def test_callback_owns_the_cadence_fixed_gap():
    p = torch.nn.Parameter(torch.zeros(6, 5, 4, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], rank=2, update_proj_gap=2)
    drive = _Driver(SubspaceScheduler(refresh="fixed", gap=5), opt)
    for _ in range(11):
        drive.step({p: torch.randn_like(p)})
    assert opt.param_groups[0]["update_proj_gap"] == 2  # the group's own option is left as configured
    assert opt.policy_attached(0)  # the callback's control: not saved in the state dict
    assert _refreshes(opt) == [3]  # steps 0, 5, 10, not the optimizer's own gap of 2


def test_fixed_policy_reproduces_the_optimizers_own_cadence_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(6, 5, 4, dtype=torch.complex64, generator=g) for _ in range(12)]

    def run(with_callback: bool) -> torch.Tensor:
        p = torch.nn.Parameter(torch.ones(6, 5, 4, dtype=torch.complex64))
        opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], lr=0.1, rank=2, update_proj_gap=5)
        drive = _Driver(SubspaceScheduler(gap=5), opt)
        for grad in grads:
            if with_callback:
                drive.step({p: grad})
            else:
                p.grad = grad
                opt.step()
        return p.detach()

    assert torch.equal(run(True), run(False))


def test_rank_schedule_applies_at_the_next_refresh_or_at_once_when_asked():
    def run(now: bool) -> list[tuple]:
        p = torch.nn.Parameter(torch.zeros(8, 8, 6, dtype=torch.complex64))
        opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], rank=0.5)
        sched = RankSchedule("step", start=6, end=3, milestones=[3])
        drive = _Driver(SubspaceScheduler(gap=5, rank=sched, refresh_on_rank_change=now), opt)
        ranks = []
        for _ in range(7):
            drive.step({p: torch.randn_like(p)})
            ranks.append(opt.subspace_stats()[0]["ranks"])
        return ranks

    assert run(now=False) == [(6, 6, 6)] * 5 + [(3, 3, 3)] * 2  # rank 3 from step 3, applied at the refresh at 5
    assert run(now=True) == [(6, 6, 6)] * 3 + [(3, 3, 3)] * 4


@pytest.mark.parametrize(
    "proj, planted, expected", [("tucker", (3, 2, 4, 2), (3, 2, 4, 2)), ("matrix", (3, 2, 4, 2), (3, None))]
)
def test_auto_rank_picks_the_planted_ranks_of_a_noisy_low_rank_gradient(proj, planted, expected):
    g = torch.Generator().manual_seed(0)
    shape = (12, 10, 8, 6)
    p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True, "name": "w"}], rank=0.5, proj=proj)
    drive = _Driver(SubspaceScheduler(gap=100, auto_rank=True, epsilon=0.01), opt)
    drive.step({p: _planted(shape, planted, g, noise=0.01)})
    (stats,) = opt.subspace_stats()
    assert stats["ranks"] == expected
    assert stats["energy"] > 0.99


def test_auto_rank_and_rank_schedules_respect_projected_modes():
    """With proj_modes=[0, 1] the callback sets ranks on the channel modes only; the others stay unprojected."""
    g = torch.Generator().manual_seed(0)
    shape = (12, 10, 8, 6)
    p = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], rank=0.5, proj_modes=[0, 1])
    drive = _Driver(SubspaceScheduler(gap=100, auto_rank=True, epsilon=0.01), opt)
    drive.step({p: _planted(shape, (3, 2, 4, 2), g, noise=0.01)})
    (stats,) = opt.subspace_stats()
    assert stats["ranks"] == (3, 2, None, None)
    assert opt.param_groups[0]["rank"] == [3, 2, None, None]

    q = torch.nn.Parameter(torch.zeros(8, 8, 6, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [q], "galore": True}], rank=0.5, proj_modes=[0, 1])
    drive = _Driver(SubspaceScheduler(gap=2, rank=RankSchedule("step", start=0.5, end=0.25, milestones=[1])), opt)
    ranks = []
    for _ in range(3):
        drive.step({q: torch.randn_like(q)})
        ranks.append(opt.subspace_stats()[0]["ranks"])
    assert ranks == [(6, 5, None), (6, 5, None), (4, 4, None)]  # 25% of (8, 8) from the refresh at step 2


def test_auto_rank_is_capped_by_the_rank_schedule():
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(12, 10, 8, 6, dtype=torch.complex64))
    opt = TensorGaLoreAdamW([{"params": [p], "galore": True}], rank=0.5)
    drive = _Driver(SubspaceScheduler(auto_rank=True, rank=RankSchedule(start=[2, 2, 8, 8])), opt)
    drive.step({p: _planted(p.shape, (3, 2, 4, 2), g, noise=0.01)})
    assert opt.subspace_stats()[0]["ranks"] == (2, 2, 4, 2)


def _two_layer_problem(g):
    """Layer "peaked": about 98.5% of its energy in one component, the rest spread over planted ranks (3, 3, 3, 2);
    layer "flat": the same planted ranks with an even spread. Plus a real "other" parameter."""
    shape, ranks = (8, 8, 6, 4), (3, 3, 3, 2)
    spread = torch.full(ranks, 0.05)
    spread[0, 0, 0, 0] = 3.0
    peaked = _planted(shape, ranks, g, spread=spread)
    flat = _planted(shape, ranks, g)
    w_peaked = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    w_flat = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    bias = torch.nn.Parameter(torch.zeros(10))
    groups = [
        {"params": [w_peaked], "galore": True, "name": "peaked"},
        {"params": [w_flat], "galore": True, "name": "flat"},
        {"params": [bias], "galore": False, "name": "other"},
    ]
    return groups, {w_peaked: peaked, w_flat: flat, bias: torch.randn(10, generator=g)}


def test_byte_budget_is_respected_and_spent_where_it_captures_the_most_energy():
    g = torch.Generator().manual_seed(0)
    groups, grads = _two_layer_problem(g)
    unconstrained = TensorGaLoreAdamW([dict(x) for x in groups], rank=0.5)
    drive = _Driver(SubspaceScheduler(gap=1, auto_rank=True, epsilon=1e-3), unconstrained)
    drive.step(grads)
    drive.step(grads)  # a second refresh adds the drift statistics to the state
    assert [s["ranks"] for s in unconstrained.subspace_stats()] == [(3, 3, 3, 2), (3, 3, 3, 2)]
    full = unconstrained.state_bytes()["total"]

    budget = full - 300  # not enough for both layers at their planted ranks
    opt = TensorGaLoreAdamW([dict(x, params=list(x["params"])) for x in groups], rank=0.5)
    drive = _Driver(SubspaceScheduler(gap=1, auto_rank=True, epsilon=1e-3, budget_bytes=budget), opt)
    for _ in range(3):
        drive.step(grads)
        assert opt.state_bytes()["total"] <= budget
    peaked, flat = (s["ranks"] for s in opt.subspace_stats())
    assert flat == (3, 3, 3, 2)  # the evenly spread layer keeps everything ...
    assert math.prod(peaked) < math.prod(flat)  # ... the peaked one, whose tail holds 1.5%, gives up ranks
    assert opt.state_bytes()["total"] > budget - 300  # and the budget is mostly used


def test_a_budget_below_rank_one_warns_and_uses_rank_one():
    g = torch.Generator().manual_seed(0)
    groups, grads = _two_layer_problem(g)
    opt = TensorGaLoreAdamW(groups, rank=0.5)
    drive = _Driver(SubspaceScheduler(auto_rank=True, budget_bytes=100), opt)
    with pytest.warns(RuntimeWarning, match="budget_bytes=100"):
        drive.step(grads)
    assert [s["ranks"] for s in opt.subspace_stats()] == [(1, 1, 1, 1), (1, 1, 1, 1)]


def test_energy_rank_and_greedy_allocation_on_known_spectra():
    assert energy_rank([5.0, 3.0, 1.0, 1.0], epsilon=0.25) == 2
    assert energy_rank([5.0, 3.0, 1.0, 1.0], epsilon=0.0) == 4
    assert energy_rank([0.0, 0.0], epsilon=0.1) == 1
    # two matrix-like layers (one projected mode each): the budget buys the larger eigenvalue shares first
    a = LayerSpectra((4, 10), [[8.0, 0.8, 0.8, 0.4], None], [4, None], torch.complex64, _OPTIONS)
    b = LayerSpectra((4, 10), [[4.0, 3.0, 2.0, 1.0], None], [4, None], torch.complex64, _OPTIONS)
    per_rank = a.bytes([2, None]) - a.bytes([1, None])  # 10*12 + 4*8 = 152 bytes per unit of rank
    assert per_rank == 152
    # the rest does not depend on the rank: step, energy, spectrum, overlap (float32), counters (int64)
    fixed = a.bytes([1, None]) - per_rank
    assert fixed == 4 + 4 + 4 * 4 + 4 * 2 + 8 * 3
    assert allocate_ranks([a, b], epsilon=0.05) == ([[3, None], [4, None]], True)  # a discards 4%, b nothing
    ranks, fits = allocate_ranks([a, b], epsilon=0.05, budget=2 * fixed + 5 * per_rank)
    assert fits and ranks == [[1, None], [4, None]]  # b's shares 30%, 20%, 10% beat a's 8%
    assert allocate_ranks([a, b], epsilon=0.05, budget=2 * fixed + per_rank) == ([[1, None], [1, None]], False)


def test_each_layer_discards_the_same_share_in_every_mode_under_a_budget():
    # mode 0 and mode 1 alike: an allocation never keeps one mode at rank 1 while the other grows
    flat = [0.4, 0.3, 0.2, 0.1]
    layer = LayerSpectra((4, 4, 4), [flat, flat, flat], [4, 4, 4], torch.complex64, _OPTIONS)
    for budget in range(layer.bytes([1, 1, 1]), layer.bytes([4, 4, 4]), 97):
        (ranks,), fits = allocate_ranks([layer], epsilon=0.0, budget=budget)
        assert fits and max(ranks) == min(ranks) and layer.bytes(ranks) <= budget


def test_gradient_spectra_are_the_mode_gram_eigenvalues_of_the_current_gradient():
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(6, 5, 4, dtype=torch.complex64))
    q = torch.nn.Parameter(torch.zeros(3))
    opt = TensorGaLoreAdamW([{"params": [p, q], "galore": True}, {"params": [], "galore": False}], rank=2)
    assert opt.gradient_spectra() == []  # no gradients yet
    p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g)
    q.grad = torch.randn(3, generator=g)
    (entry,) = opt.gradient_spectra()
    assert (entry["group"], entry["index"], entry["view_shape"], entry["ranks"]) == (0, 0, (6, 5, 4), (2, 2, 2))
    reference = tucker.hosvd(p.grad, [6, 5, 4], sequential=False).spectra
    total = tucker.norm_sq(p.grad)
    for s, ref in zip(entry["spectra"], reference, strict=True):
        assert s.dtype == torch.float32 and s.device == p.device
        torch.testing.assert_close(s, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s.sum(), total, rtol=1e-4, atol=0)
    assert opt.state == {}  # read-only


def test_state_dict_is_plain_numbers_that_load_with_weights_only():
    cb = SubspaceScheduler(refresh="lazy")
    cb.last_refresh, cb.refresh_energy = {"fno_blocks.convs.0.weight": 120}, {"fno_blocks.convs.0.weight": 0.875}
    buf = io.BytesIO()
    torch.save({cb.state_key: cb.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = SubspaceScheduler(refresh="lazy")
    fresh.load_state_dict(loaded[fresh.state_key])
    assert fresh.state_dict() == cb.state_dict()
    assert SubspaceScheduler(refresh="fixed").state_key != fresh.state_key


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(refresh="sometimes"), "refresh"),
        (dict(gap=0), "gap"),
        (dict(refresh="geometric", gap=10, max_gap=5), "max_gap"),
        (dict(lazy_threshold=0.0), "lazy_threshold"),
        (dict(check_every=0), "check_every"),
        (dict(epsilon=1.0), "epsilon"),
        (dict(budget_bytes=10**6), "auto_rank"),
        (dict(rank=0.25), "RankSchedule"),
    ],
)
def test_invalid_settings_raise_naming_the_setting(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SubspaceScheduler(**kwargs)


def test_an_optimizer_without_the_controls_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    opt = torch.optim.AdamW([{"params": [p], "galore": True}])
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="request_refresh"):
        _Driver(SubspaceScheduler(), opt).step({p: torch.ones_like(p)})
