"""``app.sharding`` without Lightning: the byte-balanced partition, and the sharded Tensor-GaLore optimizer's controls
and diagnostics on two gloo processes, against the unsharded optimizer stepping on the same gradients."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.memory_estimate import predict_param_state_bytes, predict_state_bytes
from app.sharding import balanced_partition, shard_optimizer, state_bytes_per_process


def test_partition_gives_each_item_to_the_least_loaded_process_largest_first():
    assert balanced_partition([1, 5, 4, 3, 3], 2) == [1, 0, 1, 1, 0]  # loads 8 and 8
    assert balanced_partition([7, 7, 7], 3) == [0, 1, 2]
    assert balanced_partition([], 4) == []
    with pytest.raises(ValueError, match="world_size=0 is invalid"):
        balanced_partition([1], 0)


def test_predicted_shares_add_up_to_the_unsharded_state(tiny_galore):
    opt = tiny_galore()
    shares = state_bytes_per_process(opt, 2)
    assert sum(shares) == predict_state_bytes(opt) == sum(predict_param_state_bytes(opt))
    assert max(shares) <= 0.6 * sum(shares)
    assert state_bytes_per_process(opt, 1) == [predict_state_bytes(opt)]


@pytest.fixture
def tiny_galore():
    return lambda: _build()[1]


def _build(seed: int = 0, optimizer: str = "galore"):
    from app.models import FNO
    from app.optim import TensorGaLoreAdamW, TensorGRaDAdamW
    from app.param_groups import split_param_groups

    torch.manual_seed(seed)
    model = FNO(n_modes=[4, 4], hidden_channels=8, n_layers=2, in_channels=1, out_channels=1)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = split_param_groups(model)
    for g in groups:
        g["param_names"] = [names[id(p)] for p in g["params"]]
    if optimizer == "adamw":
        return model, torch.optim.AdamW(groups, lr=0.01, weight_decay=1e-4)
    if optimizer == "tensorgrad":
        return model, TensorGRaDAdamW(groups, lr=0.01, rank=0.5, sparse_ratio=0.1, update_proj_gap=2)
    return model, TensorGaLoreAdamW(groups, lr=0.01, rank=0.5, update_proj_gap=None)


def _backward(model, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(4, 1, 9, 9, generator=g)
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()


def _worker(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        _check(rank)
    finally:
        dist.destroy_process_group()


def _check(rank: int) -> None:
    from tests.reliability.helpers import diff

    model_a, plain = _build()
    model_b, inner = _build()
    sharded = shard_optimizer(inner)
    galore = [gi for gi, g in enumerate(plain.param_groups) if g["galore"]]
    # group indices, names and options are the same on the wrapper, and each local optimizer has every group
    assert [g["name"] for g in sharded.param_groups] == [g["name"] for g in plain.param_groups]
    assert len(sharded.local.param_groups) == len(plain.param_groups)
    for step in range(4):
        _backward(model_a, step)
        _backward(model_b, step)
        if step == 2:  # the diagnostics a policy reads before the step, gathered from both processes
            assert sharded.captured_energy_now() == plain.captured_energy_now()
            spectra_b, spectra_a = sharded.gradient_spectra(galore[1]), plain.gradient_spectra(galore[1])
            assert [(e["group"], e["index"], e["ranks"]) for e in spectra_b] == [
                (e["group"], e["index"], e["ranks"]) for e in spectra_a
            ]
            for eb, ea in zip(spectra_b, spectra_a, strict=True):
                for sb, sa in zip(eb["spectra"], ea["spectra"], strict=True):
                    assert (sb is None) == (sa is None) and (sb is None or torch.equal(sb, sa))
            for opt in (plain, sharded):  # the controls, as the subspace callback uses them
                opt.set_rank(0.25, galore[0])
                opt.request_refresh(galore[0])
        plain.step()
        sharded.step()
    assert not diff(model_a.state_dict(), model_b.state_dict())
    stats_a, stats_b = plain.subspace_stats(), sharded.subspace_stats()
    assert stats_a == stats_b
    assert [s["refreshes"] for s in stats_b] == [2, 1]  # the first step and the request
    sizes = sharded.state_bytes()
    assert sizes["total"] == plain.state_bytes()["total"] == sum(sizes["processes"])
    assert sizes["groups"] == plain.state_bytes()["groups"]
    assert max(sizes["processes"]) <= 0.6 * sizes["total"]
    # the full state, consolidated on rank 0, is the unsharded optimizer's; it loads into a fresh sharded one
    sharded.consolidate_state_dict()
    full = sharded.state_dict() if rank == 0 else None
    if rank == 0:
        assert not diff(full, plain.state_dict())
    full = [full]
    dist.broadcast_object_list(full, src=0)
    model_c, inner_c = _build(seed=1)
    model_c.load_state_dict(model_b.state_dict())
    again = shard_optimizer(inner_c)
    again.load_state_dict(full[0])
    assert again.state_bytes() == sizes
    again.consolidate_state_dict()
    if rank == 0:
        assert not diff(again.state_dict(), plain.state_dict())
    # the other optimizers the app configures: torch's AdamW and TensorGRaD (low-rank + top-k sparse)
    for name in ("adamw", "tensorgrad"):
        model_a, plain = _build(optimizer=name)
        model_b, inner = _build(optimizer=name)
        sharded = shard_optimizer(inner)
        assert type(sharded.local) is type(plain)
        for step in range(3):
            _backward(model_a, step)
            _backward(model_b, step)
            plain.step()
            sharded.step()
        assert not diff(model_a.state_dict(), model_b.state_dict()), name
        sharded.consolidate_state_dict()
        if rank == 0:
            assert not diff(sharded.state_dict(), plain.state_dict()), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sharded_tensor_galore_matches_the_unsharded_optimizer_on_two_processes():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)


def _memory(tmp_path, *extra: str) -> dict:
    from app.cli import memory_main

    return memory_main(["--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}", "--grid", "17", "17",
                        *extra])


def test_memory_predicts_each_process_share_of_the_state(tmp_path, capsys):
    one = _memory(tmp_path)
    two = _memory(tmp_path, "--devices", "2", "--model.shard_optimizer_state", "true")
    assert "per process of 2 (optimizer state sharded)" in capsys.readouterr().out
    for name in ("AdamW", "TensorGaLoreAdamW"):
        assert two[name]["params"] == one[name]["params"] and two[name]["grads"] == one[name]["grads"]
        assert one[name]["optimizer_state"] / 2 <= two[name]["optimizer_state"] <= 0.6 * one[name]["optimizer_state"]
    replicated = _memory(tmp_path, "--devices", "2")
    assert replicated["TensorGaLoreAdamW"] == one["TensorGaLoreAdamW"]


def test_memory_refuses_fused_updates_and_bad_device_counts(tmp_path):
    with pytest.raises(SystemExit, match="add --model.fused_update false"):
        _memory(tmp_path, "--devices", "2", "--model.fused_update", "true")
    with pytest.raises(SystemExit, match="--devices 0 is invalid"):
        _memory(tmp_path, "--devices", "0")
