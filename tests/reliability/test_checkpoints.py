"""Checkpoints are never corrupt: a run killed while writing one leaves the previous one loadable, and every
checkpoint loads with ``torch.load(weights_only=True)``.

``SafeModelCheckpoint`` writes through ``AtomicCheckpointIO`` (temporary file in the checkpoint's own directory,
fsync, ``os.replace``). Lightning's default ``_atomic_save`` puts its temporary file in ``$TMPDIR`` and commits with
``shutil.move``, which copies (truncating the target first) when ``$TMPDIR`` is on another filesystem; the subprocess
tests below therefore run with ``TMPDIR`` on another filesystem (``/dev/shm``) where there is one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from app.cli import cli_main
from callbacks.checkpoint import AtomicCheckpointIO, SafeModelCheckpoint, atomic_torch_save, remove_stale_temporaries

from .conftest import last_ckpt
from .helpers import (
    KillDuringSave,
    Throttle,
    Touch,
    assert_same_training_state,
    callback_arg,
    kill_group,
    load,
    run,
    start,
    tiny_args,
    tiny_variant,
    wait_for,
)


@pytest.fixture
def other_fs_tmpdir(tmp_path):
    """A private ``TMPDIR`` on another filesystem than ``tmp_path`` (``/dev/shm``) if there is one, else ``tmp_path``;
    removed afterwards (with what killed processes left in it)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev):
        yield str(tmp_path)
        return
    private = tempfile.mkdtemp(prefix="tgalore-test-", dir=shm)
    yield private
    shutil.rmtree(private, ignore_errors=True)


def _all_load_weights_only(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.ckpt"))
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert {"state_dict", "optimizer_states", "loops"} <= ckpt.keys(), f
    return files


# ------------------------------------------------------------------------------------------ the writer


def test_atomic_save_writes_its_temporary_file_next_to_the_target_not_in_tmpdir(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(Path(src)), real_replace(src, dst))[1])
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    target = tmp_path / "ckpts" / "last.ckpt"
    atomic_torch_save({"w": torch.arange(3)}, target)
    assert seen and seen[0].parent == target.parent and seen[0].name.startswith(".last.ckpt.")
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_lightnings_default_writer_copies_over_the_target_when_tmpdir_is_another_filesystem(
    tmp_path, monkeypatch, other_fs_tmpdir
):
    """Why SafeModelCheckpoint brings its own writer: this copy truncates the old file before writing the new one,
    so a kill during it leaves neither (if Lightning changes this, the reason is gone; see callbacks/checkpoint.py)."""
    from lightning.fabric.utilities.cloud_io import _atomic_save

    other = other_fs_tmpdir
    if other == str(tmp_path):
        pytest.skip("no second filesystem (/dev/shm) to put TMPDIR on")
    copies, real_copyfile = [], shutil.copyfile

    def copyfile(src, dst, **kw):
        copies.append(dst)
        return real_copyfile(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    monkeypatch.setattr(tempfile, "tempdir", other)
    _atomic_save({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert copies == [str(tmp_path / "last.ckpt")]


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.ones(2)}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (pickling a lambda fails inside torch.save)
        atomic_torch_save({"w": torch.zeros(2), "bad": lambda: 0}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_stale_temporaries_of_dead_processes_of_this_host_are_removed_and_nothing_else(tmp_path):
    host = socket.gethostname().split(".")[0]
    dead = 2**22 + 12345  # above the default pid_max: no such process
    files = {
        "dead": tmp_path / f".last.ckpt.{host}.{dead}.tmp",
        "alive": tmp_path / f".last.ckpt.{host}.{os.getpid()}.tmp",
        "other_host": tmp_path / f".last.ckpt.otherhost.{dead}.tmp",
        "user": tmp_path / "notes.tmp",
        "ckpt": tmp_path / "last.ckpt",
    }
    for f in files.values():
        f.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [files["dead"]]
    assert all(f.exists() for k, f in files.items() if k != "dead")


def test_safe_model_checkpoint_installs_the_atomic_writer_but_keeps_a_users_plugin(tmp_path):
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[SafeModelCheckpoint(dirpath=tmp_path)])
    trainer.checkpoint_callback.setup(trainer, None, "fit")
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO

    class Mine(TorchCheckpointIO):
        pass

    trainer = Trainer(accelerator="cpu", logger=False, plugins=[Mine()], callbacks=[SafeModelCheckpoint(tmp_path)])
    trainer.checkpoint_callback.setup(trainer, None, "fit")
    assert type(trainer.strategy.checkpoint_io) is Mine


def test_a_step_checkpoint_due_on_an_epochs_last_batch_is_written_after_its_validation(tmp_path):
    cli_main(tiny_args(tmp_path, tmp_path / "data", "--trainer.max_epochs=1"))
    ckpts = _all_load_weights_only(last_ckpt(tmp_path).parent)
    assert [p.name for p in ckpts] == ["last.ckpt", "step0008.ckpt"]
    loops = load(ckpts[1])["loops"]["fit_loop"]
    assert loops["epoch_progress"]["total"]["processed"] == 1  # saved in on_train_epoch_end ...
    assert loops["epoch_loop.val_loop.batch_progress"]["total"]["completed"] == 1  # ... after validation


# ------------------------------------------------------------------------------------------ kills while writing


@pytest.mark.slow
@pytest.mark.parametrize("where", ["data", "rename"])
def test_a_kill_while_overwriting_last_ckpt_leaves_the_previous_one_and_resume_is_exact(
    tmp_path, tiny_data_dir, tiny_reference, other_fs_tmpdir, where
):
    # Writes: 1 step0002.ckpt, 2 last.ckpt, 3 step0004.ckpt, 4 last.ckpt (overwrite) <- SIGKILL inside this one:
    # half of its bytes written ("data"), or complete but not yet renamed ("rename").
    tmpdir = other_fs_tmpdir
    killed = run(tiny_args(tmp_path, tiny_data_dir, callback_arg(KillDuringSave, at=4, where=where)), check=False,
                 TMPDIR=tmpdir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt_dir = last_ckpt(tmp_path).parent
    assert [p.name for p in _all_load_weights_only(ckpt_dir)] == ["last.ckpt", "step0004.ckpt"]
    assert load(ckpt_dir / "last.ckpt")["global_step"] == 2  # the previous last.ckpt, intact
    stranded = [p.name for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(stranded) == 1 and stranded[0].startswith(".last.ckpt.")

    run(tiny_args(tmp_path, tiny_data_dir, "--ckpt_path=last"), TMPDIR=tmpdir)
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]  # the partial write was cleaned up
    ref_root, ref = tiny_reference
    assert_same_training_state(ref, ref_root, load(last_ckpt(tmp_path)), tmp_path)


@pytest.mark.slow
def test_random_kills_never_leave_an_unloadable_checkpoint_and_the_run_still_finishes_exactly(
    tmp_path, tiny_data_dir, tiny_reference, other_fs_tmpdir
):
    """A bounded loop of SIGKILLs at random moments of a run that checkpoints after every step (two writes per
    step), each followed by a check that every checkpoint loads and by a resume; then the run is finished."""
    rng = random.Random(0)
    tmpdir = other_fs_tmpdir
    every_step = tiny_variant(tmp_path / "every_step.yaml", checkpoint={"every_n_train_steps": 1})
    ckpt_dir = last_ckpt(tmp_path).parent
    for i in range(4):
        resume = ["--ckpt_path=last"] if last_ckpt(tmp_path).exists() else []
        log, marker = tmp_path / f"run{i}.log", tmp_path / f"training{i}"
        args = tiny_args(tmp_path, tiny_data_dir, *resume, callback_arg(Touch, path=str(marker)),
                         callback_arg(Throttle, seconds=0.1), config=every_step)
        proc = start(args, log, TMPDIR=tmpdir)
        wait_for(marker, proc, log)
        time.sleep(rng.uniform(0.1, 1.5))  # the 16 steps take > 1.6 s: the kill lands mid-training
        kill_group(proc)
        _all_load_weights_only(ckpt_dir)
        if last_ckpt(tmp_path).exists() and load(last_ckpt(tmp_path))["global_step"] == 16:
            break
    run(tiny_args(tmp_path, tiny_data_dir, "--ckpt_path=last", config=every_step), TMPDIR=tmpdir)
    final, (ref_root, ref) = load(last_ckpt(tmp_path)), tiny_reference
    assert final["global_step"] == 16
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_same_training_state(ref[key], ref_root, final[key], tmp_path)
    subspace = "SubspaceScheduler{'refresh': 'fixed'}"
    assert final["callbacks"][subspace] == ref["callbacks"][subspace]
