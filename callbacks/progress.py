"""Progress output: a plain line every N steps and at each epoch's end when stdout is not a terminal (SLURM logs,
``| tee``), where a redrawn bar prints nothing useful; and Lightning's bar without its ``v_num`` field.

The ``tgalore`` CLI picks one of them by ``sys.stdout.isatty()`` unless the configuration names a progress bar
itself. Both are progress bars (Lightning's ``ProgressBar``), i.e. the trainer's user-facing output, and, like
Lightning's own bar, they write to stdout.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

__all__ = ["PlainProgressBar", "Bar"]


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class PlainProgressBar(ProgressBar):
    """One line per ``every_n_steps`` optimizer steps and one at the end of every epoch, e.g.
    ``epoch 3/30  step 120/870  loss 0.0231  val/l2 0.0412  elapsed 1:02  eta 5:10``.

    Args:
        every_n_steps: steps between lines within an epoch (0: only at the end of each epoch).
        stream: where to write (default: ``sys.stdout`` at the time of writing).
    """

    def __init__(self, every_n_steps: int = 100, stream: TextIO | None = None) -> None:
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps!r} is invalid; use an int >= 0 (0: once per epoch)")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._start: tuple[float, int] | None = None
        self._last_step = -1

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = (time.monotonic(), trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._write(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    def line(self, trainer: Trainer) -> str:
        """The progress line for the trainer's current state (epochs counted from 1)."""
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        steps = f"/{int(total)}" if math.isfinite(total) else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}", f"step {step}{steps}"]
        metrics = trainer.callback_metrics
        for key, name in (("train/loss_step", "loss"), ("val/l2", "val/l2")):
            if key in metrics:
                parts.append(f"{name} {float(metrics[key]):.4g}")
        t0, step0 = self._start or (time.monotonic(), step)
        elapsed = time.monotonic() - t0
        rate = (step - step0) / elapsed if elapsed > 0 else 0.0
        eta = (total - step) / rate if rate > 0 and math.isfinite(total) else float("nan")
        parts += [f"elapsed {_clock(elapsed)}", f"eta {_clock(eta)}"]
        return "  ".join(parts)

    def _write(self, trainer: Trainer) -> None:
        if not self._enabled or not trainer.is_global_zero or trainer.sanity_checking:
            return
        self._last_step = trainer.global_step
        stream = self.stream or sys.stdout
        stream.write(self.line(trainer) + "\n")
        stream.flush()


class Bar(TQDMProgressBar):
    """Lightning's progress bar without ``v_num`` (the run's version, which it showed as ``0.000``; the run
    directory is printed at the end of fit)."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
