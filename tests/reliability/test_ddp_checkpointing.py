"""Activation checkpointing under DDP (issue 19.2): ``tgalore fit --model.activation_checkpointing true`` on two CPU
processes (gloo, Lightning's DDP strategy) keeps the processes identical and trains as the same DDP run without it,
to float rounding. Rank 1 and the tiny config, for the reason tests/reliability/test_ddp.py gives."""

from __future__ import annotations

import pytest
import torch

from .helpers import DumpState, callback_arg, diff, load, run, tiny_args, tiny_variant

STEPS = 8  # 2 epochs of 4 global batches of 8 (4 per process)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().norm() / b.abs().norm().clamp_min(1e-30))


@pytest.mark.slow
def test_activation_checkpointing_under_ddp_trains_like_without_it_and_the_processes_stay_in_sync(
    tmp_path, tiny_data_dir
):
    config = tiny_variant(tmp_path / "rank1.yaml", subspace={"rank": {"kind": "constant", "start": 1}})
    common = ["--model.optimizer.init_args.rank=1", "--trainer.accelerator=cpu", "--trainer.devices=2",
              "--trainer.strategy=ddp", "--data.init_args.batch_size=4"]
    dumps = {}
    for name, flag in (("plain", "false"), ("checkpointed", "true")):
        out = tmp_path / name
        run(tiny_args(out, tiny_data_dir, *common, f"--model.activation_checkpointing={flag}",
                      callback_arg(DumpState, directory=str(out)), config=config))
        dumps[name] = [load(out / f"rank{r}.pt") for r in (0, 1)]
        last = load(out / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt")
        assert last["hyper_parameters"]["activation_checkpointing"] is (flag == "true")
    (rank0, rank1), (plain, _) = dumps["checkpointed"], dumps["plain"]
    assert rank0["global_step"] == rank1["global_step"] == plain["global_step"] == STEPS

    # the two processes hold exactly the same parameters, moments, factors and counters
    assert not diff(rank0["state_dict"], rank1["state_dict"])
    assert not diff(rank0["optimizer"], rank1["optimizer"])

    # ... and the same as without checkpointing, to float rounding
    assert rank0["state_dict"].keys() == plain["state_dict"].keys()
    for name, p in plain["state_dict"].items():
        assert _rel(rank0["state_dict"][name], p) < 1e-5, name
    for pid, state in plain["optimizer"]["state"].items():
        for key, v in state.items():
            w = rank0["optimizer"]["state"][pid][key]
            assert w.shape == v.shape, (pid, key)
            if v.is_floating_point() or v.is_complex():
                assert _rel(w, v) < 1e-5, (pid, key)
            else:
                assert torch.equal(w, v), (pid, key)
    for key in ("train/loss_epoch", "val/loss", "val/l2"):
        assert rank0["metrics"][key] == pytest.approx(plain["metrics"][key], rel=1e-5), key
