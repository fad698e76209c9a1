"""Test-only callbacks and a runner for ``tgalore fit`` subprocesses (used by tests/reliability/).

The callbacks are wired into a subprocess from the command line, e.g.
``--trainer.callbacks+={"class_path": "tests.reliability.helpers.PauseAt", "init_args": {...}}``; the subprocess
runs in the repository root, where ``tests`` is importable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tests" / "tiny.yaml")


# ------------------------------------------------------------------------------------------ callbacks


class PauseAt(Callback):
    """Before optimizer step ``step`` (0-based ``global_step``): touch ``marker`` and block, so a test can kill the
    process at a known point. Returns early on SIGTERM (Lightning's handler sets ``trainer.received_sigterm``)."""

    def __init__(self, step: int, marker: str, timeout: float = 120.0) -> None:
        self.step, self.marker, self.timeout = step, marker, timeout

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        Path(self.marker).write_text(json.dumps({"pid": os.getpid(), "step": trainer.global_step}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.02)


class Touch(Callback):
    """Create the file ``path`` when training starts (a test waits for it before it kills the run)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.path).touch()


class Throttle(Callback):
    """Sleep ``seconds`` after every training batch (before the checkpoint of that step): a run that lasts long
    enough for a test to kill it at a random moment; the training itself is unchanged."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class DumpState(Callback):
    """At the end of training, save each rank's parameters and optimizer state to ``<directory>/rank<r>.pt``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        out = Path(self.directory)
        out.mkdir(parents=True, exist_ok=True)
        opt = trainer.optimizers[0]
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save(
            {"state_dict": pl_module.state_dict(), "optimizer": opt.state_dict(), "global_step": trainer.global_step,
             "metrics": metrics},
            out / f"rank{trainer.global_rank}.pt",
        )


class KillDuringSave(Callback):
    """Fault injection: SIGKILL this process in the middle of checkpoint write number ``at`` (1-based), at
    ``where`` = ``"data"`` (half the bytes written to the temporary file) or ``"rename"`` (file complete, not yet
    renamed over the target). Wraps the ``torch.save`` and ``os.replace`` that ``callbacks.checkpoint`` calls."""

    def __init__(self, at: int, where: str = "data") -> None:
        self.at, self.where, self.count = at, where, 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        import callbacks.checkpoint as ck

        real_save, real_replace = ck.torch.save, ck.os.replace
        outer = self

        class _Torch:  # the module's view of torch, with save wrapped
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def save(obj, f, *args, **kwargs):
                outer.count += 1
                if outer.count == outer.at and outer.where == "data":
                    import io

                    buf = io.BytesIO()
                    real_save(obj, buf, *args, **kwargs)
                    data = buf.getvalue()
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_save(obj, f, *args, **kwargs)

        class _Os:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                if outer.count == outer.at and outer.where == "rename":
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst)

        ck.torch, ck.os = _Torch(), _Os()


class RaiseAt(Callback):
    """Raise ``RuntimeError`` before optimizer step ``step`` (a crash at a known point)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected failure before step {self.step}")


class InjectNonFinite(Callback):
    """After backward of optimizer step ``step``, put ``value`` (nan/inf) into one entry of the gradient of the
    parameter named ``param`` (a name of ``pl_module.named_parameters()``)."""

    def __init__(self, step: int, param: str, value: float = float("nan")) -> None:
        self.step, self.param, self.value = step, param, value

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self.step:
            return
        p = dict(pl_module.named_parameters())[self.param]
        p.grad.view(-1)[0] = self.value


# ------------------------------------------------------------------------------------------ subprocesses


def callback_arg(cls: type, **init_args: Any) -> str:
    """``--trainer.callbacks+=...`` that adds ``cls(**init_args)`` to a run's callbacks."""
    spec = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
    return "--trainer.callbacks+=" + json.dumps(spec)


def tiny_variant(path: Path, checkpoint: dict | None = None, subspace: dict | bool | None = None) -> Path:
    """A copy of the tiny config at ``path`` with some init args of its checkpoint or subspace callback replaced
    (list items cannot be changed one by one on the command line); ``subspace=False`` drops that callback."""
    import yaml

    cfg = yaml.safe_load(Path(TINY).read_text())
    callbacks = cfg["trainer"]["callbacks"]
    for cb, changes in zip(callbacks, (checkpoint, subspace), strict=True):
        cb["init_args"].update(changes or {})
    if subspace is False:
        callbacks.pop()
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_args(root: Path, data_dir: Path, *extra: str, config: Path | str = TINY) -> list[str]:
    """``fit`` with the tiny config, writing runs under ``root/runs`` and reading/generating data in ``data_dir``."""
    return [
        "fit",
        "-c",
        str(config),
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        f"--data.init_args.data_dir={data_dir}",
        *extra,
    ]


#: ``TMPDIR`` of the subprocesses (set per session by conftest.py): what killed runs leave there goes with it
SUBPROCESS_TMPDIR: str | None = None


def env(**extra: str) -> dict[str, str]:
    """The subprocess environment: one thread per process (the 2-core CI box; and identical reductions)."""
    out = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if SUBPROCESS_TMPDIR is not None:
        out["TMPDIR"] = SUBPROCESS_TMPDIR
    out.pop("PYTEST_CURRENT_TEST", None)
    out.update(extra)
    return out


def run(args: list[str], timeout: float = 150.0, check: bool = True, **env_extra: str):
    """Run ``python -m app <args>`` in the repository root; the CompletedProcess (stderr included on failure)."""
    proc = subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=env(**env_extra), capture_output=True, text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tgalore {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr[-6000:]}")
    return proc


def start(args: list[str], log: Path, **env_extra: str) -> subprocess.Popen:
    """Start ``python -m app <args>`` in its own process group, output to ``log``."""
    f = open(log, "w")  # noqa: SIM115 (closed with the process by the caller's wait())
    return subprocess.Popen(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=env(**env_extra), stdout=f, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists; fail with the process's output if it exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {path.name}:\n{log.read_text()[-6000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path.name}:\n{log.read_text()[-6000:]}")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60.0) -> int:
    """Send ``sig`` to the run's process group (DDP ranks included) and reap it; the exit status."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    return proc.wait(timeout=timeout)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------ comparisons


def diff(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two nested checkpoint structures differ (tensors: bitwise, dtype and shape included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: tensor vs {type(b).__name__ if isinstance(a, torch.Tensor) else type(a).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        return [] if torch.equal(a, b) else [f"{where}: values differ (max |a-b| {(a - b).abs().max().item():.3g})"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"] if a.keys() != b.keys() else []
        for k in a.keys() & b.keys():
            out += diff(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # nan == nan here
        return []
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def _rebase(obj: Any, root: str) -> Any:
    """``obj`` with the run root in every string replaced by ``<root>`` (checkpoint paths differ between runs)."""
    if isinstance(obj, str):
        return obj.replace(root, "<root>")
    if isinstance(obj, dict):
        return {_rebase(k, root): _rebase(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebase(v, root) for v in obj)
    return obj


def assert_same_training_state(a: dict, root_a: Path, b: dict, root_b: Path) -> None:
    """Two checkpoints hold bit-identical training state: parameters, optimizer state (moments, factors, spectra,
    counters, param groups), LR schedulers, loop progress (data position included), callback and datamodule
    state; paths are compared relative to each run's root."""
    problems = diff(_rebase(a, str(root_a)), _rebase(b, str(root_b)))
    assert not problems, f"{len(problems)} difference(s):\n" + "\n".join(sorted(problems)[:20])
