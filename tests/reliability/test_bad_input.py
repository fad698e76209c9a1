"""The bad-input catalogue, through the command line: every mistake stops with a message that names the value, the
file or the setting, and the fix; and nothing the user had (data files, checkpoints, earlier runs) is changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from app.cli import cli_main

from .helpers import tiny_args

N = 36  # samples per data file: the tiny config's n_train


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """What a user has: Darcy data files and a trained run (checkpoints, config) from the tiny config."""
    root = tmp_path_factory.mktemp("user")
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N, 9, 9, generator=g) > 0.5).float() * 9 + 3
    torch.save({"x": x, "y": torch.rand(N, 9, 9, generator=g)}, root / "train.pt")
    torch.save({"x": x[:4], "y": torch.rand(4, 9, 9, generator=g)}, root / "test.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli_main(tiny_args(root / "trained", root / "data", "--trainer.max_steps=3"))
    finally:
        torch.set_num_threads(threads)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def untouched(user, tmp_path):
    """Fails the test if any file the user had is changed or deleted (new run directories may appear)."""
    before = _snapshot(user)
    yield user
    after = _snapshot(user)
    changed = [k for k, h in before.items() if after.get(k) != h]
    assert not changed, f"files the user had were changed or deleted: {changed}"


def _fit(user: Path, tmp_path: Path, *extra: str):
    return cli_main(tiny_args(tmp_path, user / "data", "--trainer.max_steps=2", *extra))


def _trained_ckpt(user: Path) -> Path:
    return user / "trained" / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------------------------------ optimizer settings


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("rank=0", r"rank=0 is invalid: an int rank must be >= 1"),
        ("rank=-2", r"rank=-2 is invalid: an int rank must be >= 1"),
        ("rank=1.5", r"rank=1.5 is invalid: a float rank is a fraction and must be in \(0, 1\]"),
        ("rank=0.0", r"rank=0.0 is invalid: a float rank is a fraction and must be in \(0, 1\]"),
        ("rank=[2,2]", r"'fno_blocks.convs.0.weight.tensor'\): rank=\[2, 2\] has 2 entries but the tensor has 4 modes"),
        ("rank=[2,2,0,1]", r"rank\[2\]=0 is invalid"),
        ("update_proj_gap=0", r"update_proj_gap=0 is invalid: use an int >= 1"),
        ("update_proj_gap=-5", r"update_proj_gap=-5 is invalid: use an int >= 1"),
    ],
)
def test_invalid_optimizer_settings_are_refused_with_the_value_and_the_rule(untouched, tmp_path, arg, message):
    with pytest.raises(ValueError, match=message):
        _fit(untouched, tmp_path, f"--model.optimizer.init_args.{arg}")


# ------------------------------------------------------------------------------------------ unknown options


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("model:\n  optimizer:\n    init_args:\n      rnk: 0.1\n", "Option 'rnk' is not accepted"),
        ("trainer:\n  max_epoch: 3\n", "does not accept option 'trainer.max_epoch'"),
        ("data:\n  init_args:\n    batchsize: 8\n", "batchsize"),
        ("modle:\n  loss: null\n", "modle"),
    ],
    ids=["optimizer", "trainer", "data", "top-level"],
)
def test_unknown_option_names_in_yaml_stop_the_cli_and_name_the_option(untouched, tmp_path, capsys, yaml, message):
    config = tmp_path / "typo.yaml"
    config.write_text(yaml)
    with pytest.raises(SystemExit) as exit_info:
        _fit(untouched, tmp_path, "-c", str(config))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ data files


def _write(path: Path, make) -> Path:
    make(path)
    return path


def _bad_data(kind: str, user: Path, tmp_path: Path) -> Path:
    good = user / "train.pt"
    d = torch.load(good, weights_only=True)
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "corrupt":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "keys":
        torch.save({"a": d["x"], "u": d["y"]}, path)
    elif kind == "shape":
        torch.save({"x": d["x"].flatten(1), "y": d["y"]}, path)
    elif kind == "dtype":
        torch.save({"x": d["x"].long(), "y": d["y"]}, path)
    elif kind == "nan":
        y = d["y"].clone()
        y[5, 2, 2] = float("nan")
        torch.save({"x": d["x"], "y": y}, path)
    elif kind == "count":
        torch.save({"x": d["x"], "y": d["y"][:-1]}, path)
    elif kind == "grid":
        torch.save({"x": d["x"], "y": torch.rand(N, 7, 7)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("missing", FileNotFoundError, r"Darcy data file .*missing.pt does not exist"),
        ("empty", ValueError, r"empty.pt is empty \(0 bytes\)"),
        ("truncated", ValueError, r"(?s)truncated.pt could not be read .* corrupt, truncated or not a torch .pt file"),
        ("corrupt", ValueError, r"(?s)corrupt.pt could not be read .* corrupt, truncated or not a torch .pt file"),
        ("keys", ValueError, r"keys.pt has no key\(s\) \['x', 'y'\]; found \['a', 'u'\]"),
        ("shape", ValueError, r"'x' is \(36, 81\); expected \(N, s, s\)"),
        ("dtype", ValueError, r"'x' has dtype torch.int64; expected a float"),
        ("nan", ValueError, r"'y' contains 1 NaN/Inf values \(first in sample 5\)"),
        ("count", ValueError, r"x has 36 samples but y has 35"),
        ("grid", ValueError, r"'x' is on a \(9, 9\) grid but 'y' on \(7, 7\)"),
    ],
)
def test_bad_data_files_are_refused_naming_the_file_and_the_problem(untouched, tmp_path, kind, error, message):
    bad = _bad_data(kind, untouched, tmp_path)
    with pytest.raises(error, match=message):
        _fit(untouched, tmp_path, f"--data.init_args.train_file={bad}",
             f"--data.init_args.test_files=[{untouched / 'test.pt'}]")


def test_more_samples_than_the_file_holds(untouched, tmp_path):
    with pytest.raises(ValueError, match=r"has 36 samples but n_train=100 asks for more; set n_train to at most 36"):
        _fit(untouched, tmp_path, f"--data.init_args.train_file={untouched / 'train.pt'}",
             f"--data.init_args.test_files=[{untouched / 'test.pt'}]", "--data.init_args.n_train=100")


def test_batch_size_larger_than_the_dataset(untouched, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the 32 training samples .* at most 32"):
        _fit(untouched, tmp_path, "--data.init_args.batch_size=64")


# ------------------------------------------------------------------------------------------ checkpoint files


def _bad_ckpt(kind: str, user: Path, tmp_path: Path) -> Path:
    good = _trained_ckpt(user)
    path = tmp_path / f"{kind}.ckpt"
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":  # a damaged copy: 64 bytes flipped in the middle of the largest tensor record
        import struct
        import zipfile

        with zipfile.ZipFile(good) as zf:
            rec = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        name_len, extra_len = struct.unpack("<HH", data[rec.header_offset + 26 : rec.header_offset + 30])
        start = rec.header_offset + 30 + name_len + extra_len  # torch stores records uncompressed
        mid = start + rec.file_size // 2 - 32
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :])
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint\n" * 100)
    elif kind == "data":
        shutil.copy(user / "train.pt", path)
    elif kind == "weights":
        ckpt = torch.load(good, weights_only=True)
        torch.save({k: v for k, v in ckpt.items() if k not in ("optimizer_states", "loops")}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("missing", FileNotFoundError, r"--ckpt_path .*missing.ckpt: no such checkpoint file"),
        ("empty", ValueError, r"empty.ckpt is empty \(0 bytes\), not a checkpoint"),
        ("truncated", ValueError, r"truncated.ckpt cannot be read as a checkpoint .* truncated, corrupt"),
        ("garbage", ValueError, r"garbage.ckpt cannot be read as a checkpoint .* truncated, corrupt"),
        ("corrupt", ValueError, r"corrupt.ckpt is corrupt: the checksum of its record archive/data/\d+ does not match"),
        ("data", ValueError, r"data.ckpt is not a training checkpoint that fit can resume from: it has no "
                             r"\['state_dict', 'optimizer_states', 'loops', 'epoch', 'global_step'\]"),
        ("weights", ValueError, r"weights.ckpt is not a training checkpoint .* no \['optimizer_states', 'loops'\]"),
    ],
)
def test_bad_checkpoint_files_are_refused_before_anything_is_built(untouched, tmp_path, kind, error, message):
    bad = _bad_ckpt(kind, untouched, tmp_path)
    with pytest.raises(error, match=message):
        _fit(untouched, tmp_path, f"--ckpt_path={bad}")


def test_a_truncated_checkpoint_is_refused_by_test_and_predict_too(untouched, tmp_path):
    bad = _bad_ckpt("truncated", untouched, tmp_path)
    for sub in ("test", "predict"):
        args = tiny_args(tmp_path, untouched / "data", f"--ckpt_path={bad}")
        with pytest.raises(ValueError, match=r"cannot be read as a checkpoint"):
            cli_main([sub, *args[1:]])


def test_resuming_a_checkpoint_of_a_different_model_says_so_and_what_differs(untouched, tmp_path):
    ckpt = _trained_ckpt(untouched)
    with pytest.raises(ValueError, match=r"saved from a different model") as err:
        _fit(untouched, tmp_path, f"--ckpt_path={ckpt}", "--model.model.init_args.hidden_channels=12")
    text = str(err.value)
    assert "model.init_args.hidden_channels: 8 in the checkpoint, 12 here" in text
    assert "shape of model.fno_blocks.channel_mlp.0.fcs.0.weight: (4, 8, 1) in the checkpoint, (6, 12, 1) here" in text
    assert "config.yaml" in text  # what to do instead


def test_resume_last_into_a_run_of_a_different_model_says_so_and_leaves_the_run_alone(untouched):
    run_dir = untouched / "trained" / "runs" / "tiny" / "version_0"
    with pytest.raises(ValueError, match=r"model.init_args.n_layers: 2 in the checkpoint, 3 here"):
        cli_main(tiny_args(untouched / "trained", untouched / "data", "--ckpt_path=last",
                           "--model.model.init_args.n_layers=3"))
    # refused before anything is written: not even the attempt's config_resume<k>.yaml
    assert not list(run_dir.glob("config_resume*.yaml"))
