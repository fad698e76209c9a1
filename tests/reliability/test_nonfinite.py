"""A NaN/Inf gradient mid-training, through a Trainer: ``nonfinite="skip"`` skips that step (warning) and the run
goes on; ``nonfinite="error"`` stops with a message naming the parameter and the step. Either way the parameters,
moments and factors are never poisoned (and the checkpoint written on the error is clean)."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from neuralop.models import FNO

from app.module import OperatorModule
from app.optim import NonFiniteGradientError, TensorGaLoreAdamW
from callbacks.checkpoint import SafeModelCheckpoint
from datamodules.darcy import DarcyDataModule

from .helpers import InjectNonFinite

SPECTRAL = "model.fno_blocks.convs.1.weight.tensor"  # projected (Tucker core moments, factors)
DENSE = "model.projection.fcs.0.weight"  # full-tensor AdamW ("other" group)
BAD_STEP = 4  # refreshes at 0, 3, 6 (update_proj_gap=3): the bad step lies between two refreshes


class _Snapshots(Callback):
    """Optimizer state and parameters just before and just after the optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.before, self.after = step, None, None

    @staticmethod
    def _take(trainer, pl_module):
        return copy.deepcopy(
            {"params": pl_module.state_dict(), "state": trainer.optimizers[0].state_dict()["state"]}
        )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            self.before = self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step + 1:
            self.after = self._take(trainer, pl_module)


def _module(nonfinite: str) -> OperatorModule:
    torch.manual_seed(0)
    fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    opt = partial(TensorGaLoreAdamW, lr=5e-3, rank=0.5, update_proj_gap=3, nonfinite=nonfinite)
    return OperatorModule(fno, optimizer=opt)


def _data(tmp_path) -> DarcyDataModule:
    return DarcyDataModule(
        data_dir=str(tmp_path / "data"), resolution=9, test_resolutions=[9], solve_resolution=17, n_train=18,
        n_test=2, batch_size=4,
    )


def _trainer(tmp_path, *callbacks, **kw) -> Trainer:
    return Trainer(
        accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=list(callbacks), **kw,
    )


def _all_finite(sd: dict) -> bool:
    return all(torch.isfinite(v).all() for v in _tensors(sd))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


@pytest.mark.parametrize("param", [SPECTRAL, DENSE])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_skip_skips_the_step_with_a_warning_and_changes_no_parameter_moment_or_factor(tmp_path, param, value):
    module, snap = _module("skip"), _Snapshots(BAD_STEP)
    trainer = _trainer(tmp_path, InjectNonFinite(BAD_STEP, param, value), snap, enable_checkpointing=False)
    with pytest.warns(RuntimeWarning, match=rf"skipped a step: non-finite gradient for .*{param[6:]}.* at step 4"):
        trainer.fit(module, datamodule=_data(tmp_path))
    assert trainer.global_step == 8  # training went on

    before, after = snap.before, snap.after
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]), k
    for pid, state in before["state"].items():
        assert int(after["state"][pid]["nonfinite_skips"]) == 1
        for k, v in state.items():  # moments, factors, spectra, step and refresh counters: all unchanged
            assert torch.equal(v, after["state"][pid][k]), (pid, k)
    final = trainer.optimizers[0].state_dict()["state"]
    assert _all_finite(module.state_dict()) and _all_finite(final)
    assert {int(s["step"]) for s in final.values()} == {7}  # 8 optimizer calls, one skipped


@pytest.mark.parametrize("param", [SPECTRAL, DENSE])
def test_error_names_the_parameter_and_step_and_the_exception_checkpoint_is_clean(tmp_path, param):
    module = _module("error")
    ckpt = SafeModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True, save_on_exception=True)
    trainer = _trainer(tmp_path, InjectNonFinite(BAD_STEP, param, float("inf")), ckpt)
    with pytest.raises(NonFiniteGradientError, match=rf"non-finite gradient for .*'{param[6:]}'.* at step 4"):
        trainer.fit(module, datamodule=_data(tmp_path))
    assert _all_finite(module.state_dict()) and _all_finite(trainer.optimizers[0].state_dict())
    saved = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)  # written by save_on_exception
    assert saved["global_step"] == BAD_STEP
    assert _all_finite(saved["state_dict"]) and _all_finite(saved["optimizer_states"])
