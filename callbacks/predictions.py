"""Write ``predict`` results to disk: one ``.pt`` (decoded fields) and one PNG per batch."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from callbacks.images import field_figure

log = logging.getLogger(__name__)

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Save every predicted batch as ``<output_dir>/batch_<k>.pt`` (dict of CPU tensors ``pred``, ``y``, ``x``, all
    in physical units: ``OperatorModule.predict_step`` decodes the normalised input) plus ``batch_<k>.png`` with the
    first ``n_plot`` samples.

    Args:
        output_dir: where to write; default ``<run dir>/predictions``. An existing non-empty directory is refused
            (choose another or delete it) so that earlier predictions are never overwritten.
        n_plot: samples drawn per batch PNG (0 = no PNG).
    """

    def __init__(self, output_dir: str | None = None, n_plot: int = 4) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.n_plot = n_plot
        self._dir: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        out = Path(self.output_dir) if self.output_dir else Path(trainer.log_dir or ".") / "predictions"
        if trainer.is_global_zero and out.exists() and any(out.iterdir()):
            raise FileExistsError(
                f"prediction directory {out} is not empty; set --trainer.callbacks...output_dir to a new folder "
                f"or remove it"
            )
        self._dir = out

    def write_on_batch_end(
        self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx: int, dataloader_idx: int
    ) -> None:
        assert self._dir is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        data = {k: v.detach().cpu() for k, v in prediction.items() if isinstance(v, torch.Tensor)}
        stem = f"batch_{dataloader_idx}_{batch_idx:05d}" if dataloader_idx else f"batch_{batch_idx:05d}"
        if trainer.world_size > 1:
            stem += f"_rank{trainer.global_rank}"
        tmp = self._dir / f".{stem}.pt.tmp"
        torch.save(data, tmp)
        os.replace(tmp, self._dir / f"{stem}.pt")
        if self.n_plot and {"x", "y", "pred"} <= data.keys():
            import matplotlib.pyplot as plt

            k = min(self.n_plot, data["pred"].shape[0])
            fig = field_figure(data["x"][:k], data["y"][:k], data["pred"][:k], title=stem)
            fig.savefig(self._dir / f"{stem}.png", dpi=80)
            plt.close(fig)
        log.info("wrote predictions %s", self._dir / f"{stem}.pt")
