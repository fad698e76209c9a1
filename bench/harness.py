"""One benchmark run through the product, and what every benchmark shares (issue 16).

A run is the user's path: ``app.cli.cli_main(args, run=False)`` composes the default job's configs
(``app.cli.DEFAULT_CONFIGS``), the shipped config files of the dataset and the optimizer,
``configs/bench/base.yaml`` (the trainer settings of a benchmark run) and one YAML delta per run (seed, steps,
batch size, the method's overrides); the Trainer it builds fits the module and tests the *final* model
(``trainer.test(ckpt_path=None)``), logging every test metric of ``app.module.OperatorModule`` (relative L2, H1
and the Fourier-band errors). The run then reads the final model's error on its own training split (the same
metrics, for the generalisation gap) and the exact bytes of the optimizer
state, and writes one JSON file.

Each run is its own process (``python -m bench.harness --out run.json -- <tgalore arguments>``), started by
:func:`launch` behind an optional launcher (``BENCH_LAUNCHER``, e.g. ``/work/cpu-run`` on a shared machine), so a
benchmark's driver does no torch work and a crash or a divergence costs one run, not the study.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("bench.harness")

REPO = Path(__file__).resolve().parent.parent
BENCH_BASE = "configs/bench/base.yaml"

__all__ = [
    "RunSpec",
    "fit_args",
    "run_product",
    "launch",
    "bench_jobs",
    "child_env",
    "optimizer_state_bytes",
    "hardware",
    "mean_sd",
    "paired_relative_change",
]


# ============================================================================================ what a run is


@dataclass(frozen=True)
class RunSpec:
    """One training run: config files (repo-relative) applied in order on top of the default job's configs
    (``app.cli.DEFAULT_CONFIGS``), then ``configs/bench/base.yaml``, then ``delta`` (a nested YAML mapping: this
    run's seed, steps and overrides)."""

    study: str
    dataset: str
    method: str
    seed: int
    configs: tuple[str, ...]
    delta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.method}__s{self.seed}"

    def digest(self) -> str:
        """Changes whenever anything that defines the run changes (a cached result is reused only if it matches)."""
        text = json.dumps({"configs": self.configs, "delta": self.delta}, sort_keys=True, default=str)
        from app.cli import DEFAULT_CONFIGS

        for c in (*DEFAULT_CONFIGS, *(REPO / c for c in (*self.configs, BENCH_BASE))):
            text += Path(c).read_text()
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_args(spec: RunSpec, delta_file: Path) -> list[str]:
    """The ``tgalore`` arguments (without the subcommand) of ``spec``, with its delta written to ``delta_file``."""
    for c in spec.configs:
        if not (REPO / c).is_file():
            raise FileNotFoundError(f"{spec.key}: config file {c} does not exist")
    delta_file.parent.mkdir(parents=True, exist_ok=True)
    delta_file.write_text(
        f"# bench run {spec.study}/{spec.key}: seed, steps and overrides (written by bench.harness)\n"
        + yaml.safe_dump(spec.delta, sort_keys=False)
    )
    args: list[str] = []
    for c in (*spec.configs, BENCH_BASE):
        args += ["-c", str(REPO / c)]
    return args + ["-c", str(delta_file)]


# ============================================================================================ measurement


def optimizer_state_bytes(optimizer) -> int:
    """Exact bytes of every distinct tensor in ``optimizer.state``, also those held inside non-tensor state entries
    (neuraloperator's ``AdamW`` keeps its factors in a projector object); the one state-byte count of ``bench/``."""
    from torch import Tensor, nn

    seen: set[int] = set()

    def walk(obj: Any) -> int:
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, complex, type(None), nn.Module)):
            return 0
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple, set, frozenset)):
            return sum(walk(v) for v in obj)
        return sum(walk(v) for v in vars(obj).values()) if hasattr(obj, "__dict__") else 0

    return sum(walk(s) for s in optimizer.state.values())


def _evaluate(module, dataset, batch_size: int) -> dict[str, float]:
    """The module's test metrics (a fresh copy of its first test collection) on ``dataset``, final model."""
    import torch
    from torch.utils.data import DataLoader

    metrics = module._test_collection("train").to(module.device)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            batch = {k: v.to(module.device) for k, v in batch.items()}
            pred, y = module._step(batch)
            metrics.update(pred, y)
    module.train(was_training)
    return {k: float(v) for k, v in metrics.compute().items()}


def run_product(args: list[str]) -> dict[str, Any]:
    """Fit and test through ``cli_main(args, run=False)``; the final test metrics, training-split metrics, steps,
    time and optimizer state of the run (``failure`` names what went wrong if it did not finish)."""
    import torch

    from app.cli import cli_main
    from app.memory import adamw_state_bytes

    cli = cli_main(args, run=False)
    trainer, module, dm = cli.trainer, cli.model, cli.datamodule
    out: dict[str, Any] = {"failure": None, "tests": {}, "train": {}}
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm)
    except FloatingPointError as err:  # TensorGaLoreAdamW's NonFiniteGradientError: a diverged run
        out["failure"] = f"non-finite gradient at step {trainer.global_step}: {str(err).splitlines()[0]}"
    out["fit_s"] = time.perf_counter() - t0
    out["steps"] = int(trainer.global_step)
    loss = trainer.callback_metrics.get("train/loss_epoch", trainer.callback_metrics.get("train/loss"))
    out["final_train_loss"] = None if loss is None else float(loss)
    if out["failure"] is None and (loss is None or not math.isfinite(float(loss))):
        out["failure"] = f"non-finite training loss at step {out['steps']}"
    if out["failure"] is None and trainer.max_steps > 0 and out["steps"] != trainer.max_steps:
        out["failure"] = f"stopped after {out['steps']} of {trainer.max_steps} steps"
    opt = trainer.optimizers[0] if trainer.optimizers else None
    out["optimizer"] = type(opt).__name__ if opt is not None else None
    out["state_bytes"] = optimizer_state_bytes(opt) if opt is not None else None
    out["adamw_state_bytes"] = adamw_state_bytes(p for p in module.model.parameters())
    out["n_train"] = len(dm.train_dataloader().dataset)
    out["test_names"] = list(dm.test_names)
    if out["failure"] is None:
        for result in trainer.test(module, datamodule=dm, ckpt_path=None, verbose=False):
            out["tests"].update({k: float(v) for k, v in result.items()})
        out["train"] = _evaluate(module, dm.train_dataloader().dataset, dm.test_batch_size)
    out["threads"] = torch.get_num_threads()
    return out


# ============================================================================================ launching


def launcher() -> list[str]:
    """The command prefix every run is started with: ``BENCH_LAUNCHER`` split like a shell word list (e.g.
    ``/work/cpu-run``, which waits for a free CPU slot), or nothing."""
    return shlex.split(os.environ.get("BENCH_LAUNCHER", ""))


def bench_jobs() -> int:
    """How many training processes a benchmark runs at once: ``BENCH_JOBS`` (a positive integer), else 1."""
    text = os.environ.get("BENCH_JOBS", "1")
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"BENCH_JOBS={text!r}: give a positive number of training processes at once")
    return n


def child_env(parallel: int = 1) -> dict[str, str]:
    """The environment of a run's process: the repository on ``PYTHONPATH`` and, with ``parallel`` processes at
    once, ``OMP_NUM_THREADS`` = cores ÷ parallel (at least 1) unless it is set, so that they do not oversubscribe."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def launch(
    specs: Sequence[RunSpec], work_dir: Path, *, timeout_s: float | None = None, start: bool = True, parallel: int = 1
) -> list[dict[str, Any] | None]:
    """Run ``specs`` one after another in one process under :func:`launcher` (the seeds of one method, say, so the
    imports are paid once; ``parallel``: how many such processes the caller runs at once, see :func:`child_env`);
    each result (with the spec's fields) is cached in ``work_dir/<study>/<key>/result.json`` as soon as it is done
    and reused while the spec's digest is unchanged. ``start=False`` only reads the cache (None for a run that is
    not in it)."""
    jobs, todo = [], []
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        run_dir = work_dir / spec.study / spec.key
        result_file = run_dir / "result.json"
        digest = spec.digest()
        if result_file.is_file():
            cached = json.loads(result_file.read_text())
            if cached.get("digest") == digest and not cached.get("launch_failure"):
                results[spec.key] = cached
                continue
        result_file.unlink(missing_ok=True)
        run = RunSpec(
            spec.study, spec.dataset, spec.method, spec.seed, spec.configs,
            _merge(spec.delta, {"trainer": {"default_root_dir": str(run_dir)}}),
        )
        args = fit_args(run, run_dir / "delta.yaml")
        jobs.append({"out": str(result_file), "args": args})
        todo.append((spec, digest, result_file, args))
    if jobs and start:
        job_file = work_dir / "jobs" / f"{todo[0][0].study}__{todo[0][0].key}.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(json.dumps(jobs, indent=1) + "\n")
        cmd = [*launcher(), sys.executable, "-m", "bench.harness", "--jobs", str(job_file)]
        env = child_env(parallel)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
            failure = None if proc.returncode == 0 else f"exit {proc.returncode}: {_tail(proc.stderr)}"
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout_s:.0f} s"
        wall = time.perf_counter() - t0
        for spec, digest, result_file, args in todo:
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                result = {"failure": failure or "no result written", "launch_failure": True, "tests": {}, "train": {}}
            result.update(
                study=spec.study, dataset=spec.dataset, method=spec.method, seed=spec.seed, digest=digest,
                process_s=wall / len(todo),
                command=" ".join(["python -m app fit", *(shlex.quote(a) for a in args)]),
            )
            result_file.parent.mkdir(parents=True, exist_ok=True)
            result_file.write_text(json.dumps(result, indent=1) + "\n")
            results[spec.key] = result
    return [results.get(s.key) for s in specs]


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])[:500]


def _merge(a: dict, b: dict) -> dict:
    """``a`` updated recursively by ``b`` (new dicts; lists and scalars of ``b`` replace)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ============================================================================================ shared by the reports


def hardware() -> dict[str, Any]:
    """The machine and library versions (the one hardware probe of ``bench/``); imports no torch, so a driver
    that does no torch work can call it."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    hw: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    for pkg in ("torch", "lightning", "neuraloperator", "tensorly"):
        try:
            hw[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            hw[pkg] = "?"
    torch = sys.modules.get("torch")
    if torch is not None:
        hw["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name()
    return hw


def hardware_line(hw: dict[str, Any], threads: int | None = None) -> str:
    threads = threads or hw.get("threads")
    line = f"{hw['cpu']}, {hw['cores']} cores" + (f", {threads} torch thread(s) per run" if threads else "")
    line += f"; torch {hw['torch']}, Lightning {hw.get('lightning', '?')}"
    line += f", neuraloperator {hw.get('neuraloperator', '?')}, tensorly {hw.get('tensorly', '?')}"
    if hw.get("gpu"):
        line += f", GPU {hw['gpu']}"
    if hw.get("load") is not None:
        line += f"; 1-min load average {hw['load']:.1f} at the start (other processes share this machine)"
    return line


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for no values."""
    v = [float(x) for x in values]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def paired_relative_change(ours: Sequence[float], base: Sequence[float]) -> tuple[float, float]:
    """Relative change ``ours / base - 1`` per seed (paired: same seed, same data), its mean and sample sd."""
    if len(ours) != len(base):
        raise ValueError(f"paired values need equal lengths, got {len(ours)} and {len(base)}")
    return mean_sd(o / b - 1.0 for o, b in zip(ours, base, strict=True))


# ============================================================================================ worker


def _run_job(args: list[str], out: Path) -> None:
    try:
        result = run_product(args)
    except Exception as err:  # noqa: BLE001 - one failed run is a result of the study, not the end of it
        log.exception("run failed: %s", out)
        result = {"failure": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500],
                  "tests": {}, "train": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file the run's measurements go to (with -- <tgalore args>)")
    parser.add_argument("--jobs", type=Path, help="JSON list of {out, args}: several runs, one after another")
    opts = parser.parse_args(argv[:split])
    if (opts.out is None) == (opts.jobs is None) or (opts.out is not None and split == len(argv)):
        parser.error("give either --out RESULT.json -- <tgalore fit arguments>, or --jobs JOBS.json")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
    jobs = json.loads(opts.jobs.read_text()) if opts.jobs else [{"out": str(opts.out), "args": argv[split + 1 :]}]
    for job in jobs:
        _run_job(list(job["args"]), Path(job["out"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
