"""Multi-process DDP on CPU (gloo): ``tgalore fit --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy
ddp`` trains; both processes end with identical parameters, moments and factors, which match a single process with
the same global batch; metrics are reduced over the processes.

Same global batch: ``EpochShuffleSampler`` gives process ``r`` of ``W`` every ``W``-th index of the epoch's shared
permutation from ``r`` on, so the union of the ``W`` per-process batches ``i`` of ``batch_size`` is batch ``i`` of one
process with ``W * batch_size``; DDP averages the per-process mean losses' gradients, which is the gradient of the
mean over the global batch (with 32 training samples every process has equal batches). Lightning keeps this sampler
because it is a ``DistributedSampler`` (its own replacement would reshuffle).

Rank 1 (one Tucker direction per mode): in float32 DDP's all-reduced gradient and a single process's differ by
~1e-7 relative, and a Tucker factor column with a small eigengap (or a Gram eigenvalue at rounding level, frequent in
the first steps of this tiny FNO) turns that into a different subspace, which Adam's normalised first step after
each refresh then follows: at the tiny config's ranks (0.5, then 0.25) the two runs end ~1e-2 apart, at rank 2 ~1e-4.
The top eigenvector of each mode is well separated, so rank 1 isolates what this test is about: the data split, the
gradient averaging and the optimizer state.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import DumpState, callback_arg, diff, load, run, tiny_args, tiny_variant

STEPS = 8  # 2 epochs of 4 global batches of 8; subspace refreshes at steps 0, 3 and 6


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().norm() / b.abs().norm().clamp_min(1e-30))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path, tiny_data_dir):
    config = tiny_variant(tmp_path / "rank1.yaml", subspace={"rank": {"kind": "constant", "start": 1}})
    common = ["--model.optimizer.init_args.rank=1", "--trainer.accelerator=cpu"]
    run(tiny_args(tmp_path / "ddp", tiny_data_dir, *common, "--trainer.devices=2", "--trainer.strategy=ddp",
                  "--data.init_args.batch_size=4", callback_arg(DumpState, directory=str(tmp_path / "ddp")),
                  config=config))
    run(tiny_args(tmp_path / "one", tiny_data_dir, *common, "--trainer.devices=1", "--data.init_args.batch_size=8",
                  callback_arg(DumpState, directory=str(tmp_path / "one")), config=config))
    rank0, rank1, one = (load(tmp_path / d / f"rank{r}.pt") for d, r in (("ddp", 0), ("ddp", 1), ("one", 0)))
    assert rank0["global_step"] == rank1["global_step"] == one["global_step"] == STEPS

    # both processes hold exactly the same parameters, moments, factors, spectra, counters and param groups
    assert not diff(rank0["state_dict"], rank1["state_dict"])
    assert not diff(rank0["optimizer"], rank1["optimizer"])

    # ... and match one process with the same global batch
    for name, p in one["state_dict"].items():
        assert _rel(rank0["state_dict"][name], p) < 1e-5, name
    factors = 0
    for pid, state in one["optimizer"]["state"].items():
        for key, v in state.items():
            if key.startswith("factor_"):
                factors += 1
            assert rank0["optimizer"]["state"][pid][key].shape == v.shape, (pid, key)
            if v.is_floating_point() or v.is_complex():
                assert _rel(rank0["optimizer"]["state"][pid][key], v) < 1e-5, (pid, key)
            else:
                assert torch.equal(rank0["optimizer"]["state"][pid][key], v), (pid, key)
    assert factors == 4  # two spectral weights, each projected on its two channel modes (proj_modes [0, 1])
    assert [int(s["refreshes"]) for s in rank0["optimizer"]["state"].values() if "refreshes" in s] == [3, 3]

    # metrics are reduced over the processes: rank 0 reports what the single process measures on all the data
    for key in ("train/loss_epoch", "val/loss", "val/l2", "val/h1"):
        assert rank0["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5), key
        assert rank0["metrics"][key] == rank1["metrics"][key], key


@pytest.mark.slow
def test_fused_updates_under_ddp_stop_with_a_clear_message(tmp_path, tiny_data_dir):
    config = tiny_variant(tmp_path / "no_subspace.yaml", subspace=False)  # it refuses fused updates itself
    proc = run(tiny_args(tmp_path, tiny_data_dir, "--trainer.devices=2", "--trainer.strategy=ddp",
                         "--model.fused_update=true", config=config), check=False)
    assert proc.returncode != 0
    assert "before DDP has averaged it over the 2 processes" in proc.stderr
    assert "set model.fused_update=false for multi-device training" in proc.stderr
