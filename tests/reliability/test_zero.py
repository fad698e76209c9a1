"""Optimizer-state sharding (``--model.shard_optimizer_state true``, torch's ``ZeroRedundancyOptimizer``) on two CPU
processes (gloo) with the tiny job: the same training as unsharded DDP, each process holding its share of the state,
exact kill-and-resume, plain-data checkpoints that resume on another number of processes.

Sharded and unsharded DDP step every parameter on the same all-reduced gradient: the owner of a parameter runs the
same optimizer code on the same numbers as every process does without sharding, and broadcasts the result. So the
two agree to float rounding, and on CPU they are bitwise equal, refreshes and rank changes included, at every rank
tried: rank 1 (one direction per mode, the main runs), full rank 1.0, and the tiny config's 0.5 then 0.25.

Across numbers of processes (2 -> 1, 1 -> 2) the restored state is exactly the saved one; after that the runs
differ as DDP and one process with the same global batch do (``test_ddp.py``: the all-reduce sums in another
order, ~1e-7 relative, which a Tucker subspace amplifies where an eigengap is small). At rank 1 that stays below
1e-5, so these tests run at rank 1; at full rank 1.0 (a rotation, to which Adam is not invariant) it grows to
~5e-3 over 4 steps, at the tiny config's ranks to ~1e-2.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from app.memory import optimizer_state_bytes
from app.sharding import ShardedOptimizer, local_optimizer

from .helpers import (
    TINY,
    PauseAt,
    assert_same_training_state,
    callback_arg,
    diff,
    kill_group,
    load,
    run,
    start,
    tiny_args,
    tiny_variant,
    wait_for,
)

STEPS = 8  # 2 epochs of 4 global batches of 8 (2 processes x 4); subspace refreshes at steps 0, 3 and 6
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--data.init_args.batch_size=4"]
SHARD = "--model.shard_optimizer_state=true"


class DumpShard(Callback):
    """At the end of training (``when="end"``), or at its start once a checkpoint is restored (``"start"``), save
    each process's parameters, the bytes of the state its (local) optimizer holds and, on rank 0, the full
    optimizer state dict (consolidated over the processes when sharded), to ``<directory>/rank<r>.pt``."""

    def __init__(self, directory: str, when: str = "end") -> None:
        self.directory, self.when = directory, when

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.when == "start":
            self.dump(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.when == "end":
            self.dump(trainer, pl_module)

    def dump(self, trainer: Trainer, pl_module: LightningModule) -> None:
        opt = trainer.optimizers[0]
        sharded = isinstance(opt, ShardedOptimizer)
        if sharded:
            opt.consolidate_state_dict()  # a collective: every process
        local = local_optimizer(opt)
        owned = [n for g in local.param_groups for p, n in zip(g["params"], g["param_names"], strict=True)
                 if local.state.get(p)]
        out = Path(self.directory)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": pl_module.state_dict(),
                "optimizer": opt.state_dict() if trainer.is_global_zero or not sharded else None,
                "sharded": sharded,
                "local_bytes": optimizer_state_bytes(local),
                "owned": owned,
                "global_step": trainer.global_step,
            },
            out / f"rank{trainer.global_rank}.pt",
        )


def _rank_variant(tmp: Path, rank: int | float) -> Path:
    """The tiny config at one rank throughout (its rank schedule replaced by a constant)."""
    return tiny_variant(tmp / f"rank{rank}.yaml", subspace={"rank": {"kind": "constant", "start": rank}})


def _args(root: Path, data_dir: Path, config: Path, *extra: str) -> list[str]:
    return tiny_args(root, data_dir, "--model.optimizer.init_args.rank=1", *extra, config=config)


def _dumps(root: Path) -> tuple[dict, dict]:
    return load(root / "rank0.pt"), load(root / "rank1.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_dir) -> dict[str, Path]:
    """Uninterrupted DDP runs of the tiny job at rank 1 on 2 processes: sharded and unsharded."""
    base = tmp_path_factory.mktemp("zero")
    config = _rank_variant(base, 1)
    out = {"config": config}
    for name, extra in (("sharded", [SHARD]), ("plain", [])):
        root = base / name
        run(_args(root, tiny_data_dir, config, *DDP, *extra, callback_arg(DumpShard, directory=str(root))))
        out[name] = root
    return out


def _last(root: Path) -> Path:
    return root / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------------------------------ same training


@pytest.mark.slow
def test_sharded_ddp_equals_unsharded_ddp_through_refreshes(runs):
    (s0, s1), (p0, _) = _dumps(runs["sharded"]), _dumps(runs["plain"])
    assert s0["sharded"] and not p0["sharded"]
    assert s0["global_step"] == p0["global_step"] == STEPS
    # the broadcast leaves both processes with the same parameters, equal to unsharded DDP's
    assert not diff(s0["state_dict"], s1["state_dict"])
    for name, p in p0["state_dict"].items():
        rel = float((s0["state_dict"][name] - p).abs().norm() / p.abs().norm().clamp_min(1e-30))
        assert rel < 1e-6, name
    # the consolidated state is the unsharded state: moments, factors, spectra, counters (3 refreshes), groups
    sharded, plain = s0["optimizer"], p0["optimizer"]
    assert sharded["state"].keys() == plain["state"].keys() == set(range(len(plain["state"])))
    assert [int(s["refreshes"]) for s in sharded["state"].values() if "refreshes" in s] == [3, 3]
    assert not diff(sharded["param_groups"], plain["param_groups"])
    for pid, state in plain["state"].items():
        for key, v in state.items():
            w = sharded["state"][pid][key]
            assert w.dtype == v.dtype and w.shape == v.shape, (pid, key)
            assert torch.allclose(w, v, rtol=1e-6, atol=1e-9), (pid, key)


@pytest.mark.slow
def test_each_process_holds_its_share_of_the_state(runs):
    (s0, s1), (p0, p1) = _dumps(runs["sharded"]), _dumps(runs["plain"])
    total = p0["local_bytes"]
    assert total == p1["local_bytes"] > 0  # unsharded: every process holds all of it
    assert s0["local_bytes"] + s1["local_bytes"] == total
    assert max(s0["local_bytes"], s1["local_bytes"]) <= 0.6 * total
    # whole tensors, each on one process (a spectral weight's factors, spectra and moments together)
    assert not set(s0["owned"]) & set(s1["owned"])
    assert sorted(s0["owned"] + s1["owned"]) == sorted(p0["owned"])


def _scalars(root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(root / "runs" / "tiny" / "version_0"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_rank_zero_logs_the_subspace_diagnostics_of_every_layer(runs):
    sharded, plain = _scalars(runs["sharded"]), _scalars(runs["plain"])
    tags = {t for t in plain if t.startswith("subspace/") and t != "subspace/refresh_seconds"}  # a wall time
    assert {"subspace/state_bytes", "subspace/fno_blocks.convs.1.weight.tensor/energy"} <= tags
    assert tags <= set(sharded)
    for tag in tags:  # the same values: gathered from both processes, the whole model's state bytes
        assert sharded[tag] == plain[tag], tag


@pytest.mark.slow
@pytest.mark.parametrize("rank", [None, 1.0], ids=["tiny_ranks_0.5_then_0.25", "full_rank_1.0"])
def test_sharded_equals_unsharded_at_other_ranks(tmp_path, tiny_data_dir, rank):
    config, extra_rank = Path(TINY), []
    if rank is not None:
        config, extra_rank = _rank_variant(tmp_path, rank), [f"--model.optimizer.init_args.rank={rank}"]
    for name, extra in (("sharded", [SHARD]), ("plain", [])):
        run(tiny_args(tmp_path / name, tiny_data_dir, *DDP, *extra_rank, *extra, config=config))
    a, b = load(_last(tmp_path / "sharded")), load(_last(tmp_path / "plain"))
    assert a["global_step"] == b["global_step"] == 8  # refreshes at 0, 3, 6 and the rank change at 7
    assert not diff(a["state_dict"], b["state_dict"])
    assert not diff(a["optimizer_states"], b["optimizer_states"])


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.slow
def test_kill_and_resume_is_exact_and_the_checkpoint_resumes_on_one_process(runs, tmp_path, tiny_data_dir):
    config = runs["config"]
    root, marker, log = tmp_path / "killed", tmp_path / "paused.json", tmp_path / "killed.log"
    proc = start(_args(root, tiny_data_dir, config, *DDP, SHARD, callback_arg(PauseAt, step=5, marker=str(marker))),
                 log)
    wait_for(marker, proc, log)
    assert kill_group(proc, signal.SIGKILL) == -signal.SIGKILL

    # the checkpoint is plain data (weights_only) and holds the full, consolidated state of every parameter
    ckpt = _last(root)
    at_kill = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert at_kill["global_step"] == 4
    reference = load(_last(runs["plain"]))
    state, ref_state = at_kill["optimizer_states"][0]["state"], reference["optimizer_states"][0]["state"]
    assert state.keys() == ref_state.keys()
    assert all(state[i].keys() == ref_state[i].keys() for i in state)
    saved = tmp_path / "saved" / "step0004.ckpt"
    saved.parent.mkdir()
    shutil.copy(ckpt, saved)

    # resume on 2 processes, sharded: bit-identical to the uninterrupted sharded run
    run(_args(root, tiny_data_dir, config, *DDP, SHARD, "--ckpt_path=last"))
    final = load(_last(root))
    assert final["global_step"] == STEPS
    assert_same_training_state(load(_last(runs["sharded"])), runs["sharded"], final, root)

    # 2 -> 1: the same checkpoint resumes on one process with the same global batch (unsharded): it restores the
    # consolidated state as it was saved, and trains on
    one = tmp_path / "one"
    run(_args(one, tiny_data_dir, config, "--trainer.accelerator=cpu", "--trainer.devices=1",
              "--data.init_args.batch_size=8", f"--ckpt_path={saved}",
              callback_arg(DumpShard, directory=str(one / "start"), when="start")))
    restored = load(one / "start" / "rank0.pt")
    assert not restored["sharded"]
    assert not diff(restored["optimizer"], at_kill["optimizer_states"][0])
    assert not diff(restored["state_dict"], at_kill["state_dict"])
    resumed = load(_last(one))
    assert resumed["global_step"] == STEPS
    # one process sums the global batch in another order than the all-reduce (~1e-7 relative; test_ddp.py)
    _close(resumed["state_dict"], final["state_dict"], 1e-5)


def _close(a: dict, b: dict, rtol: float) -> None:
    for name, p in b.items():
        rel = float((a[name] - p).abs().norm() / p.abs().norm().clamp_min(1e-30))
        assert rel < rtol, (name, rel)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_sharded_on_two(runs, tmp_path, tiny_data_dir):
    config, one = runs["config"], tmp_path / "one"
    run(_args(one, tiny_data_dir, config, "--trainer.accelerator=cpu", "--trainer.devices=1",
              "--data.init_args.batch_size=8", "--trainer.max_steps=4"))
    saved = tmp_path / "saved" / "step0004.ckpt"
    saved.parent.mkdir()
    shutil.copy(_last(one), saved)
    two = tmp_path / "two"
    run(_args(two, tiny_data_dir, config, *DDP, SHARD, f"--ckpt_path={saved}",
              callback_arg(DumpShard, directory=str(two / "start"), when="start")))
    r0, r1 = load(two / "start" / "rank0.pt"), load(two / "start" / "rank1.pt")
    ckpt = load(saved)
    assert r0["sharded"] and not diff(r0["optimizer"], ckpt["optimizer_states"][0])  # each process took its share
    assert r0["local_bytes"] + r1["local_bytes"] == optimizer_bytes(ckpt["optimizer_states"][0])
    final = load(_last(two))
    assert final["global_step"] == STEPS
    _close(final["state_dict"], load(_last(runs["sharded"]))["state_dict"], 1e-5)


def optimizer_bytes(state_dict: dict) -> int:
    return sum(v.numel() * v.element_size() for s in state_dict["state"].values() for v in s.values()
               if isinstance(v, torch.Tensor))


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.slow
def test_one_process_warns_and_trains_unsharded(tmp_path, tiny_data_dir):
    proc = run(tiny_args(tmp_path, tiny_data_dir, SHARD, "--trainer.max_steps=2"))
    assert "shard_optimizer_state=true has no effect with one process" in proc.stderr
    plain = tmp_path / "plain"
    run(tiny_args(plain, tiny_data_dir, "--trainer.max_steps=2"))
    a, b = load(_last(tmp_path)), load(_last(plain))
    assert not diff(a["state_dict"], b["state_dict"]) and not diff(a["optimizer_states"], b["optimizer_states"])


def test_fused_updates_with_sharding_are_refused_before_training():
    from app.models import FNO
    from app.module import OperatorModule

    model = FNO(n_modes=[4, 4], hidden_channels=4, n_layers=1, in_channels=1, out_channels=1)
    with pytest.raises(ValueError, match="set model.fused_update=false or model.shard_optimizer_state=false"):
        OperatorModule(model, fused_update=True, shard_optimizer_state=True)
