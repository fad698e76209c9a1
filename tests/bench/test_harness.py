"""The benchmark's accounting functions: exact state bytes (plain and object-held), memory rows, RSS, shares."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from app.memory import adamw_state_bytes, optimizer_state_bytes
from app.metrics import RelativeL2Loss
from app.optim import TensorGaLoreAdamW
from app.param_groups import split_param_groups
from bench import harness


def _step(model: nn.Module, opt: torch.optim.Optimizer, grid: int = 8) -> None:
    x = torch.randn(2, 1, grid, grid, generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    RelativeL2Loss()(model(x), x).backward()
    opt.step()


def test_deep_count_equals_the_plain_count_for_plain_tensor_state(tiny_fno):
    opt = torch.optim.AdamW(tiny_fno.parameters())
    _step(tiny_fno, opt)
    expected = adamw_state_bytes(tiny_fno.parameters())
    assert harness.optimizer_state_bytes_deep(opt) == optimizer_state_bytes(opt) == expected


def test_deep_count_includes_factors_held_by_neuralops_projector_objects(tiny_fno):
    from neuralop.training import AdamW as NeuralopAdamW

    groups = split_param_groups(tiny_fno)
    spectral = [p for g in groups if g["galore"] for p in g["params"]]
    other = [p for g in groups if not g["galore"] for p in g["params"]]
    opt = NeuralopAdamW(other, galore_params=spectral, galore_rank=0.5)
    _step(tiny_fno, opt)
    by_hand = 0
    for state in opt.state.values():
        by_hand += sum(state[k].numel() * state[k].element_size() for k in ("exp_avg", "exp_avg_sq"))
        if "projector" in state:
            by_hand += sum(f.numel() * f.element_size() for f in state["projector"].proj_tensor)
    assert harness.optimizer_state_bytes_deep(opt) == by_hand
    assert optimizer_state_bytes(opt) < by_hand  # the plain count cannot see inside the projector


def test_a_tensor_reachable_twice_is_counted_once():
    t = torch.zeros(10)  # 40 bytes
    holder = type("Holder", (), {})()
    holder.a, holder.b = t, [t, {"c": t}]
    assert harness.deep_tensor_bytes({"x": holder, "y": (t, 3, "s")}) == 40


def test_memory_row_is_params_plus_grads_plus_state_and_matches_the_estimator(tiny_fno):
    from app.memory_estimate import predict_state_bytes

    opt = TensorGaLoreAdamW(split_param_groups(tiny_fno), rank=0.25)
    before = harness.memory_row(tiny_fno, opt)
    assert before["grads"] == before["state"] == 0
    _step(tiny_fno, opt)
    row = harness.memory_row(tiny_fno, opt)
    assert row["grads"] == row["params"] > 0
    assert row["total"] == row["params"] + row["grads"] + row["state"]
    assert row["state"] == predict_state_bytes(opt)


def test_spectral_state_bytes_shrink_with_tensor_galore_and_not_with_adamw(tiny_fno):
    opt = TensorGaLoreAdamW(split_param_groups(tiny_fno), rank=0.25)
    _step(tiny_fno, opt)
    sp = harness.spectral_state_bytes(tiny_fno, opt)
    assert 0 < sp["state_spectral"] < 0.5 * sp["adamw_spectral"]
    assert sp["adamw_total"] == adamw_state_bytes(tiny_fno.parameters())
    adam = torch.optim.AdamW(split_param_groups(tiny_fno))
    _step(tiny_fno, adam)
    sp = harness.spectral_state_bytes(tiny_fno, adam)
    assert sp["state_spectral"] == sp["adamw_spectral"]


def test_refresh_share_is_the_extra_time_over_a_whole_refresh_period():
    assert harness.refresh_share(0.01, 0.5, 100) == pytest.approx(0.5 / (100 * 0.01 + 0.5))
    assert harness.refresh_share(0.01, 0.5, None) == 0.0
    assert harness.refresh_share(0.01, 0.0, 100) == 0.0


def test_mean_sd_and_paired_relative_change():
    assert harness.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert harness.mean_sd([5.0]) == (5.0, 0.0)
    assert math.isnan(harness.mean_sd([])[0])
    m, sd = harness.paired_relative_change([1.0, 3.0], [2.0, 2.0])
    assert (m, sd) == (pytest.approx(0.0), pytest.approx(math.sqrt(0.5)))
    with pytest.raises(ValueError, match="equal lengths"):
        harness.paired_relative_change([1.0], [1.0, 2.0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS comes from /proc/self")
def test_peak_rss_after_a_reset_sees_a_new_allocation():
    if not harness.reset_peak_rss():
        pytest.skip("this kernel does not allow resetting the RSS high-water mark")
    before = harness.rss_bytes()
    # 64 MiB, touched: above glibc's largest dynamic mmap threshold (32 MiB), so it is always fresh pages and never
    # heap memory that earlier tests already made resident (a 16 MiB block could be, depending on test order)
    big = torch.ones(64 * 2**20 // 4)
    after = harness.rss_bytes()
    assert after["peak"] >= before["rss"] + 60 * 2**20
    del big


def test_forced_refresh_acts_on_the_next_step_of_ours_and_of_neuralops(tiny_fno):
    from neuralop.training import AdamW as NeuralopAdamW

    opt = TensorGaLoreAdamW(split_param_groups(tiny_fno), rank=0.25)
    _step(tiny_fno, opt)
    before = harness._refresh_count(opt)
    harness._force_refresh(opt)()
    _step(tiny_fno, opt)
    assert harness._refresh_count(opt) == before + sum(1 for g in opt.param_groups if g["galore"])

    groups = split_param_groups(tiny_fno)
    spectral = [p for g in groups if g["galore"] for p in g["params"]]
    nop = NeuralopAdamW(
        [p for g in groups if not g["galore"] for p in g["params"]],
        galore_params=spectral,
        galore_rank=0.5,
        galore_update_proj_gap=200,
    )
    _step(tiny_fno, nop)
    projector = nop.state[spectral[0]]["projector"]
    old = projector.proj_tensor
    harness._force_refresh(nop)()
    _step(tiny_fno, nop)
    harness._undo_force(nop)
    assert projector.proj_tensor is not old and projector.update_proj_gap == 200
    assert harness._force_refresh(torch.optim.AdamW(tiny_fno.parameters())) is None


def test_default_hyper_reads_the_default_jobs_optimizer():
    hp = harness.default_hyper()
    assert hp.lr > 0 and hp.update_proj_gap >= 1
