"""The command line, driven from Python: configs, fit, resume, test, predict, --help/--print_config."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.cli import cli_main, main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml"))

# A tiny generated Darcy problem and a tiny FNO: every CLI test runs in seconds.
def tiny_args(tmp_path: Path, name: str = "t") -> list[str]:
    return [
        "--seed_everything=0",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.model.init_args.n_modes=[4,4]",
        "--model.model.init_args.hidden_channels=8",
        "--model.model.init_args.n_layers=2",
        f"--data.init_args.data_dir={tmp_path / 'data'}",
        "--data.init_args.resolution=9",
        "--data.init_args.test_resolutions=[9,17]",
        "--data.init_args.solve_resolution=17",
        "--data.init_args.n_train=24",
        "--data.init_args.n_test=6",
        "--data.init_args.batch_size=8",
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses_and_instantiates(config, tmp_path):
    cli = cli_main(["-c", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model is not None and cli.datamodule is not None
    # data-derived values are linked into the model, not copied
    assert cli.model.model.in_channels == cli.datamodule.in_channels


@pytest.mark.parametrize("config", ["tensorgrad.yaml", "tensorgrad_bf16.yaml"])
def test_tensorgrad_configs_over_the_default_optimizer_keep_tensorgrads_rank_and_sparse_part(config, tmp_path):
    # the class switch drops the default job's Tensor-GaLore init_args; the presets' own values apply
    cli = cli_main(["-c", str(REPO / "configs" / "optim" / config), f"--trainer.default_root_dir={tmp_path}"],
                   run=False)
    opt = cli.model.optimizer_factory([{"params": [torch.nn.Parameter(torch.zeros(2))]}])
    assert type(opt).__name__ == "TensorGRaDAdamW"
    assert (opt.defaults["rank"], opt.defaults["sparse_ratio"]) == (0.2, 0.05)


def test_tensorgrad_without_a_sparse_part_stops_before_training(tmp_path, monkeypatch, capsys):
    # an explicit sparse_ratio 0 makes TensorGRaD plain Tensor-GaLore: refused
    monkeypatch.setattr(sys, "argv", ["tgalore", "fit", *tiny_args(tmp_path),
                                      "--model.optimizer=app.optim.TensorGRaDAdamW",
                                      "--model.optimizer.init_args.sparse_ratio=0.0"])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    message = "error: TensorGRaDAdamW with sparse_ratio=0.0 has no sparse part"
    assert len(errors) == 1 and errors[0].startswith(message), err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_fit_fast_dev_run(tmp_path):
    cli_main(["fit", *tiny_args(tmp_path), "--trainer.fast_dev_run=2", "--test_after_fit=false"])


def _params(ckpt_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt_path, weights_only=True)["state_dict"]


def test_fit_then_resume_with_ckpt_path_last_matches_an_uninterrupted_run(tmp_path):
    full = cli_main(["fit", *tiny_args(tmp_path, "full"), "--trainer.max_epochs=2", "--test_after_fit=false"])
    full_ckpt = Path(full.trainer.checkpoint_callback.last_model_path)

    cli_main(["fit", *tiny_args(tmp_path, "split"), "--trainer.max_epochs=1", "--test_after_fit=false"])
    resumed = cli_main(
        ["fit", *tiny_args(tmp_path, "split"), "--trainer.max_epochs=2", "--ckpt_path=last", "--test_after_fit=false"]
    )
    resumed_ckpt = Path(resumed.trainer.checkpoint_callback.last_model_path)
    # the resumed run continued in the same run directory
    assert resumed_ckpt.parent.parent.name == "version_0"
    assert resumed.trainer.current_epoch == 2
    a, b = _params(full_ckpt), _params(resumed_ckpt)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ckpt = torch.load(resumed_ckpt, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["optimizer_states"]


def test_the_lr_schedule_follows_max_epochs_or_the_runs_steps_and_hp_metric_is_the_val_l2(tmp_path):
    cli = cli_main(["fit", *tiny_args(tmp_path, "lr"), "--trainer.max_epochs=3", "--test_after_fit=false"])
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.length == 3 and scheduler.get_last_lr() == [0.0] * len(scheduler.base_lrs)
    metrics = cli.trainer.callback_metrics
    assert float(metrics["hp_metric"]) == float(metrics["val/l2"])  # not Lightning's placeholder -1
    cli = cli_main(["fit", *tiny_args(tmp_path, "lr_step"), "--trainer.max_epochs=2", "--test_after_fit=false",
                    "--model.scheduler_interval=step"])
    assert cli.trainer.lr_scheduler_configs[0].scheduler.length == 2 * 3  # 2 epochs of 3 batches (22 samples, 8 each)


def test_cosine_to_end_reaches_eta_min_at_the_end_and_a_longer_resume_continues_on_the_new_curve(caplog):
    import logging

    from app.lr_schedules import CosineToEnd

    def make(length):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = CosineToEnd(opt, eta_min=0.1)
        sched.set_length(length, "epoch")
        return opt, sched

    opt, sched = make(4)
    lrs = []
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[3:] == [pytest.approx(0.1)] * 3 and lrs == sorted(lrs, reverse=True)  # never back up
    state = sched.state_dict()
    opt2, sched2 = make(8)
    opt2.load_state_dict(opt.state_dict())
    with caplog.at_level(logging.WARNING, logger="app.lr_schedules"):
        sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 6 / 8)) / 2)
    assert "planned for 4 epochs and now follows the trainer's 8: at epoch 6 the LR goes from 0.1" in caplog.text


def test_best_without_a_recorded_best_checkpoint_says_what_is_missing(tmp_path):
    from app.cli import resolve_best_checkpoint

    (tmp_path / "runs/x/version_0/checkpoints").mkdir(parents=True)
    torch.save({"callbacks": {"ModelCheckpoint": {"best_model_path": ""}}},
               tmp_path / "runs/x/version_0/checkpoints/last.ckpt")
    with pytest.raises(ValueError, match=r"no best checkpoint: its checkpoint callback monitors no metric .* or has "
                                         r"not validated yet. Use --ckpt_path last"):
        resolve_best_checkpoint(str(tmp_path / "runs"), "x")


def test_a_user_error_message_never_advises_unsafe_loading(tmp_path):
    from app.cli import user_message
    from datamodules.io import load_pt

    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError) as err:
        load_pt(tmp_path / "random.pt", "data file")
    text = user_message(err.value)
    assert "random.pt could not be read" in text and "weights_only=True" in text
    assert "False" not in text and "arbitrary code" not in text


def test_the_progress_bar_does_not_show_v_num(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks.progress import Bar

    bar = Bar()
    trainer = Trainer(logger=TensorBoardLogger(tmp_path), callbacks=[bar], accelerator="cpu")
    assert "v_num" not in bar.get_metrics(trainer, None)


def test_resume_without_any_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        cli_main(["fit", *tiny_args(tmp_path, "none"), "--ckpt_path=last"])


def test_existing_checkpoints_are_never_overwritten_silently(tmp_path):
    cli_main(["fit", *tiny_args(tmp_path, "x"), "--trainer.max_epochs=1", "--test_after_fit=false"])
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs/x/version_0/checkpoints").glob("*.ckpt")}
    with pytest.raises(FileExistsError, match="--ckpt_path last"):
        cli_main(
            ["fit", *tiny_args(tmp_path, "x"), "--trainer.logger.init_args.version=0", "--trainer.max_epochs=1"]
        )
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs/x/version_0/checkpoints").glob("*.ckpt")}
    assert before == after


def test_fit_tests_the_best_checkpoint_per_resolution_and_predict_writes_files(tmp_path, capsys):
    cli = cli_main(["fit", *tiny_args(tmp_path, "e2e"), "--trainer.max_epochs=1"])
    metrics = cli.trainer.callback_metrics
    for name in ("res9", "res17"):
        assert 0 < float(metrics[f"test/l2_{name}"]) < 10
        assert 0 < float(metrics[f"test/h1_{name}"]) < 10
    out = capsys.readouterr().out
    assert "Final test relative errors" in out and "res17" in out
    run_dir = tmp_path / "runs/e2e/version_0"
    assert list(run_dir.glob("events.out.tfevents*")) and (run_dir / "config.yaml").is_file()

    ckpt = run_dir / "checkpoints/last.ckpt"
    pred = cli_main(["predict", *tiny_args(tmp_path, "e2e"), f"--ckpt_path={ckpt}"])
    pred_dir = Path(pred.trainer.log_dir) / "predictions"
    assert pred_dir.parent != run_dir  # a new run directory: the training run's files are left alone
    files = sorted(pred_dir.glob("batch_*.pt"))
    assert files and sorted(pred_dir.glob("batch_*.png"))
    batch = torch.load(files[0], weights_only=True)
    assert batch["pred"].shape == batch["y"].shape
    # every field in physical units: x is Darcy's coefficient, 3 or 12 (not the normalised loader input)
    assert set(batch["x"].round(decimals=3).unique().tolist()) <= {3.0, 12.0}

    # --ckpt_path best: the run's best checkpoint by val/l2, as its last.ckpt records it
    best = cli_main(["test", *tiny_args(tmp_path, "e2e"), "--ckpt_path=best"])
    assert Path(best.trainer.ckpt_path).name.startswith("epoch000-val_l2")


def _program(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout


def test_help_and_print_config_run_as_a_program(tmp_path):
    help_out = _program("fit", "--help")
    assert "--model.optimizer" in help_out and "--ckpt_path" in help_out
    # model.model lists neural operators only, the loss only losses: about 670 lines, not 1,700
    assert len(help_out.splitlines()) < 800 and "torch.nn.Conv2d" not in help_out
    top = _program("--help")
    assert "tgalore: train Fourier Neural Operators" in top and re.search(r"^  memory +predicted", top, re.M)
    opt = _program("fit", "--model.optimizer.help", "TensorGaLoreAdamW")
    assert "The defaults above are the class's own." in opt
    assert "This configuration sets (configs/optim/tensor_galore.yaml): lr=0.005" in opt
    cfg = subprocess.run(
        [sys.executable, "-m", "app", "fit", "--print_config"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "app.models.FNO" in cfg and "DarcyDataModule" in cfg
