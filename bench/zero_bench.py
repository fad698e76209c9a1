"""Optimizer-state sharding (``--model.shard_optimizer_state true``): per-process state and step time of the default
job on 1 and 2 CPU processes (gloo), and the paper model's predicted per-GPU memory at W = 8.

    python -m bench.zero_bench                 # writes the zero section of BENCHMARKS.md
    python -m bench.zero_bench --steps 20      # a shorter run

Each run is ``tgalore fit`` on the default config (``app.cli.DEFAULT_CONFIGS``: Darcy 33x33, FNO 16x16 modes, 32
channels, Tensor-GaLore rank 0.25) for ``--steps`` optimizer steps, same global batch (32: 32 per process on 1, 16
on 2), no validation. A callback measures, on every process, the exact bytes of the state its (local) optimizer
holds after the last step, and the wall time of each training step (``on_train_batch_start`` to
``on_train_batch_end``: forward, backward, all-reduce, step and, sharded, the parameter broadcast); the first
``--warmup`` steps are dropped. The paper model's memory comes from ``tgalore memory --devices 8``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from app.memory import optimizer_state_bytes
from app.sharding import local_optimizer
from bench import markdown

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python -m bench.zero_bench"
VARIANTS = {  # name: (processes, sharded)
    "1 process": (1, False),
    "2 processes, DDP": (2, False),
    "2 processes, DDP + sharded state": (2, True),
}


class StepProbe(Callback):
    """Write ``<directory>/rank<r>.json``: the local optimizer's state bytes at the end and every step's seconds."""

    def __init__(self, directory: str) -> None:
        self.directory, self.seconds, self._t0 = directory, [], 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        self.seconds.append(time.perf_counter() - self._t0)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        opt = trainer.optimizers[0]
        out = {"state_bytes": optimizer_state_bytes(local_optimizer(opt)), "seconds": self.seconds,
               "optimizer": type(opt).__name__}
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        (Path(self.directory) / f"rank{trainer.global_rank}.json").write_text(json.dumps(out))


def run_variant(root: Path, data_dir: Path, processes: int, sharded: bool, steps: int) -> list[dict]:
    probe = {"class_path": "bench.zero_bench.StepProbe", "init_args": {"directory": str(root / "probe")}}
    args = [
        sys.executable, "-m", "app", "fit", f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}", f"--data.init_args.data_dir={data_dir}",
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--test_after_fit=false",
        "--trainer.accelerator=cpu", f"--trainer.devices={processes}", f"--data.init_args.batch_size={32 // processes}",
        "--trainer.enable_progress_bar=false", "--trainer.callbacks+=" + json.dumps(probe),
    ]
    if processes > 1:
        args.append("--trainer.strategy=ddp")
    if sharded:
        args.append("--model.shard_optimizer_state=true")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"zero_bench: {' '.join(args[3:])} failed:\n{proc.stderr[-4000:]}")
    return [json.loads((root / "probe" / f"rank{r}.json").read_text()) for r in range(processes)]


def _memory(args: list[str]) -> dict[str, dict[str, int]]:
    from app.cli import memory_main

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its JSON
        return memory_main(args)


def predicted_default_share(processes: int, sharded: bool) -> int:
    """``tgalore memory``'s optimizer state per process of the default job (the largest share)."""
    extra = ["--devices", str(processes)] + (["--model.shard_optimizer_state", "true"] if sharded else [])
    return _memory(["--trainer.logger=false", "--json", *extra])["TensorGaLoreAdamW"]["optimizer_state"]


def paper_memory(devices: int) -> dict[str, dict[str, int]]:
    memory_main = _memory
    out = {}
    for label, extra in (("replicated (DDP)", []), ("sharded", ["--model.shard_optimizer_state", "true"])):
        rows = memory_main(["-c", str(REPO / "configs" / "paper" / "darcy.yaml"), "--trainer.logger=false",
                            "--model.fused_update", "false", "--devices", str(devices), "--json", *extra])
        out[label] = rows
    one = memory_main(["-c", str(REPO / "configs" / "paper" / "darcy.yaml"), "--trainer.logger=false",
                       "--model.fused_update", "false", "--json"])
    out["1 GPU"] = one
    return out


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def render(results: dict[str, list[dict]], predicted: dict[str, int], paper: dict, steps: int, warmup: int,
           seconds: float) -> str:
    MiB = 2**20
    base = results["1 process"][0]["state_bytes"]
    lines = [
        "## Sharded optimizer state: ZeroRedundancyOptimizer under DDP (issue 15)",
        "",
        f"Default job (`tgalore fit`'s configs: Darcy 33x33, FNO 16x16 modes, 32 channels, Tensor-GaLore rank 0.25), "
        f"{steps} optimizer steps, global batch 32, no validation, CPU (gloo), one thread per process; step time "
        f"over steps {warmup + 1}-{steps} (median and quartiles), state bytes exact (tensor bytes of each process's "
        f"local optimizer after the last step; predicted: `tgalore memory [--devices 2 "
        f"--model.shard_optimizer_state true]`). Regenerate: `{COMMAND}` ({seconds:.0f} s).",
        "",
        "| run | optimizer state per process (bytes) | share of 1 process | predicted, largest share | step time, s "
        "(median [q1, q3]) |",
        "|---|---|---:|---:|---|",
    ]
    for name, ranks in results.items():
        bytes_ = " / ".join(f"{r['state_bytes']:,}" for r in ranks)
        share = " / ".join(f"{r['state_bytes'] / base:.3f}" for r in ranks)
        q1, med, q3 = _quantiles([s for r in ranks for s in r["seconds"][warmup:]])
        lines.append(f"| {name} | {bytes_} | {share} | {predicted[name]:,} | {med:.3f} [{q1:.3f}, {q3:.3f}] |")
    lines += [
        "",
        "Processes share this machine's cores (2, with other jobs), so the 2-process step times measure the "
        "overhead of DDP and of the broadcast on one box, not a speed-up.",
        "",
        "Paper Darcy model (`configs/paper/darcy.yaml` without fused updates, which DDP refuses), predicted per "
        "process at W = 8 by `tgalore memory -c configs/paper/darcy.yaml --model.fused_update false --devices 8 "
        "[--model.shard_optimizer_state true]`, MiB:",
        "",
        "| setup | AdamW state | Tensor-GaLore state | Tensor-GaLore params+grads+state | Tensor-GaLore total |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in ("1 GPU", "replicated (DDP)", "sharded"):
        rows = paper[label]
        name = "8 GPUs, " + label if label != "1 GPU" else label
        adamw, galore = rows["AdamW"], rows["TensorGaLoreAdamW"]
        lines.append(f"| {name} | {adamw['optimizer_state'] / MiB:,.0f} | {galore['optimizer_state'] / MiB:,.0f} | "
                     f"{galore['params+grads+state'] / MiB:,.0f} | {galore['total'] / MiB:,.0f} |")
    lines += [
        "",
        "Whole-tensor sharding divides the state by at most the number of large tensors: this model's state is "
        "almost all in its 4 spectral weights, so at W = 8 each process holds 1/4 of it (the largest share), not "
        "1/8. DDP's gradient buckets (about the gradients' size again) are not counted.",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the step times (default 5)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="where the default job's data is cached")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    opts = parser.parse_args(argv)
    if opts.steps <= opts.warmup + 1:
        raise SystemExit(f"zero_bench: --steps {opts.steps} must exceed --warmup {opts.warmup} + 1")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            name: run_variant(Path(tmp) / str(i), opts.data_dir, processes, sharded, opts.steps)
            for i, (name, (processes, sharded)) in enumerate(VARIANTS.items())
        }
    predicted = {name: predicted_default_share(*spec) for name, spec in VARIANTS.items()}
    paper = paper_memory(8)
    body = render(results, predicted, paper, opts.steps, opts.warmup, time.perf_counter() - t0)
    markdown.write_section(opts.output, *markdown.markers("zero"), body)
    print(body)  # the benchmark's report


if __name__ == "__main__":
    main()
