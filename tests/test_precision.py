"""Mixed precision (issue 19.4): what trains, and what is refused before training with a message naming the fix.

Found on the CPU build (torch 2.13, neuraloperator 2.0, Lightning 2.6): ``bf16-mixed`` trains the real and the
complex FNO (convolutions in bfloat16, FFTs in float32; ``16-mixed`` is run as ``bf16-mixed`` on CPU);
``*-true`` casts break the complex spectral weights on any device; ``fno_block_precision`` ``half``/``mixed`` needs
half-precision FFTs, which the CPU does not have and cuFFT has for power-of-two sizes only (``app.precision``).
"""

from __future__ import annotations

import json
import math
import sys
import warnings

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from app.cli import cli_main, main
from app.models import FNO
from app.module import OperatorModule
from app.precision import check_precision
from tests.test_cli import tiny_args
from tests.test_module import _Fields


class ForwardDtypes(Callback):
    """Records the output dtypes of the network's convolutions (``nn.Conv1d``: lifting, projection, skips, channel
    MLPs) and of its spectral convolutions during the training forward passes."""

    def __init__(self) -> None:
        self.conv: set[torch.dtype] = set()
        self.spectral: set[torch.dtype] = set()
        self._handles: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        def record(seen: set):
            def hook(module, args, out) -> None:
                if torch.is_grad_enabled():  # training steps only (not validation or the image callback)
                    seen.add(out.dtype)
            return hook

        for m in pl_module.modules():
            if isinstance(m, nn.Conv1d):
                self._handles.append(m.register_forward_hook(record(self.conv)))
            elif type(m).__name__ == "SpectralConv":
                self._handles.append(m.register_forward_hook(record(self.spectral)))

    def on_train_end(self, trainer, pl_module) -> None:
        for h in self._handles:
            h.remove()


def _callback_arg(cls: type) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{cls.__module__}.{cls.__qualname__}"})


def test_bf16_mixed_trains_the_real_fno_through_the_cli_with_convolutions_in_bfloat16(tmp_path):
    cli = cli_main(["fit", *tiny_args(tmp_path), "--trainer.precision=bf16-mixed", "--trainer.max_steps=3",
                    "--test_after_fit=false", _callback_arg(ForwardDtypes)])
    dtypes = next(c for c in cli.trainer.callbacks if isinstance(c, ForwardDtypes))
    assert cli.trainer.global_step == 3
    assert dtypes.conv == {torch.bfloat16}  # the forward pass ran in bfloat16 ...
    assert dtypes.spectral == {torch.float32}  # ... except the FFTs, which CPU autocast runs in float32
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss_step"]))
    # parameters (and so gradients and optimizer state) keep their dtypes: the spectral weights stay complex64
    assert {p.dtype for p in cli.model.parameters()} == {torch.float32, torch.complex64}


class _Data(LightningDataModule):
    """Fields on an ``s`` x ``s`` grid, complex or real: the attributes OperatorModule reads, nothing else."""

    def __init__(self, complex_data: bool, s: int = 8) -> None:
        super().__init__()
        self.train = _Fields(16, s, 0)
        if complex_data:
            self.train.x = torch.complex(self.train.x, self.train.x.roll(1, -1))
            self.train.y = torch.complex(self.train.y, -self.train.y)
        self.y_mean = self.train.y.mean().view(1)
        self.y_std = (self.train.y - self.y_mean).abs().pow(2).mean().sqrt().view(1)
        self.resolutions = [(s, s)]

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8)


def _fit(precision: str, complex_data: bool = True, accelerator: str = "cpu", s: int = 8,
         **fno) -> tuple[OperatorModule, Trainer, ForwardDtypes]:
    torch.manual_seed(0)
    net = FNO(n_modes=(4, 4), hidden_channels=8, n_layers=2, complex_data=complex_data, **fno)
    module, dtypes = OperatorModule(net, optimizer=lambda g: torch.optim.SGD(g, lr=0.05)), ForwardDtypes()
    module.initial = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer = Trainer(accelerator=accelerator, devices=1, max_steps=4, precision=precision, logger=False,
                      callbacks=[dtypes], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(precision|num_workers|does not have many workers).*")
        trainer.fit(module, datamodule=_Data(complex_data, s))
    return module, trainer, dtypes


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_the_complex_fno_on_cpu_close_to_full_precision(precision):
    full, _, full_dtypes = _fit("32-true")
    mixed, trainer, dtypes = _fit(precision)
    assert trainer.precision == "bf16-mixed"  # Lightning runs 16-mixed as bf16-mixed on CPU (it warns)
    assert full_dtypes.conv == {torch.float32} and dtypes.conv == {torch.bfloat16}
    assert dtypes.spectral == {torch.complex64}
    assert math.isfinite(float(trainer.callback_metrics["train/loss_step"]))
    assert {p.dtype for p in mixed.parameters()} == {torch.float32, torch.complex64}
    # 4 SGD steps from the same initialisation: the same updates, to bfloat16 rounding of the forward pass
    full_update = torch.cat([(p - full.initial[n]).flatten() for n, p in full.model.named_parameters()])
    mixed_update = torch.cat([(p - mixed.initial[n]).flatten() for n, p in mixed.model.named_parameters()])
    error = float((mixed_update - full_update).abs().norm() / full_update.abs().norm())
    assert 0 < error < 0.02, error  # measured: 0.002


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainer.precision=bf16-true"],
         "error: trainer.precision=bf16-true casts the whole model to bfloat16, but the FNO's spectral weights are "
         "complex and the cast turns them into real tensors (imaginary parts dropped); use trainer.precision="
         "bf16-mixed"),
        (["--trainer.precision=64-true"], "error: trainer.precision=64-true casts the whole model to float64"),
        (["--model.model.init_args.fno_block_precision=half"],
         "error: model.model.init_args.fno_block_precision=half runs the spectral convolutions' FFTs in half "
         "precision, which torch's CPU FFT does not support (float32 and float64 only); set fno_block_precision=full"),
        (["--model.model.init_args.fno_block_precision=mixed", "--trainer.precision=bf16-mixed"],
         "error: model.model.init_args.fno_block_precision=mixed runs the spectral convolutions' inverse FFTs in half "
         "precision, which torch's CPU FFT does not support"),
    ],
    ids=["bf16-true", "64-true", "fno-half", "fno-mixed"],
)
def test_settings_that_cannot_train_on_cpu_stop_before_training_with_one_line(tmp_path, monkeypatch, capsys, args,
                                                                                message):
    monkeypatch.setattr(sys, "argv", ["tgalore", "fit", *tiny_args(tmp_path), *args])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), err
    assert "Traceback" not in err and err.rstrip().endswith("to see where it was raised)")
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing trained, nothing written
    assert not (tmp_path / "runs" / "t").exists() or not any((tmp_path / "runs" / "t").iterdir())


def _fno(**kw) -> nn.Module:
    return FNO(n_modes=(4, 4), hidden_channels=4, n_layers=1, **kw)


def test_on_cuda_half_precision_spectral_blocks_need_power_of_two_grids_and_nothing_else_is_refused():
    """The check looks at the device: on CUDA ``fno_block_precision`` half/mixed is allowed where cuFFT can compute
    in half precision (power-of-two sizes, after domain padding), and autocast precisions are never refused."""
    for value in ("half", "mixed"):
        check_precision(_fno(fno_block_precision=value), "16-mixed", "cuda", [(16, 16), (64, 32)])
        check_precision(_fno(fno_block_precision=value), "32-true", "cuda", None)  # grids unknown: not refused
        with pytest.raises(ValueError, match=r"grid \[33, 33\] gives FFT sizes \[33, 33\]; use a power-of-two grid"):
            check_precision(_fno(fno_block_precision=value), "32-true", "cuda", [(16, 16), (33, 33)])
    # domain padding 0.25 pads a 16-point axis by 4 on each side: 24 points, not a power of two; 0.5 gives 32
    with pytest.raises(ValueError, match=r"FFT sizes \[24, 24\]"):
        check_precision(_fno(fno_block_precision="half", domain_padding=0.25), "32-true", "cuda", [(16, 16)])
    check_precision(_fno(fno_block_precision="half", domain_padding=0.5), "32-true", "cuda", [(16, 16)])
    for precision in ("bf16-mixed", "16-mixed", "32-true"):
        check_precision(_fno(), precision, "cuda", [(33, 33)])
        check_precision(_fno(complex_data=True), precision, "cpu", [(33, 33)])
    for precision in ("bf16-true", "16-true", "64-true"):  # the cast breaks the complex weights on any device
        with pytest.raises(ValueError, match=f"trainer.precision={precision} casts the whole model"):
            check_precision(_fno(), precision, "cuda", [(16, 16)])
    check_precision(nn.Conv2d(1, 1, 1), "bf16-true", "cpu", None)  # no complex weights: Lightning's cast is fine


@pytest.mark.gpu
@pytest.mark.parametrize("value", ["half", "mixed"])
def test_half_precision_spectral_blocks_train_on_cuda_at_a_power_of_two_grid(value):
    _, trainer, _ = _fit("32-true", complex_data=False, accelerator="cuda", s=16, fno_block_precision=value)
    assert math.isfinite(float(trainer.callback_metrics["train/loss_step"]))
