"""Checkpoints that survive being killed: a guard against overwriting another run, and atomic, durable writes.

``SafeModelCheckpoint`` is Lightning's ``ModelCheckpoint`` plus two things:

* **no silent overwrites**: it stops before training when its directory already holds ``.ckpt`` files and the run
  is not a resume (``--ckpt_path``);
* **atomic, durable writes** (:class:`AtomicCheckpointIO`, installed on the trainer's strategy at ``setup``):
  every checkpoint is written to a hidden temporary file *in its own directory*, flushed to disk (``fsync``), then
  renamed over the target (``os.replace``, atomic on POSIX within one filesystem), and the directory is synced.
  A process killed at any instant therefore leaves either the previous complete file or the new complete file,
  never a truncated one.

Why not Lightning's own ``_atomic_save`` (``lightning/fabric/utilities/cloud_io.py``): it serialises into memory and
writes through an fsspec transaction, whose local implementation writes a temporary file in ``tempfile.gettempdir()``
(``$TMPDIR``, usually ``/tmp``) and commits with ``shutil.move``. That is a rename, hence atomic, only when ``/tmp``
and the checkpoint directory share a filesystem. On clusters they usually do not (node-local ``/tmp``, checkpoints on
a shared filesystem): ``shutil.move`` then *copies* into the target, truncating the previous ``last.ckpt`` first, so a
kill during the copy leaves a truncated checkpoint and no intact one. It also never ``fsync``s (a node crash can
leave an empty file after the rename) and each kill strands a checkpoint-sized file in ``/tmp``.

A checkpoint written on an exception (``save_on_exception``; SIGTERM from a scheduler raises one) is named
``interrupted-step<N>.ckpt`` (and ``last.ckpt``), not by the ``filename`` pattern, which would show a stale or zero
validation score; only the newest such file is kept. A failure before this run has completed a training step
writes nothing: it would replace ``last.ckpt`` with the state the run started from (or an untrained model).

A step checkpoint (``every_n_train_steps``) that falls on the last batch of an epoch is written when the epoch ends
(after its validation) instead: Lightning 2.6 resumes from a last-batch checkpoint with the right weights but skips
that epoch's validation and ``on_train_epoch_end`` hooks and the next epoch's ``on_train_epoch_start``.

Temporary files are named ``.<name>.<host>.<pid>.tmp``; the ones left by killed processes of this host are removed
at the next fit start (they never held a complete checkpoint the user could have known of).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["SafeModelCheckpoint", "AtomicCheckpointIO", "atomic_torch_save"]

log = logging.getLogger(__name__)

_TMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp")


def _host() -> str:
    return socket.gethostname().split(".")[0].replace(os.sep, "_") or "host"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a filesystem that cannot open directories: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` always holds a complete file: the old one or the new one.

    Writes ``.<name>.<host>.<pid>.tmp`` next to ``path``, ``fsync``s it, renames it over ``path`` and syncs the
    directory. On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (:func:`atomic_torch_save`); remote URLs
    (``s3://`` ...) go through Lightning's fsspec path unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_torch_save` that processes of this host left when they were
    killed mid-write (their pid is gone); returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        m = _TMP.fullmatch(p.name)
        if m is None or m["host"] != _host() or _alive(int(m["pid"])):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class SafeModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes every checkpoint atomically (:class:`AtomicCheckpointIO`) and stops before
    training when its directory already holds ``.ckpt`` files and the run is not a resume (``--ckpt_path``),
    instead of Lightning's warning followed by silent overwrites. All arguments are ``ModelCheckpoint``'s.

    The atomic writer replaces the strategy's ``checkpoint_io`` only when that is Lightning's default
    ``TorchCheckpointIO`` (a custom or asynchronous plugin configured by the user is left alone), so it also covers
    ``trainer.save_checkpoint`` and every other ``ModelCheckpoint`` of the trainer.
    """

    _save_at_epoch_end = False
    _start_step: int | None = None  # global_step when this run's training started (None: not started)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        # A step checkpoint due on the last batch of an epoch is written at the epoch's end instead (after its
        # validation, where Lightning writes epoch checkpoints). Lightning 2.6 resumes from a checkpoint taken on
        # the last batch with the right weights but skips that epoch's validation and on_train_epoch_end hooks
        # and the next epoch's on_train_epoch_start (tests/reliability/test_resume.py).
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        every = self._every_n_train_steps
        if last_batch and every >= 1 and trainer.global_step % every == 0:
            self._save_at_epoch_end = not self._should_skip_saving_checkpoint(trainer)
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._save_at_epoch_end:
            self._save_at_epoch_end = False
            if not self._should_skip_saving_checkpoint(trainer):  # skips if the epoch checkpoint was just written
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """``save_on_exception`` (SIGTERM included): ``interrupted-step<N>.ckpt`` and ``last.ckpt``. Lightning would
        name the file by the ``filename`` pattern, i.e. by a stale or missing (0.0000) validation score, so that it
        looked like a scored checkpoint."""
        if self.dirpath is None or not self._should_save_on_exception(trainer):
            return
        if self._start_step is None or trainer.global_step <= self._start_step:
            log.info(
                "%s stopped the run before it completed a training step; no checkpoint written (last.ckpt, if any, "
                "is unchanged)", type(exception).__name__,
            )
            return
        path = os.path.join(self.dirpath, f"interrupted-step{trainer.global_step:06d}{self.FILE_EXTENSION}")
        self._save_checkpoint(trainer, path)
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        log.info("%s stopped training at step %d; saved %s", type(exception).__name__, trainer.global_step, path)
        if trainer.is_global_zero:  # keep only the newest interrupted-step file
            for old in Path(self.dirpath).glob(f"interrupted-step*{self.FILE_EXTENSION}"):
                if old.name != os.path.basename(path):
                    old.unlink(missing_ok=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_step = trainer.global_step

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs after Lightning has resolved --ckpt_path (unknown in setup) and before anything is written.
        super().on_fit_start(trainer, pl_module)
        if self.dirpath is not None and trainer.is_global_zero:
            for p in remove_stale_temporaries(self.dirpath):
                log.info("removed %s, the partial write of a killed run", p)
        if trainer.ckpt_path is not None and self.dirpath is not None and not self.last_model_path:
            # A resume continues this run, so its last.ckpt is ours to replace. Lightning restores last_model_path
            # only when the checkpoint was saved in this very directory; for a run that was moved or copied it would
            # write last-v1.ckpt and leave a stale last.ckpt for the next `--ckpt_path last`.
            last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            if last.is_file():
                self.last_model_path = str(last)
        if trainer.ckpt_path is not None or self.dirpath is None or trainer.fast_dev_run:
            return
        existing = sorted(Path(self.dirpath).glob("*.ckpt")) if Path(self.dirpath).is_dir() else []
        if existing:
            raise FileExistsError(
                f"checkpoint directory {self.dirpath} already holds {len(existing)} checkpoint(s) "
                f"(e.g. {existing[0].name}); resume with `--ckpt_path last`, or start a new run "
                f"(a new --trainer.logger.init_args.version or another save_dir)"
            )
