"""Measured peak memory of real training steps, by category, with torch's ``MemTracker`` (and, on CUDA, the
allocator's ``max_memory_allocated``): parameters, gradients, optimizer state, activations and temporaries.

Tensor bytes, never RSS. Kept apart from :mod:`app.memory` (exact byte counts, imported by ``app.optim``) because
this module needs Lightning: the measured steps are the product's own training loop.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch
from lightning.pytorch import Callback
from torch.distributed._tools.mem_tracker import MemTracker
from torch.optim.optimizer import register_optimizer_step_pre_hook

from app.memory import optimizer_state_bytes

__all__ = ["CATEGORIES", "MeasuredPeak", "StepMemoryProbe", "measure_training_steps", "random_batch"]


CATEGORIES = ("params", "grads", "optimizer_state", "activations", "temporaries")

# MemTracker's reference types -> ours. "Other" is what track_external registers that is none of the rest: the
# batch. Optimizer-step temporaries are tracked as "Optstate"; measure_training_steps moves them to temporaries.
_TRACKER_CATEGORY = {
    "Parameter": "params",
    "Buffer": "params",
    "Gradient": "grads",
    "Optstate": "optimizer_state",
    "Activation": "activations",
    "Temp": "temporaries",
    "Other": "temporaries",
}


@dataclass(frozen=True)
class MeasuredPeak:
    """The measured peak of real training steps, in bytes.

    ``at_peak``: the bytes of each category alive at the moment of the total peak (they sum to ``peak``).
    ``max_by_category``: each category's own maximum over the steps (not simultaneous; what an estimator of that
    category predicts). ``cuda_max_allocated``: the CUDA allocator's peak during the steps (None off CUDA); it
    includes the allocator's rounding, so it is a little above ``peak``. ``step_seconds``: wall time of each
    measured step, tracker included (it adds a Python call per tensor operation: little next to large tensors).
    """

    peak: int
    at_peak: dict[str, int]
    max_by_category: dict[str, int]
    cuda_max_allocated: int | None
    step_seconds: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"measured_peak_bytes": self.peak, **asdict(self)}


def _fold(snapshot: dict) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for key, value in snapshot.items():
        name = getattr(key, "value", key)
        if name in _TRACKER_CATEGORY:
            out[_TRACKER_CATEGORY[name]] += int(value)
    return out


class _CategoryTracker(MemTracker):
    """MemTracker that also keeps each of our categories' own maximum (MemTracker keeps the snapshot at the total
    peak only)."""

    def __init__(self) -> None:
        super().__init__()
        self.category_max: dict[str, int] = dict.fromkeys(CATEGORIES, 0)

    def _register_global_optimizer_hook(self) -> None:
        """MemTracker counts everything inside ``optimizer.step`` as optimizer state; Lightning's automatic
        optimization runs the forward and backward pass inside it (as the step's closure). So a step given a
        closure is counted as the step only from Lightning's ``on_before_optimizer_step`` on (the probe sets it)."""
        super()._register_global_optimizer_hook()
        pre, post = self._optimizer_hook_handles
        pre.remove()

        def pre_hook(optimizer, args, kwargs) -> None:
            self._in_opt = kwargs.get("closure") is None and not (args and args[0] is not None)

        self._optimizer_hook_handles = (register_optimizer_step_pre_hook(pre_hook), post)

    def _update_peak_stats(self, peak_state) -> None:  # called by MemTracker after every operation
        super()._update_peak_stats(peak_state)
        for snap in self._curr_mem_snap.values():
            for key, value in _fold(snap).items():
                if value > self.category_max[key]:
                    self.category_max[key] = value


class StepMemoryProbe(Callback):
    """Lightning callback measuring the peak of the first ``steps`` training batches with torch's ``MemTracker``
    (parameters, gradients, optimizer state, activations, temporaries; tensor bytes, not RSS) and, on CUDA, with
    ``torch.cuda.max_memory_allocated``. Result in ``self.result`` (a :class:`MeasuredPeak`) after the last of them.

    The tracker sees every tensor operation through a ``TorchDispatchMode``, so the measured steps run slower
    (a few percent for large tensors, more for many small ones); nothing is tracked before or after them.
    """

    def __init__(self, steps: int = 2, first: int = 0) -> None:
        if steps < 1 or first < 0:
            raise ValueError(f"steps must be >= 1 and first >= 0, got steps={steps}, first={first}")
        self.steps, self.first = steps, first
        self.result: MeasuredPeak | None = None
        self._tracker = None
        self._start = 0.0
        self._seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._tracker is not None:  # a later measured step: the tracker's per-module statistics hold one forward
            self._tracker.reset_mod_stats()
            self._start = time.perf_counter()
            return
        if trainer.global_step != self.first or self.result is not None:
            return
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        tracker = _CategoryTracker()
        tracker.track_external(pl_module, optimizer, batch)
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        tracker.__enter__()
        self._tracker, self._start = tracker, time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._tracker is not None:  # the closure (forward, backward) has run: the step's own work starts
            self._tracker._in_opt = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tracker = self._tracker
        if tracker is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._seconds.append(time.perf_counter() - self._start)
        if trainer.global_step < self.first + self.steps:
            return
        tracker.__exit__(None, None, None)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.result = _result(tracker, optimizer, pl_module.device, tuple(self._seconds))
        self._tracker = None

    def close(self) -> None:
        """Stop tracking if a measured step is in progress (training stopped inside it); no result is made."""
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.__exit__(None, None, None)

    def on_train_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.close()


def _result(tracker, optimizer, device: torch.device, seconds: tuple[float, ...]) -> MeasuredPeak:
    dev = torch.device(device.type, device.index) if device.index is not None else device
    snaps = tracker._peak_mem_snap
    snap = snaps.get(dev) or next(iter(snaps.values()), {})
    at_peak = _fold(snap)
    maxima = dict(tracker.category_max)
    # "Optstate" holds the optimizer step's temporaries too while they live: the state is its tensors' bytes after
    # the step (at the peak, what is above them is the step's workspace)
    state = optimizer_state_bytes(optimizer) if optimizer is not None else 0
    extra = max(0, at_peak["optimizer_state"] - state)
    at_peak["optimizer_state"] -= extra
    at_peak["temporaries"] += extra
    maxima["optimizer_state"] = min(maxima["optimizer_state"], state)
    peak = int(sum(at_peak.values()))
    cuda = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return MeasuredPeak(peak=peak, at_peak=at_peak, max_by_category=maxima, cuda_max_allocated=cuda,
                       step_seconds=seconds)


def random_batch(
    input_shape, out_channels: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A seeded random batch ``{"x", "y"}`` to measure training steps on: ``x`` of ``input_shape`` (batch,
    channels, *grid), ``y`` with ``out_channels`` on the same grid (memory does not depend on the values)."""
    batch, _, *grid = tuple(input_shape)
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(tuple(input_shape), dtype=dtype, generator=gen),
            "y": torch.randn((batch, out_channels, *grid), dtype=dtype, generator=gen)}


def measure_training_steps(
    module,
    batch: dict[str, torch.Tensor],
    *,
    steps: int = 2,
    accelerator: str = "cpu",
    precision: str | int | None = None,
) -> MeasuredPeak:
    """Train ``module`` (a LightningModule, e.g. ``OperatorModule``) for ``steps`` optimizer steps on ``batch``
    with a Lightning ``Trainer`` (the product's own training loop: forward, loss, backward, optimizer step, fused
    updates and precision plugins included) and return the measured peak over those steps.

    The first step creates the optimizer state (and Tensor-GaLore's first subspace), the second runs with it, so
    two steps (the default) give the steady-state peak. The module is trained in place.
    """
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    probe = StepMemoryProbe(steps=steps)
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        max_epochs=1,  # the loader holds ``steps`` batches: one epoch (an LR schedule per epoch needs a length)
        precision=precision if precision is not None else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[probe],
    )
    loader = DataLoader([batch] * steps, batch_size=None)
    with warnings.catch_warnings():  # "no datamodule", "few workers", "no validation": a measurement, not a run
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|val_dataloader).*")
        trainer.fit(module, train_dataloaders=loader)
    if probe.result is None:
        raise RuntimeError(f"training stopped before {steps} steps; nothing was measured")
    return probe.result
