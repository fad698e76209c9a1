"""Callbacks: memory monitor, prediction images (TensorBoard tags read back from the event file)."""

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.module import OperatorModule
from app.optim import TensorGaLoreAdamW
from callbacks.images import PredictionImages
from callbacks.memory import MemoryMonitor
from tests.test_module import _TinyData


def test_memory_monitor_and_images_reach_tensorboard(tiny_fno, tmp_path):
    logger = TensorBoardLogger(tmp_path, name="m")
    monitor = MemoryMonitor(log_every_n_steps=2)
    module = OperatorModule(tiny_fno, optimizer=lambda g: TensorGaLoreAdamW(g, rank=0.5))
    trainer = Trainer(
        max_epochs=2, accelerator="cpu", logger=logger, callbacks=[monitor, PredictionImages(every_n_epochs=1)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_TinyData())
    assert monitor.last["optimizer_state"] < monitor.last["adamw_state"]
    assert monitor.last["grads"] > 0
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"memory/params_MiB", "memory/optimizer_state_MiB", "memory/adamw_state_MiB", "val/l2"} <= scalars
    assert "val/predictions" in events.Tags()["images"]
    assert any(t.startswith("memory/summary") for t in events.Tags()["tensors"])


def test_memory_monitor_sees_no_gradients_with_fused_updates(tiny_fno, tmp_path):
    monitor = MemoryMonitor(log_every_n_steps=1)
    module = OperatorModule(tiny_fno, fused_update=True, optimizer=lambda g: TensorGaLoreAdamW(g, rank=0.5))
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, callbacks=[monitor], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, datamodule=_TinyData())
    assert monitor.last["grads"] == 0 and monitor.last["optimizer_state"] > 0
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in module.parameters())
