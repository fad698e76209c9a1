"""Live memory breakdown: parameters, gradients, optimizer state (exact bytes); the measured peak of a training step
(on CUDA the allocator's, on CPU torch's ``MemTracker`` on one sampled step)."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from app.memory import adamw_state_bytes, memory_breakdown
from app.memory_measure import StepMemoryProbe

log = logging.getLogger(__name__)

__all__ = ["MemoryMonitor"]

MiB = 2**20


class MemoryMonitor(Callback):
    """Log memory by category to the logger (``memory/*`` in MiB) at the first step and every
    ``log_every_n_steps``, and a summary table when fit ends.

    Categories: ``params``, ``grads`` (gradients alive right after the optimizer step; 0 with fused updates),
    ``optimizer_state`` and ``adamw_state`` (what ``torch.optim.AdamW`` would hold for the same parameters), all
    exact tensor byte counts; on CUDA also ``cuda_allocated``, ``cuda_max_allocated`` (the allocator's peak so
    far: the measured peak) and ``activations_and_other`` (= peak allocated − params − grads − state).

    On CPU, where no allocator keeps a peak, the peak of one sampled training step (``measure_step``: forward,
    backward and optimizer step) is measured with torch's ``MemTracker`` (``app.memory_measure``: tensor bytes, not
    RSS) and logged once, at that step, as ``measured_peak`` and ``measured_<category>`` (params, grads,
    optimizer_state, activations, temporaries at the moment of the peak; they sum to it). The tracker sees every
    tensor operation of that step through a ``TorchDispatchMode`` (a Python call per operation): it does not change
    the result, but that one step takes longer, measured 1.8-1.9x an untracked step on the default job's FNO and
    batch (4 layers, 32 channels, batch 32 at 33×33, Tensor-GaLore, 1 thread) and 3.1x at batch 8 (the cost is per
    operation, so it weighs more on small tensors) (``python -m bench.memory_monitor_cost [--batch 8]``): once per
    run, about one extra step's time. No other step is tracked.

    Args:
        log_every_n_steps: logging period in optimizer steps.
        measure_step: the optimizer step (``trainer.global_step``, 0-based) whose peak is measured on CPU; the
            default 2 comes after the step that creates the optimizer state (and Tensor-GaLore's first subspace),
            so it is the steady-state peak. None: no measurement. A run that starts or resumes after this step
            measures nothing.
    """

    def __init__(self, log_every_n_steps: int = 50, measure_step: int | None = 2) -> None:
        if log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        if measure_step is not None and measure_step < 0:
            raise ValueError(f"measure_step must be >= 0 (an optimizer step) or None (no measurement), got "
                             f"{measure_step}")
        self.log_every_n_steps = log_every_n_steps
        self.measure_step = measure_step
        self.last: dict[str, float] = {}
        self.measured: dict[str, float] = {}  # the sampled step's peak (CPU), MiB
        self._probe: StepMemoryProbe | None = None

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

    # ------------------------------------------------------------------ the sampled step's peak (CPU)
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sampled = self.measure_step is not None and pl_module.device.type == "cpu"
        if sampled and trainer.global_step <= self.measure_step:
            self._probe = StepMemoryProbe(steps=1, first=self.measure_step)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._probe is not None:
            self._probe.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._probe is not None:
            self._probe.on_before_optimizer_step(trainer, pl_module, optimizer)

    def _log_measured(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        probe = self._probe
        probe.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if probe.result is None:
            return
        self._probe = None
        result = probe.result
        self.measured = {"measured_peak": result.peak / MiB,
                         **{f"measured_{k}": v / MiB for k, v in result.at_peak.items()}}
        for logger in trainer.loggers:
            logger.log_metrics({f"memory/{k}_MiB": v for k, v in self.measured.items()}, step=trainer.global_step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_tracking()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop_tracking()

    def _stop_tracking(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:  # training may have stopped inside the sampled step
            probe.close()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._probe is not None:
            self._log_measured(trainer, pl_module, outputs, batch, batch_idx)
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
        if self.measured:
            peak = self.measured["measured_peak"]
            rows.append(f"| measured peak of step {self.measure_step} (MemTracker) | {peak:.2f} |")
        ratio = self.last["optimizer_state"] / self.last["adamw_state"] if self.last["adamw_state"] else float("nan")
        table = "\n".join(["| category | MiB |", "|---|---:|", *rows, f"| state ÷ AdamW state | {ratio:.3f} |"])
        log.info("memory at the last measurement:\n%s", table)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("memory/summary", table, global_step=trainer.global_step)
