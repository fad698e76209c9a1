"""Live memory breakdown: parameters, gradients, optimizer state (exact bytes) and, on CUDA, the allocator's view."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from app.memory import adamw_state_bytes, memory_breakdown

log = logging.getLogger(__name__)

__all__ = ["MemoryMonitor"]

MiB = 2**20


class MemoryMonitor(Callback):
    """Log memory by category to the logger (``memory/*`` in MiB) at the first step and every
    ``log_every_n_steps``, and a summary table when fit ends.

    Categories: ``params``, ``grads`` (gradients alive right after the optimizer step; 0 with fused updates),
    ``optimizer_state`` and ``adamw_state`` (what ``torch.optim.AdamW`` would hold for the same parameters), all
    exact tensor byte counts; on CUDA also ``cuda_allocated``, ``cuda_max_allocated`` and
    ``activations_and_other`` (= peak allocated − params − grads − state).

    Args:
        log_every_n_steps: logging period in optimizer steps.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.last: dict[str, float] = {}

    def measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        mb = memory_breakdown(pl_module, optimizer)
        out = {
            "params": mb.params,
            "grads": mb.grads,
            "optimizer_state": mb.optimizer_state,
            "adamw_state": adamw_state_bytes(p for p in pl_module.parameters() if p.requires_grad),
        }
        if pl_module.device.type == "cuda":
            out["cuda_allocated"] = torch.cuda.memory_allocated(pl_module.device)
            peak = torch.cuda.max_memory_allocated(pl_module.device)
            out["cuda_max_allocated"] = peak
            out["activations_and_other"] = max(0, peak - mb.total)
        return {k: v / MiB for k, v in out.items()}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step != 1 and step % self.log_every_n_steps != 0:
            return
        self.last = self.measure(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_metrics({f"memory/{k}_MiB": v for k, v in self.last.items()}, step=step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.last or not trainer.is_global_zero:
            return
        rows = [f"| {k} | {v:.2f} |" for k, v in self.last.items()]
        ratio = self.last["optimizer_state"] / self.last["adamw_state"] if self.last["adamw_state"] else float("nan")
        table = "\n".join(["| category | MiB |", "|---|---:|", *rows, f"| state ÷ AdamW state | {ratio:.3f} |"])
        log.info("memory at the last measurement:\n%s", table)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("memory/summary", table, global_step=trainer.global_step)
