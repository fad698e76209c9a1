"""What ``MemoryMonitor``'s sampled measurement costs on CPU: the wall time of the one training step run under
torch's ``MemTracker`` against the same model's untracked steps.

    python -m bench.memory_monitor_cost            # the default job's FNO and batch (32 at 33x33), Tensor-GaLore
    python -m bench.memory_monitor_cost --steps 12 --batch 8

Builds the default job through ``tgalore``'s CLI (``configs/`` defaults, random data of its shape), trains
``--steps`` steps with a Lightning ``Trainer`` and a ``MemoryMonitor(measure_step=k)``, and times every step. Prints
the tracked step's time over the median of the untracked steps after it (step 1, which creates the optimizer state,
and the refresh steps are left out of the median).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from app.cli import cli_main
from callbacks.memory import MemoryMonitor


class _StepTimes(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.memory_monitor_cost")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--measure_step", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--grid", type=int, default=33)
    opts = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        module = cli_main(["--trainer.logger=false"], run=False).model
    gen = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(opts.batch, 1, opts.grid, opts.grid, generator=gen),
             "y": torch.randn(opts.batch, 1, opts.grid, opts.grid, generator=gen)}
    times, monitor = _StepTimes(), MemoryMonitor(log_every_n_steps=10**9, measure_step=opts.measure_step)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=opts.steps, max_epochs=1, logger=False,
                      callbacks=[times, monitor], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        trainer.fit(module, train_dataloaders=DataLoader([batch] * opts.steps, batch_size=None))
    k = opts.measure_step
    others = [t for i, t in enumerate(times.seconds) if i > k]
    ratio = times.seconds[k] / statistics.median(others)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {opts.batch} at "
          f"{opts.grid}x{opts.grid}: tracked step {k} {times.seconds[k] * 1e3:.0f} ms, median of steps "
          f"{k + 1}-{opts.steps - 1} {statistics.median(others) * 1e3:.0f} ms, ratio {ratio:.2f}x; measured peak "
          f"{monitor.measured['measured_peak']:.1f} MiB")
    return {"ratio": ratio, "seconds": times.seconds, "measured": monitor.measured}


if __name__ == "__main__":
    main()
