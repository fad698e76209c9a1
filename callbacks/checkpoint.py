"""ModelCheckpoint that refuses to write into a directory holding another run's checkpoints."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["SafeModelCheckpoint"]


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that stops before training when its directory already holds ``.ckpt`` files and the
    run is not a resume (``--ckpt_path``), instead of Lightning's warning followed by silent overwrites.
    All arguments are ``ModelCheckpoint``'s."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after Lightning has resolved --ckpt_path (unknown in setup) and before anything is written.
        super().on_fit_start(trainer, pl_module)
        if trainer.ckpt_path is not None or self.dirpath is None or trainer.fast_dev_run:
            return
        existing = sorted(Path(self.dirpath).glob("*.ckpt")) if Path(self.dirpath).is_dir() else []
        if existing:
            raise FileExistsError(
                f"checkpoint directory {self.dirpath} already holds {len(existing)} checkpoint(s) "
                f"(e.g. {existing[0].name}); resume with `--ckpt_path last`, or start a new run "
                f"(a new --trainer.logger.init_args.version or another save_dir)"
            )
