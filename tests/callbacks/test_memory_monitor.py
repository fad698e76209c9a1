"""MemoryMonitor's measured peak (issue 19.1): on CPU, torch's MemTracker on one sampled step, logged to the
loggers; the measurement changes nothing in the training and prints nothing."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.memory_measure import CATEGORIES
from app.module import OperatorModule
from app.optim import TensorGaLoreAdamW
from callbacks.memory import MemoryMonitor
from tests.test_module import _TinyData


def _fit(tmp_path, measure_step, fused=False, logger=None, max_epochs=2):
    from neuralop.models import FNO

    torch.manual_seed(0)
    fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    module = OperatorModule(fno, fused_update=fused,
                            optimizer=lambda g: TensorGaLoreAdamW(g, rank=0.5, update_proj_gap=2))
    monitor = MemoryMonitor(log_every_n_steps=100, measure_step=measure_step)
    trainer = Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger or False, callbacks=[monitor],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=_TinyData())
    return module, trainer, monitor


def test_the_sampled_steps_peak_reaches_tensorboard_by_category(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="m")
    module, trainer, monitor = _fit(tmp_path, measure_step=2, logger=logger)
    assert trainer.global_step == 4
    m = monitor.measured
    assert set(m) == {"measured_peak", *(f"measured_{c}" for c in CATEGORIES)}
    assert m["measured_peak"] == pytest.approx(sum(m[f"measured_{c}"] for c in CATEGORIES))
    params = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    assert m["measured_params"] >= params  # the parameters (and the module's buffers)
    assert m["measured_optimizer_state"] > 0 and m["measured_activations"] > 0  # state exists at step 2
    assert m["measured_peak"] > monitor.last["params"] + monitor.last["optimizer_state"]
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    peak = events.Scalars("memory/measured_peak_MiB")
    assert [e.step for e in peak] == [3] and peak[0].value == pytest.approx(m["measured_peak"])  # once, after step 2
    assert {f"memory/measured_{c}_MiB" for c in CATEGORIES} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize("fused", [False, True], ids=["steps", "fused"])
def test_the_measurement_changes_neither_the_weights_nor_the_optimizer_state_and_prints_nothing(tmp_path, capfd,
                                                                                                fused):
    capfd.readouterr()
    measured, t_measured, monitor = _fit(tmp_path, measure_step=1, fused=fused)
    out = capfd.readouterr().out
    plain, t_plain, unmeasured = _fit(tmp_path, measure_step=None, fused=fused)
    assert monitor.measured and not unmeasured.measured
    assert out == ""
    for (name, a), b in zip(plain.state_dict().items(), measured.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    s_plain, s_measured = t_plain.optimizers[0].state_dict(), t_measured.optimizers[0].state_dict()
    for pid, state in s_plain["state"].items():
        for key, value in state.items():
            assert torch.equal(value, s_measured["state"][pid][key]), (pid, key)


def test_no_measurement_when_the_run_ends_before_the_sampled_step_or_it_is_off(tmp_path):
    _, trainer, monitor = _fit(tmp_path, measure_step=10)
    assert trainer.global_step == 4 and monitor.measured == {}
    with pytest.raises(ValueError, match="measure_step must be >= 0"):
        MemoryMonitor(measure_step=-1)


def test_a_run_that_stops_inside_the_sampled_step_leaves_no_tracker_behind(tmp_path):
    """An exception in the measured step closes the probe (``StepMemoryProbe.close``): no dispatch mode stays on."""
    from lightning.pytorch.callbacks import Callback
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    from tests.test_module import _TinyData

    class Boom(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 1:
                raise RuntimeError("stop inside the sampled step")

    from neuralop.models import FNO

    fno = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)
    module = OperatorModule(fno, optimizer=lambda g: TensorGaLoreAdamW(g, rank=0.5))
    monitor = MemoryMonitor(log_every_n_steps=100, measure_step=1)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[monitor, Boom()],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="stop inside the sampled step"):
        trainer.fit(module, datamodule=_TinyData())
    assert _get_current_dispatch_mode_stack() == []
    assert monitor.measured == {}
