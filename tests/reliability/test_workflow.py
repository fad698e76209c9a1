"""The everyday workflow (issue 13): a resume continues only its own run, on its own data and optimizer; a failure
before the first step leaves nothing behind; user errors print one short line; progress shows in a log file."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from app.cli import cli_main

from .helpers import RaiseAt, callback_arg, load, run, tiny_args

N = 36  # samples in the tiny config's data


def _hashes(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _fit(root: Path, data: Path, *extra: str):
    return cli_main(tiny_args(root, data, *extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One epoch (8 steps) of the tiny job: its root (``runs/tiny/version_0``) and its data folder."""
    root = tmp_path_factory.mktemp("trained")
    data = tmp_path_factory.mktemp("data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(root, data, "--trainer.max_epochs=1")
    finally:
        torch.set_num_threads(threads)
    return root, data


def _copy_run(trained: tuple[Path, Path], dest: Path) -> Path:
    """A copy of the trained run under ``dest`` (so a test may resume it); its ``last.ckpt``."""
    shutil.copytree(trained[0] / "runs", dest / "runs")
    return dest / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------------------------------ resume: whose run


def test_a_resume_continues_in_the_checkpoints_own_run_never_in_another_of_its_name(trained, tmp_path, caplog):
    ckpt = _copy_run(trained, tmp_path / "a")
    own = ckpt.parent.parent
    other_root = tmp_path / "b"
    _fit(other_root, trained[1], "--trainer.max_steps=2")  # another run, also runs/tiny/version_0
    other = _hashes(other_root / "runs")

    cli = _fit(other_root, trained[1], f"--ckpt_path={ckpt}", "--trainer.max_epochs=2")
    assert Path(cli.trainer.log_dir) == own and cli.trainer.global_step == 16
    assert _hashes(other_root / "runs") == other  # nothing added, nothing changed
    first = (own / "config_resume1.yaml").read_bytes()

    # a second resume adds config_resume2.yaml; the schedule stretched to 3 epochs says what it does
    with caplog.at_level(logging.WARNING, logger="app.lr_schedules"):
        _fit(tmp_path / "a", trained[1], "--ckpt_path=last", "--trainer.max_epochs=3")
    assert (own / "config_resume1.yaml").read_bytes() == first and (own / "config_resume2.yaml").is_file()
    assert not list(own.glob("checkpoints/last-v*.ckpt"))  # the moved run's last.ckpt is replaced, not versioned
    assert re.search(r"LR schedule was planned for 2 epochs and now follows the trainer's 3: at epoch 2 the LR "
                     r"goes from 0 \(the old plan\) to 0.00125", caplog.text)


def test_a_resume_refuses_a_version_option_that_names_another_run(trained, tmp_path):
    ckpt = _copy_run(trained, tmp_path)
    before = _hashes(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"belongs to the run .*version_0, but trainer.logger.init_args.version=3"):
        _fit(tmp_path, trained[1], f"--ckpt_path={ckpt}", "--trainer.logger.init_args.version=3")
    assert _hashes(tmp_path / "runs") == before


# ------------------------------------------------------------------------------------------ resume: what it trains on


def test_a_resume_on_other_generated_data_stops_before_anything_is_written_and_names_the_setting(trained, tmp_path):
    ckpt = _copy_run(trained, tmp_path)
    before = _hashes(tmp_path / "runs")
    with pytest.raises(ValueError, match=r"other data than .*\n  data n_train: 36 in the checkpoint, 40 here"):
        _fit(tmp_path, trained[1], f"--ckpt_path={ckpt}", "--data.init_args.n_train=40")
    with pytest.raises(ValueError, match=r"data generator: \{'seed': 0, .* in the checkpoint, \{'seed': 1, "):
        _fit(tmp_path, trained[1], f"--ckpt_path={ckpt}", "--data.init_args.seed=1")
    assert _hashes(tmp_path / "runs") == before


def test_a_resume_on_a_changed_data_file_stops_before_training_and_names_the_statistics(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N, 9, 9, generator=g) > 0.5).float() * 9 + 3
    y = torch.rand(N, 9, 9, generator=g)
    files = [f"--data.init_args.train_file={tmp_path / 'train.pt'}",
             f"--data.init_args.test_files=[{tmp_path / 't.pt'}]"]
    torch.save({"x": x, "y": y}, tmp_path / "train.pt")
    torch.save({"x": x[:4], "y": y[:4]}, tmp_path / "t.pt")
    _fit(tmp_path, tmp_path / "data", *files, "--trainer.max_steps=2")
    last = tmp_path / "runs/tiny/version_0/checkpoints/last.ckpt"
    saved = last.read_bytes()
    torch.save({"x": x, "y": 2 * y}, tmp_path / "train.pt")  # the same path, other values
    with pytest.raises(ValueError, match=r"other data than .*\n  data y_mean: \[0\.4.*\] in the checkpoint, \[0\.9"):
        _fit(tmp_path, tmp_path / "data", *files, "--ckpt_path=last", "--trainer.max_steps=4")
    assert last.read_bytes() == saved


def test_a_resume_with_another_optimizer_is_refused_before_training_and_last_ckpt_is_kept(trained, tmp_path):
    ckpt = _copy_run(trained, tmp_path)
    saved = ckpt.read_bytes()
    adamw = str(Path(__file__).resolve().parents[2] / "configs/optim/adamw.yaml")
    with pytest.raises(ValueError, match=r"another optimizer .*\n  model.optimizer: app.optim.TensorGaLoreAdamW in "
                                         r"the checkpoint, torch.optim.AdamW here"):
        _fit(tmp_path, trained[1], "-c", adamw, "--ckpt_path=last", "--trainer.max_epochs=2")
    with pytest.raises(ValueError, match=r"group 'fno_blocks.convs.0.weight.tensor': galore=True in the checkpoint, "
                                         r"False here"):
        _fit(tmp_path, trained[1], "--model.spectral_galore=false", "--ckpt_path=last", "--trainer.max_epochs=2")
    assert ckpt.read_bytes() == saved


# ------------------------------------------------------------------------------------------ failures before step 1


def test_a_resume_that_fails_before_its_first_step_does_not_replace_last_ckpt(trained, tmp_path):
    ckpt = _copy_run(trained, tmp_path)
    saved = ckpt.read_bytes()
    with pytest.raises(RuntimeError, match="injected failure before step 8"):  # the resume's first step
        _fit(tmp_path, trained[1], "--ckpt_path=last", "--trainer.max_epochs=2", callback_arg(RaiseAt, step=8))
    assert ckpt.read_bytes() == saved
    assert not list(ckpt.parent.glob("interrupted-step*.ckpt"))


def test_a_run_that_fails_before_its_first_step_leaves_no_run_directory(trained, tmp_path):
    with pytest.raises(RuntimeError, match="injected failure before step 0"):
        _fit(tmp_path, trained[1], callback_arg(RaiseAt, step=0))
    assert not list((tmp_path / "runs" / "tiny").glob("*"))
    with pytest.raises(ValueError, match=r"rank=0 is invalid"):  # optimizer options: checked before data setup
        _fit(tmp_path, trained[1], "--model.optimizer.init_args.rank=0")
    assert not list((tmp_path / "runs" / "tiny").glob("*"))


def test_a_save_dir_that_is_a_file_is_refused_before_anything_is_written(trained, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"save_dir=.*runs is a file, so no run directory can be made"):
        _fit(tmp_path, trained[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_only_the_newest_interrupted_checkpoint_is_kept(trained, tmp_path):
    ckpt = _copy_run(trained, tmp_path)
    with pytest.raises(RuntimeError, match="injected failure before step 10"):
        _fit(tmp_path, trained[1], "--ckpt_path=last", "--trainer.max_epochs=2", callback_arg(RaiseAt, step=10))
    with pytest.raises(RuntimeError, match="injected failure before step 13"):
        _fit(tmp_path, trained[1], "--ckpt_path=last", "--trainer.max_epochs=2", callback_arg(RaiseAt, step=13))
    assert sorted(p.name for p in ckpt.parent.glob("interrupted-step*")) == ["interrupted-step000013.ckpt"]
    assert load(ckpt)["global_step"] == 13


# ------------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("sub", ["validate", "test", "predict"])
def test_evaluating_without_a_checkpoint_is_refused_naming_last_best_and_a_file(trained, tmp_path, sub):
    with pytest.raises(ValueError, match=rf"{sub} evaluates trained weights: give --ckpt_path last .*best .* file"):
        cli_main([sub, *tiny_args(tmp_path, trained[1])[1:]])
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_last_and_best_are_resolved_from_the_run_and_ignored_model_options_are_named(trained, caplog):
    root, data = trained
    args = tiny_args(root, data)[1:]
    checkpoints = root / "runs/tiny/version_0/checkpoints"
    cli = cli_main(["test", *args, "--ckpt_path=last"])
    assert cli.trainer.ckpt_path == str(checkpoints / "last.ckpt")
    cli = cli_main(["test", *args, "--ckpt_path=best"])  # monitor null: Lightning's best is the newest kept one
    assert cli.trainer.ckpt_path == str(checkpoints / "step0008.ckpt")
    with caplog.at_level(logging.WARNING, logger="app.cli"):
        cli_main(["validate", *args, "--ckpt_path=last", "--model.model.init_args.hidden_channels=16"])
    key = "model.model.init_args.hidden_channels"
    assert f"--{key} (the checkpoint's values: {key}=8)" in caplog.text


# ------------------------------------------------------------------------------------------ the program


def test_a_user_error_prints_one_line_without_traceback_and_exits_1_unless_asked(trained, tmp_path):
    args = tiny_args(tmp_path, trained[1], "--model.optimizer.init_args.rank=0")
    proc = run(args, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-2].startswith("error: ") and "rank=0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr and "TGALORE_TRACEBACK=1" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = run(args, check=False, TGALORE_TRACEBACK="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_without_a_terminal_progress_is_plain_lines_with_loss_val_l2_and_eta(trained, tmp_path):
    proc = run(tiny_args(tmp_path, trained[1], "--trainer.enable_progress_bar=true"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2, proc.stdout
    assert re.fullmatch(r"epoch 2/2  step 16/16  loss [\d.e-]+  val/l2 [\d.e-]+  elapsed \d+:\d\d  eta \d+:\d\d",
                        lines[1]), lines
