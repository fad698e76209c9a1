"""OperatorModule: a thin LightningModule around an injected neural operator (e.g. ``neuralop.models.FNO``).

Everything is injected: the network, the training loss, an optimizer factory and an optional LR-scheduler factory.
The module builds the parameter groups itself (``app.param_groups.split_param_groups``: spectral weights get
``galore=True``), so Tensor-GaLore, GaLore or plain AdamW all plug in through the config.

Data contract (see ``datamodules.base.PDEDataModule``): batches are ``{"x", "y"}`` shaped
``(batch, channels, *spatial)``; ``x`` arrives normalised, ``y`` in physical units. The network predicts ``y`` in
normalised units; the module decodes with the train-split statistics ``y_mean``/``y_std`` that it copies from the
datamodule at ``setup`` into buffers (saved with every checkpoint). Losses and metrics see physical units.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from neuralop.layers.channel_mlp import ChannelMLP
from neuralop.layers.complex import ComplexValued
from neuralop.layers.fno_block import FNOBlocks
from neuralop.models.base_model import BaseModel
from torch import Tensor, nn
from torch.nn.modules.loss import _Loss  # torch's loss base class: the CLI's --model.loss lists its subclasses
from torch.utils.checkpoint import checkpoint
from torchmetrics import MetricCollection

from app.fno_memory import LeanFNOLayers, install_sliced_contraction
from app.lr_schedules import CosineToEnd
from app.metrics import BANDS, RelativeH1, RelativeH1Loss, RelativeL2, RelativeL2Loss, SpectralBandError
from app.optim import TensorGRaDAdamW
from app.param_groups import split_param_groups
from app.precision import check_precision
from app.resume import DATA_IDENTITY_KEY, data_differences

log = logging.getLogger(__name__)

__all__ = ["OperatorModule", "checkpoint_fno_layers"]


class _Recomputed:
    """Mixin: the module's forward pass keeps only its inputs for backward and is run again there
    (``torch.utils.checkpoint``, non-reentrant: works with fused updates' per-parameter hooks, DDP and inputs that
    need no gradient; dropout draws the same numbers, the RNG state is restored). Without grad mode (evaluation)
    it is the plain forward."""

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return super().forward(*args, **kwargs)
        return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)


class CheckpointedFNOBlocks(_Recomputed, LeanFNOLayers, FNOBlocks):
    """neuraloperator's ``FNOBlocks``, each FNO layer (spectral convolution, skip, channel MLP) recomputed; the
    recomputed layer frees each intermediate after its last use (``app.fno_memory.LeanFNOLayers``)."""


class CheckpointedChannelMLP(_Recomputed, ChannelMLP):
    """neuraloperator's ``ChannelMLP`` (an FNO's lifting or projection), recomputed in backward."""


class CheckpointedComplexValued(_Recomputed, ComplexValued):
    """neuraloperator's ``ComplexValued`` wrapper (the complex FNO's lifting and projection), recomputed."""


_CHECKPOINTED = {FNOBlocks: CheckpointedFNOBlocks, ChannelMLP: CheckpointedChannelMLP,
                 ComplexValued: CheckpointedComplexValued}
_PLAIN = {v: k for k, v in _CHECKPOINTED.items()}


def checkpoint_fno_layers(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch activation checkpointing of an FNO on or off, in place: each FNO layer (``model.fno_blocks``) and
    the lifting and projection MLPs are recomputed in backward, so between the forward and the backward pass only
    their inputs stay alive. Parameters, state dict and results are unchanged (only the modules' classes change,
    to subclasses that differ in ``forward`` alone)."""
    blocks = getattr(model, "fno_blocks", None)
    if type(blocks) not in _CHECKPOINTED and type(blocks) not in _PLAIN:
        found = "no fno_blocks" if blocks is None else f"fno_blocks of type {type(blocks).__name__}"
        raise ValueError(
            f"activation_checkpointing=True recomputes each FNO layer in backward and needs a model with "
            f"neuraloperator's FNOBlocks at `model.fno_blocks` (an FNO), but {type(model).__name__} has {found}; "
            f"set model.activation_checkpointing=false"
        )
    for name in ("fno_blocks", "lifting", "projection"):
        sub = getattr(model, name, None)
        cls = type(sub)
        if enabled and cls in _CHECKPOINTED:
            sub.__class__ = _CHECKPOINTED[cls]
        elif not enabled and cls in _PLAIN:
            sub.__class__ = _PLAIN[cls]
    return model


def _check_tensorgrad_has_sparse_part(optimizer: torch.optim.Optimizer) -> None:
    """Refuse a ``TensorGRaDAdamW`` without a sparse part (``sparse_ratio`` 0 on every projected group): that is
    plain Tensor-GaLore under another name. A config that switches the class no longer carries over Tensor-GaLore's
    ``sparse_ratio=0`` (the CLI drops the earlier class's init_args), so this guards an explicit 0."""
    if not isinstance(optimizer, TensorGRaDAdamW):
        return
    if not any(g.get("galore") and g.get("sparse_ratio", 0) > 0 for g in optimizer.param_groups):
        raise ValueError(
            f"TensorGRaDAdamW with sparse_ratio={optimizer.defaults.get('sparse_ratio')} has no sparse part: it is "
            f"plain Tensor-GaLore (rank {optimizer.defaults.get('rank')}). Set "
            f"model.optimizer.init_args.sparse_ratio > 0 (TensorGRaD's default is 0.05), or use "
            f"app.optim.TensorGaLoreAdamW"
        )


def _is_plain(value: Any) -> bool:
    """True for data that ``torch.load(weights_only=True)`` accepts: primitives and containers of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _model_differences(checkpoint: Mapping, hparams: Mapping, own: Mapping[str, Tensor], limit: int = 6) -> list[str]:
    """How a checkpoint's network differs from this one: its configuration (when both carry the CLI's ``model``
    hyperparameters) and its parameter names and shapes."""
    out = []
    saved_cfg, cfg = (checkpoint.get("hyper_parameters") or {}).get("model"), hparams.get("model")
    if isinstance(saved_cfg, Mapping) and isinstance(cfg, Mapping):
        a, b = _flat(saved_cfg), _flat(cfg)
        for key in sorted(a.keys() & b.keys()):  # a setting added to the code since keeps old checkpoints loadable
            if a[key] != b[key]:
                out.append(f"model.{key}: {a[key]!r} in the checkpoint, {b[key]!r} here")
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, Mapping):
        return out + ["the checkpoint has no 'state_dict' (it is not a Lightning checkpoint of this module)"]
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    shapes = [
        f"{k}: {tuple(saved[k].shape)} in the checkpoint, {tuple(own[k].shape)} here"
        for k in sorted(own.keys() & saved.keys())
        if isinstance(saved[k], Tensor) and saved[k].shape != own[k].shape
    ]
    if missing:
        out.append(f"{len(missing)} parameter(s) missing from the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        out.append(f"{len(unexpected)} parameter(s) this model does not have, e.g. {unexpected[:3]}")
    out += [f"shape of {s}" for s in shapes[:limit]]
    if len(shapes) > limit:
        out.append(f"... and {len(shapes) - limit} more parameter(s) of another shape")
    return out


class OperatorModule(LightningModule):
    """Train a neural operator on PDE data.

    Args:
        model: the neural operator, e.g. ``neuralop.models.FNO`` (configured with ``class_path``/``init_args``).
            Its ``in_channels``/``out_channels`` are linked from the datamodule by the CLI.
        loss: training loss on decoded (physical-unit) fields; default ``app.metrics.RelativeL2Loss``.
            ``app.metrics.RelativeH1Loss`` trains in H1.
        optimizer: optimizer factory called with the parameter groups (a list of dicts; the spectral weights'
            group has ``galore=True``). Default: ``torch.optim.AdamW`` with its defaults.
        scheduler: optional LR-scheduler factory called with the optimizer.
        scheduler_interval: step the scheduler every ``epoch`` or every ``step``.
        scheduler_monitor: metric a plateau scheduler watches.
        h1_periodic: compute the H1 metric's gradient spectrally (periodic data) instead of by finite
            differences on a grid that includes both boundaries (Darcy).
        domain_length: side of the physical domain, for the H1 gradient.
        spectral_galore: mark the spectral weights' groups ``galore=True`` (projected by Tensor-GaLore); False
            gives every group ``galore=False`` (full-tensor complex-correct AdamW with the same optimizer).
        fused_update: update each parameter inside the backward pass, as soon as its gradient is ready, and free
            that gradient at once (``register_post_accumulate_grad_hook``), so the full gradients of all layers
            never coexist. Same result as ordinary steps. Needs ``accumulate_grad_batches=1`` and no gradient
            clipping (both need every gradient at once); works with any ``torch.optim`` optimizer.
        shard_optimizer_state: with more than one process (DDP), give each process the optimizer state of its
            share of the parameters (whole tensors, balanced by bytes of state) through torch's
            ``ZeroRedundancyOptimizer`` (``app.sharding``); checkpoints hold the full state (consolidated on rank
            0) and resume on any number of processes. With one process nothing changes (a warning says so).
            Cannot be combined with ``fused_update``.
        activation_checkpointing: recompute each FNO layer (spectral convolution, skip, channel MLP) and the
            lifting and projection MLPs in backward (``torch.utils.checkpoint``, non-reentrant) instead of keeping
            their saved activations: only their inputs stay alive. Same gradients; costs about one extra forward
            pass per step. Needs an FNO (``model.fno_blocks``); works with the complex FNO, ``fused_update``, DDP.
    """

    def __init__(
        self,
        model: BaseModel,
        loss: RelativeL2Loss | RelativeH1Loss | _Loss | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/l2",
        h1_periodic: bool = False,
        domain_length: float = 1.0,
        spectral_galore: bool = True,
        fused_update: bool = False,
        shard_optimizer_state: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():  # "model is an nn.Module": handled just below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        # Under LightningCLI the hparams are the parsed config (plain data); constructed from Python they would
        # hold the network object itself, which would make every checkpoint unloadable with weights_only=True.
        for key in [k for k, v in self.hparams.items() if not _is_plain(v)]:
            del self.hparams[key]
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if domain_length <= 0:
            raise ValueError(f"domain_length must be > 0, got {domain_length}")
        if shard_optimizer_state and fused_update:
            raise ValueError(
                "shard_optimizer_state=True shards the optimizer across DDP processes, but fused_update=True steps "
                "each parameter inside backward, before DDP has averaged its gradient (refused under DDP); set "
                "model.fused_update=false or model.shard_optimizer_state=false"
            )
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing:
            checkpoint_fno_layers(model)
        # one contiguous weight gradient per dense spectral convolution, not two (same values; app.fno_memory)
        install_sliced_contraction(model)
        self.model = model
        self.loss_fn = loss if loss is not None else RelativeL2Loss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.spectral_galore = spectral_galore
        self.fused_update = fused_update
        self.shard_optimizer_state = shard_optimizer_state
        # Fused updates run inside backward; Lightning's automatic loop would step the optimizer a second time.
        self.automatic_optimization = not fused_update
        self._fused_handles: list = []

        self.complex_data = bool(getattr(model, "complex_data", False))
        out_channels = int(getattr(model, "out_channels", 1))
        dtype = torch.complex64 if self.complex_data else torch.float32
        # Output normalisation (train-split statistics, per channel); identity until setup() copies them.
        self.register_buffer("y_mean", torch.zeros(out_channels, dtype=dtype))
        self.register_buffer("y_std", torch.ones(out_channels))

        metric_kw = dict(periodic=h1_periodic, domain_length=domain_length)
        self.val_metrics = MetricCollection({"l2": RelativeL2(), "h1": RelativeH1(**metric_kw)}, prefix="val/")
        self.test_names: list[str] = ["test"]
        self.test_metrics = nn.ModuleList([self._test_collection("test")])
        self._metric_kw = metric_kw

    # ------------------------------------------------------------------ setup
    def _test_collection(self, name: str) -> MetricCollection:
        kw = getattr(self, "_metric_kw", {})
        bands = {f"test_band/{b}_{name}": SpectralBandError(b) for b in BANDS}  # where the error sits in frequency
        return MetricCollection({f"test/l2_{name}": RelativeL2(), f"test/h1_{name}": RelativeH1(**kw), **bands})

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self._trainer is not None:  # before Lightning casts the module or runs a step (app.precision)
            check_precision(self.model, self.trainer.precision, self.trainer.strategy.root_device.type,
                            getattr(dm, "resolutions", None) or None)
        if dm is None:
            log.warning("no datamodule attached: outputs are not de-normalised (y_mean=0, y_std=1)")
            return
        for name in ("y_mean", "y_std"):
            value = getattr(dm, name, None)
            if value is None:
                continue
            buf = getattr(self, name)
            value = torch.as_tensor(value)
            if value.shape != buf.shape:
                raise ValueError(
                    f"datamodule {name} has shape {tuple(value.shape)} but the model has {buf.shape[0]} output "
                    f"channels; set model.init_args.out_channels to the data's channel count ({value.numel()})"
                )
            buf.copy_(value.to(buf.dtype))
        self._check_resolutions(getattr(dm, "resolutions", None))
        names = list(getattr(dm, "test_names", None) or ["test"])
        if names != self.test_names:
            self.test_names = names
            self.test_metrics = nn.ModuleList([self._test_collection(n) for n in names])

    def _check_resolutions(self, resolutions) -> None:
        """A Fourier layer keeps ``n_modes`` frequencies per axis: every grid must have at least that many points."""
        n_modes = getattr(self.model, "n_modes", None)
        if not resolutions or n_modes is None:
            return
        n_modes = tuple(int(m) for m in n_modes)
        for shape in resolutions:
            shape = tuple(int(s) for s in shape)
            if len(shape) != len(n_modes):
                raise ValueError(
                    f"the model has n_modes={list(n_modes)} ({len(n_modes)}-D) but the data has a {len(shape)}-D "
                    f"grid {list(shape)}; set model.init_args.n_modes to {len(shape)} values"
                )
            too_many = [(m, s) for m, s in zip(n_modes, shape, strict=True) if m > s]
            if too_many:
                fit = [min(m, s) for m, s in zip(n_modes, shape, strict=True)]
                raise ValueError(
                    f"the model keeps n_modes={list(n_modes)} Fourier modes but the data has a grid of {list(shape)} "
                    f"points; a grid cannot resolve more modes than it has points. Use a finer grid or set "
                    f"model.init_args.n_modes to at most {fit}"
                )

    # ------------------------------------------------------------------ forward
    def decode(self, out: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (out.ndim - 2)
        return out * self.y_std.view(shape) + self.y_mean.view(shape)

    def forward(self, x: Tensor) -> Tensor:
        """Prediction in physical units."""
        return self.decode(self.model(x))

    def _step(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch["x"], batch["y"]
        pred = self(x)
        if pred.shape != y.shape:
            raise ValueError(
                f"model output shape {tuple(pred.shape)} differs from target shape {tuple(y.shape)}; check "
                f"model.init_args.out_channels and the data"
            )
        return pred, y

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        pred, y = self._step(batch)
        loss = self.loss_fn(pred, y)
        # sync_dist: the logged value is the mean over DDP ranks (one scalar all-reduce; a no-op on one device)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=y.shape[0], sync_dist=True)
        if self.fused_update:
            self._fused_training_step(loss)
        return loss

    # ------------------------------------------------------------------ fused updates
    def on_train_start(self) -> None:
        if not self.fused_update:
            return
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"fused_update=True updates each parameter during backward, so it cannot accumulate gradients "
                f"(accumulate_grad_batches={trainer.accumulate_grad_batches}); set accumulate_grad_batches=1 or "
                f"fused_update=False"
            )
        if trainer.world_size > 1:
            raise ValueError(
                f"fused_update=True updates each parameter as soon as its local gradient is ready, before DDP has "
                f"averaged it over the {trainer.world_size} processes, so the processes would drift apart; set "
                f"model.fused_update=false for multi-device training"
            )
        if trainer.gradient_clip_val:
            raise ValueError(
                f"fused_update=True cannot clip by the global gradient norm (gradient_clip_val="
                f"{trainer.gradient_clip_val}): the gradients never coexist; unset gradient_clip_val or set "
                f"fused_update=False"
            )
        optimizer = self.optimizers(use_pl_optimizer=False)

        def update(p: Tensor) -> None:
            # Only ``p`` has a gradient now (the others are freed or not yet computed), so step() updates ``p``.
            optimizer.step()
            p.grad = None

        self._fused_handles = [
            p.register_post_accumulate_grad_hook(update) for p in self.parameters() if p.requires_grad
        ]

    def on_train_end(self) -> None:
        for h in self._fused_handles:
            h.remove()
        self._fused_handles = []

    def _fused_training_step(self, loss: Tensor) -> None:
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)  # the hooks update every parameter here
        opt.step()  # no gradients are left, so this only advances the step count and runs the callbacks' hooks
        if self.scheduler_factory is not None and self.scheduler_interval == "step":
            self._step_scheduler()

    def on_train_epoch_end(self) -> None:
        if self.fused_update and self.scheduler_factory is not None and self.scheduler_interval == "epoch":
            self._step_scheduler()

    def _step_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.trainer.callback_metrics.get(self.scheduler_monitor)
            if value is not None:
                scheduler.step(value)
        else:
            scheduler.step()

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        pred, y = self._step(batch)
        self.log("val/loss", self.loss_fn(pred, y), prog_bar=False, batch_size=y.shape[0], sync_dist=True)
        self.val_metrics.update(pred, y)
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=y.shape[0])
        # TensorBoard's hparams view shows hp_metric (a placeholder -1 until something is logged): the val L2
        self.log("hp_metric", self.val_metrics["l2"], batch_size=y.shape[0])

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        pred, y = self._step(batch)
        metrics = self.test_metrics[dataloader_idx]
        metrics.update(pred, y)
        self.log_dict(metrics, batch_size=y.shape[0], add_dataloader_idx=False)

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = {"pred": self(batch["x"])}
        out.update({k: v for k, v in batch.items()})
        decode_x = getattr(self.trainer.datamodule, "decode_x", None) if self._trainer is not None else None
        if callable(decode_x):  # x arrives normalised; pred and y are in physical units, so is what predict writes
            out["x"] = decode_x(batch["x"])
        return out

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        groups = split_param_groups(self.model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in groups:
            group["galore"] = group["galore"] and self.spectral_galore
            # torch's per-group parameter names: optimizers' messages (e.g. a non-finite gradient) name the parameter
            group.setdefault("param_names", [names[id(p)] for p in group["params"]])
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(groups)
        else:
            optimizer = self.optimizer_factory(groups)
            _check_tensorgrad_has_sparse_part(optimizer)
        optimizer = self._sharded(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, CosineToEnd) and self._trainer is not None:
            scheduler.set_length(self._run_length(), self.scheduler_interval)
        config = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if self.automatic_optimization:  # with fused updates the module steps the scheduler itself
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _run_length(self) -> int:
        """The run's length in scheduler steps: ``max_epochs`` (interval ``epoch``) or optimizer steps."""
        trainer = self.trainer
        if self.scheduler_interval == "epoch":
            if trainer.max_epochs is None or trainer.max_epochs < 1:
                raise ValueError(
                    f"the LR schedule steps per epoch and follows trainer.max_epochs, which is {trainer.max_epochs}; "
                    f"set trainer.max_epochs, or model.scheduler_interval=step to follow trainer.max_steps"
                )
            return int(trainer.max_epochs)
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError("the LR schedule follows the run's length, but neither trainer.max_epochs nor "
                             "trainer.max_steps bounds it; set one of them")
        return int(steps)

    def _sharded(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """``optimizer``, wrapped by ``app.sharding.shard_optimizer`` when ``shard_optimizer_state`` and DDP with
        more than one process (called after the process group exists: Lightning builds optimizers in
        ``strategy.setup``)."""
        if not self.shard_optimizer_state:
            return optimizer
        trainer = self._trainer
        world_size = trainer.world_size if trainer is not None else 1
        if world_size <= 1:
            warnings.warn(
                "model.shard_optimizer_state=true has no effect with one process: the optimizer state is not "
                "sharded (it shards across DDP processes, e.g. --trainer.devices 2 --trainer.strategy ddp)",
                UserWarning,
                stacklevel=2,
            )
            return optimizer
        from lightning.pytorch.strategies import DDPStrategy

        if not isinstance(trainer.strategy, DDPStrategy):
            raise ValueError(
                f"model.shard_optimizer_state=true shards the optimizer state across DDP processes, but the strategy "
                f"is {type(trainer.strategy).__name__}; use --trainer.strategy ddp or model.shard_optimizer_state="
                f"false"
            )
        from app.sharding import shard_optimizer

        sharded = shard_optimizer(optimizer)
        log.info("optimizer state sharded over %d processes (ZeroRedundancyOptimizer)", world_size)
        return sharded

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        identity = getattr(self.trainer.datamodule, "identity", None) if self._trainer is not None else None
        if callable(identity):  # what the data is: a resume on other data is refused (app.resume)
            checkpoint[DATA_IDENTITY_KEY] = identity()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with the differences, a checkpoint of another network (before Lightning loads its weights), and
        a resumed fit on other data than the checkpoint was trained on."""
        problems = _model_differences(checkpoint, self.hparams, self.state_dict())
        source = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        dm = self.trainer.datamodule if fitting else None
        if not problems and callable(getattr(dm, "identity", None)):
            data = data_differences(checkpoint.get(DATA_IDENTITY_KEY), dm.identity())
            if data:
                raise ValueError(
                    f"the checkpoint {source or ''} was trained on other data than this configuration describes:\n  "
                    + "\n  ".join(data) + "\nResume with the data it was trained on (the config.yaml in its run "
                    "directory), or start a new run without --ckpt_path"
                )
        if problems:
            raise ValueError(
                f"the checkpoint {source or ''} was saved from a different model than this configuration describes:"
                f"\n  " + "\n  ".join(problems) + "\nUse the configuration it was trained with (the config.yaml in "
                "its run directory: `tgalore fit -c <run dir>/config.yaml --ckpt_path <checkpoint>`), or start a new "
                "run without --ckpt_path"
            )

    def state_dict(self, *args, **kwargs):
        """The state dict without non-tensor entries.

        neuraloperator's models add a top-level ``_metadata`` entry (their init arguments, including objects such
        as the activation function) to any state dict they are part of; kept, it makes checkpoints unloadable
        with ``torch.load(weights_only=True)`` and ``load_state_dict`` fail on an unexpected key.
        """
        sd = super().state_dict(*args, **kwargs)
        for key in [k for k, v in sd.items() if not isinstance(v, Tensor)]:
            del sd[key]
        return sd
