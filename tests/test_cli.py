"""The command line, driven from Python: configs, fit, resume, test, predict, --help/--print_config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.cli import cli_main

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


def test_help_and_print_config_run_as_a_program(tmp_path):
    help_out = subprocess.run(
        [sys.executable, "-m", "app", "fit", "--help"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "--model.optimizer" in help_out and "--ckpt_path" in help_out
    cfg = subprocess.run(
        [sys.executable, "-m", "app", "fit", "--print_config"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "app.models.FNO" in cfg and "DarcyDataModule" in cfg
