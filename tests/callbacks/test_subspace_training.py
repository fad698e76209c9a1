"""SubspaceScheduler in real training (Trainer and CLI, CPU): rank changes mid-run, exact resume between two rank
changes, TensorBoard tags read back from the event file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from neuralop.models import FNO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.cli import cli_main
from app.module import OperatorModule
from app.optim import TensorGaLoreAdamW
from callbacks.schedules import RankSchedule
from callbacks.subspace import SubspaceScheduler
from tests.test_cli import REPO, tiny_args
from tests.test_module import _TinyData

# 16 samples in batches of 8: 2 optimizer steps per epoch. Refreshes every 3 steps (0, 3, 6, 9); the rank drops
# at epochs 2 and 4 (steps 4 and 8), so it changes at the refreshes at steps 6 and 9. Epoch 3 ends after step 7:
# a checkpoint there lies between the two rank changes.
EPOCHS, SPLIT = 6, 4


def _module() -> OperatorModule:
    torch.manual_seed(0)
    fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    return OperatorModule(
        fno, optimizer=lambda groups: TensorGaLoreAdamW(groups, lr=1e-2, rank=0.5, proj_modes=None)
    )  # every mode


def _scheduler() -> SubspaceScheduler:
    return SubspaceScheduler(
        refresh="fixed", gap=3, rank=RankSchedule("step", start=0.5, end=0.2, milestones=[2, 4], unit="epoch")
    )


def _trainer(max_epochs: int, callbacks: list, logger=False) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )


class _Recorder(Callback):
    """Per optimizer step: the training loss and the (ranks, moment shape) of every projected parameter."""

    def __init__(self):
        self.losses, self.layouts = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.losses.append(float(outputs["loss"]))
        self.layouts.append(
            [
                (s["ranks"], tuple(opt.state[opt.param_groups[s["group"]]["params"][0]]["exp_avg"].shape))
                for s in opt.subspace_stats()
            ]
        )


@pytest.fixture(scope="module")
def uninterrupted():
    module, recorder = _module(), _Recorder()
    trainer = _trainer(EPOCHS, [_scheduler(), recorder])
    trainer.fit(module, datamodule=_TinyData())
    return module, trainer.optimizers[0], recorder


def test_rank_changes_mid_training_keep_losses_finite_and_state_shapes_consistent(uninterrupted):
    _, opt, recorder = uninterrupted
    assert len(recorder.losses) == 2 * EPOCHS and all(torch.isfinite(torch.tensor(recorder.losses)))
    ranks_per_step = [tuple(r for r, _ in layout) for layout in recorder.layouts]
    assert len(set(ranks_per_step)) == 3  # rank 0.5, then 0.35 from step 6, then 0.2 from step 9
    assert ranks_per_step[5] != ranks_per_step[6] != ranks_per_step[9] and ranks_per_step[6] == ranks_per_step[8]
    for layout in recorder.layouts:
        for ranks, moment_shape in layout:
            assert moment_shape == ranks  # the moments always live in the current core
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if group["galore"]:
                factors = [state[f"factor_{k}"] for k in range(p.ndim)]
                assert state["exp_avg_sq"].shape == state["exp_avg"].shape == tuple(u.shape[1] for u in factors)
                assert all(u.shape[0] == n for u, n in zip(factors, p.shape, strict=True))


def test_resume_between_two_rank_changes_reproduces_the_uninterrupted_run_exactly(uninterrupted, tmp_path):
    module_full, opt_full, recorder_full = uninterrupted
    first = _trainer(SPLIT, [_scheduler(), ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    first.fit(_module(), datamodule=_TinyData())
    ckpt_path = tmp_path / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)  # the callback's state is plain numbers
    cb = _scheduler()
    assert ckpt["callbacks"][cb.state_key]["last_refresh"] == {
        g["name"]: 6 for g in opt_full.param_groups if g["galore"]
    }

    module, recorder = _module(), _Recorder()
    second = _trainer(EPOCHS, [cb, recorder])
    second.fit(module, datamodule=_TinyData(), ckpt_path=ckpt_path)
    assert recorder.losses == recorder_full.losses[2 * SPLIT :]
    assert recorder.layouts == recorder_full.layouts[2 * SPLIT :]
    for (name, a), b in zip(module_full.state_dict().items(), module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    sa, sb = opt_full.state_dict(), second.optimizers[0].state_dict()
    assert [{k: v for k, v in g.items() if k != "params"} for g in sa["param_groups"]] == [
        {k: v for k, v in g.items() if k != "params"} for g in sb["param_groups"]
    ]
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        assert sa["state"][pid].keys() == sb["state"][pid].keys()
        for key in sa["state"][pid]:
            assert torch.equal(sa["state"][pid][key], sb["state"][pid][key]), (pid, key)


def test_documented_tags_reach_tensorboard(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="s")
    cb = SubspaceScheduler(
        refresh="lazy", check_every=1, max_gap=2, rank=RankSchedule("step", start=0.5, end=0.2, milestones=[3])
    )
    module = _module()
    _trainer(3, [cb], logger=logger).fit(module, datamodule=_TinyData())
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    names = [n for n in cb.last_refresh]
    assert len(names) == 2
    expected = {
        "subspace/state_bytes",
        "subspace/adamw_state_bytes",
        "subspace/refresh_seconds",
        "subspace/other/state_bytes",
    }
    for name in names:
        expected |= {f"subspace/{name}/{t}" for t in ("energy", "energy_now", "state_bytes")}
        expected |= {f"subspace/{name}/{t}_{k}" for t in ("rank", "overlap") for k in range(4)}
    assert expected <= scalars, sorted(expected - scalars)
    assert "subspace/ranks/text_summary" in events.Tags()["tensors"]  # the markdown table
    tables = events.Tensors("subspace/ranks/text_summary")
    assert len(tables) == 2 and tables[0].step == 0  # at the first refresh, and when the rank changed
    ranks = [e.value for e in events.Scalars(f"subspace/{names[0]}/rank_0")]
    assert ranks[0] > ranks[-1]
    state = [e.value for e in events.Scalars("subspace/state_bytes")]
    adamw = [e.value for e in events.Scalars("subspace/adamw_state_bytes")]
    assert state[-1] < adamw[-1]


def test_callback_configs_train_from_the_command_line(tmp_path):
    cli = cli_main(
        [
            "fit",
            "-c",
            str(REPO / "configs/callbacks/subspace_auto_rank.yaml"),
            *tiny_args(tmp_path),
            "--trainer.max_epochs=2",
            "--test_after_fit=false",
        ]
    )
    kinds = [type(c).__name__ for c in cli.trainer.callbacks]
    assert {"SafeModelCheckpoint", "MemoryMonitor", "SubspaceScheduler"} <= set(kinds)  # defaults kept
    ckpt = torch.load(Path(cli.trainer.checkpoint_callback.last_model_path), weights_only=True)
    assert any(k.startswith("SubspaceScheduler") for k in ckpt["callbacks"])
    ranks = [s["ranks"] for s in cli.trainer.optimizers[0].subspace_stats()]
    assert len(ranks) == 2 and all(len(r) == 4 for r in ranks)


def test_fused_updates_are_refused_with_the_fix_named():
    module = _module()
    module.fused_update, module.automatic_optimization = True, False
    with pytest.raises(ValueError, match="fused_update=false"):
        _trainer(1, [_scheduler()]).fit(module, datamodule=_TinyData())


class _RefreshRecorder(Callback):
    """Per optimizer step: the last refresh step of every projected parameter."""

    def __init__(self):
        self.last_refresh: list[set[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last_refresh.append({s["last_refresh"] for s in trainer.optimizers[0].subspace_stats()})


def test_a_run_trained_with_the_callback_and_resumed_without_it_refreshes_at_the_configured_gap(tmp_path):
    """The callback's control is not persisted: the checkpoint keeps the group's own update_proj_gap."""

    def module():
        torch.manual_seed(0)
        fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
        return OperatorModule(fno, optimizer=lambda g: TensorGaLoreAdamW(g, lr=1e-2, rank=0.5, update_proj_gap=5))

    first = _trainer(SPLIT, [_scheduler(), ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    first.fit(module(), datamodule=_TinyData())  # steps 0-7; the callback refreshes at 0, 3 and 6
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    galore = [g for g in ckpt["optimizer_states"][0]["param_groups"] if g["galore"]]
    assert galore and all(g["update_proj_gap"] == 5 for g in galore)

    recorder = _RefreshRecorder()
    second = _trainer(EPOCHS + 4, [recorder])  # no callback: steps 8-19
    second.fit(module(), datamodule=_TinyData(), ckpt_path=tmp_path / "last.ckpt")
    assert not second.optimizers[0].policy_attached(0)
    # the optimizer's own gap of 5, counted from the callback's last refresh at step 6: steps 11 and 16
    assert [last for (last,) in map(tuple, recorder.last_refresh)] == [6] * 3 + [11] * 5 + [16] * 4
