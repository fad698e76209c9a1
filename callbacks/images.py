"""TensorBoard images of input / prediction / truth / error for a few fixed validation samples."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

log = logging.getLogger(__name__)

__all__ = ["PredictionImages", "field_figure"]


def _real_view(t: torch.Tensor) -> torch.Tensor:
    return t.abs() if t.is_complex() else t


def field_figure(x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, title: str = ""):
    """A matplotlib figure: one row per sample, columns input / prediction / truth / |error|.

    Fields are ``(n, channels, *spatial)`` with 1 or 2 spatial dims; the first channel is drawn (modulus for
    complex fields).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = x.shape[0]
    cols = [("input", x), ("prediction", pred), ("truth", y), ("|error|", (pred - y).abs())]
    fig, axes = plt.subplots(n, 4, figsize=(12, 2.8 * n), squeeze=False)
    for i in range(n):
        vmin, vmax = float(_real_view(y[i, 0]).min()), float(_real_view(y[i, 0]).max())
        for j, (name, field) in enumerate(cols):
            ax = axes[i, j]
            f = _real_view(field[i, 0]).float().cpu().numpy()
            if f.ndim == 1:
                ax.plot(f)
                if j in (1, 2):
                    ax.set_ylim(vmin - 0.05 * abs(vmax - vmin), vmax + 0.05 * abs(vmax - vmin))
            else:
                kw = {"vmin": vmin, "vmax": vmax} if j in (1, 2) else {}
                im = ax.imshow(f, origin="lower", cmap="viridis", **kw)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
                ax.set_xticks([])
                ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


class PredictionImages(Callback):
    """Every ``every_n_epochs`` validation epochs, log a figure of ``n_samples`` fixed validation samples.

    Args:
        every_n_epochs: how often to log (validation epochs).
        n_samples: how many validation samples (the first ones of the validation set, so always the same).
    """

    def __init__(self, every_n_epochs: int = 5, n_samples: int = 3) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.every_n_epochs = every_n_epochs
        self.n_samples = n_samples

    def _samples(self, trainer: Trainer):
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            return None
        ds = loader.dataset
        items = [ds[i] for i in range(min(self.n_samples, len(ds)))]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs != 0 and trainer.current_epoch != trainer.max_epochs - 1:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        batch = self._samples(trainer)
        if batch is None:
            return
        with torch.no_grad():
            pred = pl_module(batch["x"].to(pl_module.device)).cpu()
        decode_x = getattr(trainer.datamodule, "decode_x", None)  # the loader's x is normalised; draw physical units
        x = decode_x(batch["x"]) if callable(decode_x) else batch["x"]
        fig = field_figure(x, batch["y"], pred, title=f"epoch {trainer.current_epoch}")
        for lg in loggers:
            lg.experiment.add_figure("val/predictions", fig, global_step=trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(fig)
