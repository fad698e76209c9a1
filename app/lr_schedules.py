"""LR schedules whose length is the run's: they read it from the trainer instead of repeating it in a config.

``CosineAnnealingLR(T_max=30)`` next to ``trainer.max_epochs: 30`` is a copy that goes stale: with
``--trainer.max_epochs 50`` the LR reaches zero at epoch 30 and climbs back up. :class:`CosineToEnd` has no length
argument; ``OperatorModule.configure_optimizers`` sets it from the trainer (:meth:`CosineToEnd.set_length`) every
time training starts, so a resume with more epochs stretches the schedule, and says so.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)

__all__ = ["CosineToEnd"]


class CosineToEnd(LRScheduler):
    """Cosine decay of every group's LR from its initial value to ``eta_min`` over the whole run.

    The length is the trainer's, set by ``OperatorModule`` before training: ``trainer.max_epochs`` when the
    scheduler steps per epoch (``model.scheduler_interval: epoch``), the trainer's number of optimizer steps
    (``max_steps``, or what ``max_epochs`` gives) when it steps per step. The LR at step ``t`` of ``T`` is
    ``eta_min + (lr0 - eta_min) * (1 + cos(pi * t / T)) / 2`` (closed form, so it depends on ``t`` and ``T`` only)
    and stays at ``eta_min`` after ``T``.

    Resuming with another length (e.g. more epochs) keeps the position ``t`` and continues on the new curve: the LR
    moves at once to its value at ``t`` of the new length, and a warning says from which value to which.

    Args:
        optimizer: the optimizer.
        eta_min: the final LR.
    """

    def __init__(self, optimizer: Optimizer, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if not eta_min >= 0:
            raise ValueError(f"eta_min={eta_min!r} is invalid; use a learning rate >= 0")
        self.eta_min = float(eta_min)
        self.length: int | None = None  # set by set_length before the first step
        self.unit = "step"
        super().__init__(optimizer, last_epoch)

    def set_length(self, length: int, unit: str = "step") -> None:
        """The run's length in scheduler steps (``unit`` names them in messages: ``epoch`` or ``step``)."""
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ValueError(f"the LR schedule needs a run length >= 1, got {length!r}")
        self.length, self.unit = length, unit

    def _lrs_at(self, t: int, length: int | None) -> list[float]:
        if t <= 0:
            return list(self.base_lrs)
        if length is None:
            raise RuntimeError(
                "CosineToEnd has no length: OperatorModule sets it from the trainer; outside the app call "
                "set_length(total_steps) before stepping"
            )
        frac = min(t, length) / length
        return [self.eta_min + (lr0 - self.eta_min) * (1 + math.cos(math.pi * frac)) / 2 for lr0 in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self._lrs_at(self.last_epoch, self.length)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position; the length stays the current run's (see the class docstring)."""
        length, unit = self.length, self.unit
        saved = state_dict.get("length")
        super().load_state_dict(state_dict)
        self.unit = unit
        if length is None or saved == length:
            self.length = saved if length is None else length
            return
        self.length = length
        t = self.last_epoch
        before, after = self._lrs_at(t, saved)[0], self._lrs_at(t, length)[0]
        for group, lr in zip(self.optimizer.param_groups, self._lrs_at(t, length), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        end = "stays at eta_min" if t >= length else f"decays to {self.eta_min:g} at {self.unit} {length}"
        log.warning(
            "the LR schedule was planned for %s %ss and now follows the trainer's %d: at %s %d the LR goes from "
            "%.3g (the old plan) to %.3g and %s",
            saved, self.unit, length, self.unit, t, before, after, end,
        )
