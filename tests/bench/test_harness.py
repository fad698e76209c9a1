"""bench.harness: a run through the product, its state-byte count and the shared statistics."""

from __future__ import annotations

import math

import pytest
import torch

from app.memory import adamw_state_bytes, optimizer_state_bytes
from app.metrics import BANDS, RelativeL2Loss
from app.param_groups import split_param_groups
from bench import harness, studies


def _step(model, opt, grid: int = 8) -> None:
    x = torch.randn(2, 1, grid, grid, generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    RelativeL2Loss()(model(x), x).backward()
    opt.step()


def test_state_bytes_equal_the_plain_count_for_plain_tensor_state(tiny_fno):
    opt = torch.optim.AdamW(tiny_fno.parameters())
    _step(tiny_fno, opt)
    assert harness.optimizer_state_bytes(opt) == optimizer_state_bytes(opt) == adamw_state_bytes(tiny_fno.parameters())


def test_state_bytes_include_the_factors_held_by_neuralops_projector_objects(tiny_fno):
    from bench.neuralop_optim import NeuralopTensorGaLore

    opt = NeuralopTensorGaLore(split_param_groups(tiny_fno), rank=0.5)
    _step(tiny_fno, opt)
    by_hand = 0
    for state in opt.state.values():
        by_hand += sum(state[k].numel() * state[k].element_size() for k in ("exp_avg", "exp_avg_sq"))
        if "projector" in state:
            by_hand += sum(f.numel() * f.element_size() for f in state["projector"].proj_tensor)
    assert any("projector" in s for s in opt.state.values())  # the spectral weights were projected
    assert harness.optimizer_state_bytes(opt) == by_hand > optimizer_state_bytes(opt)


def test_mean_sd_and_paired_relative_change():
    assert harness.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert harness.mean_sd([5.0]) == (5.0, 0.0)
    assert math.isnan(harness.mean_sd([])[0])
    m, sd = harness.paired_relative_change([1.0, 3.0], [2.0, 2.0])
    assert (m, sd) == (pytest.approx(0.0), pytest.approx(math.sqrt(0.5)))
    with pytest.raises(ValueError, match="equal lengths"):
        harness.paired_relative_change([1.0], [1.0, 2.0])


def test_every_study_composes_shipped_configs_that_exist_and_keys_are_unique():
    for study in studies.STUDIES.values():
        specs = studies.specs(study)
        assert len({(s.dataset, s.key) for s in specs}) == len(specs), study.name
        for s in specs:
            assert all((harness.REPO / c).is_file() for c in s.configs), s.key
            assert s.delta["trainer"]["max_steps"] == study.steps  # the LR schedule follows it (CosineToEnd)
            assert "T_max" not in str(s.delta)
    main = {s.method for s in studies.specs(studies.STUDIES["main"])}
    assert {"adamw", "complex_adamw", "tg_0.25", "tg_0.25_all", "tensorgrad", "neuralop_tg"} <= main
    assert {f"galore_d{d}_0.25" for d in (1, 2, 3)} <= main


def test_the_digest_changes_with_the_delta_and_not_otherwise():
    a = studies.specs(studies.STUDIES["sweep"])[0]
    b = harness.RunSpec(a.study, a.dataset, a.method, a.seed, a.configs, {**a.delta, "seed_everything": 99})
    assert a.digest() == harness.RunSpec(**{**a.__dict__}).digest() != b.digest()


def test_a_run_through_the_product_reports_test_train_band_and_state(tmp_path):
    spec = studies.specs(studies.shrink(studies.STUDIES["regularisation"], "tiny", steps=2))[0]
    spec = harness.RunSpec(spec.study, spec.dataset, spec.method, spec.seed, spec.configs,
                           harness._merge(spec.delta, {"trainer": {"default_root_dir": str(tmp_path)},
                                                       "data": {"init_args": {"data_dir": str(tmp_path / "data")}}}))
    out = harness.run_product(harness.fit_args(spec, tmp_path / "delta.yaml"))
    assert out["failure"] is None and out["steps"] == 2
    name = out["test_names"][0]
    assert {f"test/l2_{name}", f"test/h1_{name}", *(f"test_band/{b}_{name}" for b in BANDS)} <= set(out["tests"])
    assert 0 < out["train"]["test/l2_train"] and out["n_train"] == 32
    assert out["state_bytes"] == out["adamw_state_bytes"] > 0  # the first method is torch's AdamW
