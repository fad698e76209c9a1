"""Peak memory of a real training step of the paper's Darcy model, measured, with every lever.

    python -m bench.memory_bench                     # batch 16 at 129x129 (configs/paper/darcy.yaml), ~25 min
    python -m bench.memory_bench --batch 2 --grid 65 --no-write   # a quick look

Each row builds the product from its configs (``configs/paper/darcy.yaml`` on top of ``configs/defaults.yaml``, plus
the row's overrides, through ``tgalore``'s own CLI) and trains it for two steps with a Lightning ``Trainer`` on one
random batch: step 1 creates the optimizer state (and the first Tucker subspaces), step 2 runs with it. The peak over
both steps is measured with torch's ``MemTracker`` (tensor bytes per category, not RSS; on CUDA also
``max_memory_allocated``), see ``app.memory_measure.measure_training_steps``. Rows run one after another in one process,
each model freed before the next. Next to each measurement: the estimate of ``app.memory_estimate`` at the same
size, and the estimates at the paper's own sizes (batch 16 at 128x128 and 421x421), which no CPU here can train.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import warnings
from pathlib import Path

import torch

from bench import markdown

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python -m bench.memory_bench"
PAPER = str(REPO / "configs" / "paper" / "darcy.yaml")
MiB = 2**20
CATEGORIES = ("params", "grads", "optimizer_state", "activations", "temporaries")

# (label, overrides of configs/paper/darcy.yaml, which has fused_update: true and Tensor-GaLore 0.25 from defaults)
ROWS: list[tuple[str, list[str]]] = [
    ("AdamW", ["-c", str(REPO / "configs/optim/adamw.yaml"), "--model.fused_update=false"]),
    ("AdamW, fused", ["-c", str(REPO / "configs/optim/adamw.yaml")]),
    ("Tensor-GaLore 0.25", ["--model.fused_update=false"]),
    ("+ fused", []),
    ("+ activation checkpointing", ["--model.activation_checkpointing=true"]),
    ("+ bf16 moments", ["--model.optimizer.init_args.moment_dtype=bfloat16", "--model.activation_checkpointing=true"]),
    ("TensorGRaD (0.2 + 5% sparse), fused, checkpointing",
     ["-c", str(REPO / "configs/optim/tensorgrad.yaml"), "--model.activation_checkpointing=true"]),
]
TARGET_ROW = "+ bf16 moments"  # Tensor-GaLore 0.25 + fused + checkpointing (+ bf16 moments): >= 65% below AdamW


def build(overrides: list[str]):
    """The OperatorModule and datamodule ``tgalore fit -c configs/paper/darcy.yaml <overrides>`` would train."""
    from app.cli import cli_main

    args = ["-c", PAPER, *overrides, "--trainer.logger=false", "--trainer.callbacks=[]"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cli = cli_main(args, run=False)
    return cli.model, cli.datamodule


def _optimizer(module):
    out = module.configure_optimizers()
    return out["optimizer"] if isinstance(out, dict) else out


def estimate(module, shape, dtype=torch.float32) -> dict[str, int]:
    from app.memory_estimate import estimate_memory

    est = estimate_memory(module.model, _optimizer(module), shape, fused_update=module.fused_update,
                          input_dtype=dtype).as_dict()
    est["params"] += sum(b.numel() * b.element_size() for _, b in module.named_buffers(recurse=False))
    est["total"] = est["params"] + est["grads"] + est["optimizer_state"] + est["activations"]
    return est


def measure_row(overrides: list[str], batch: int, grid: int, seed: int = 0) -> dict:
    from app.memory_measure import measure_training_steps, random_batch

    module, dm = build(overrides)
    shape = (batch, dm.in_channels, grid, grid)
    est = estimate(module, shape)
    paper = {f"{b}x{g}": estimate(module, (b, dm.in_channels, g, g))["total"] for b, g in ((16, 128), (16, 421))}
    data = random_batch(shape, dm.out_channels, torch.complex64 if dm.complex_data else torch.float32, seed)
    torch.manual_seed(seed)
    measured = measure_training_steps(module, data, steps=2, accelerator="cpu")
    del module, dm, data
    gc.collect()
    return {"measured": measured.as_dict(), "estimate": est, "paper_estimates": paper}


def run(batch: int, grid: int, only: list[str] | None = None) -> dict[str, dict]:
    rows = {}
    for label, overrides in ROWS:
        if only and label not in only:
            continue
        rows[label] = measure_row(overrides, batch, grid)
        m = rows[label]["measured"]
        print(f"{label}: peak {m['peak'] / MiB:,.0f} MiB, steps {m['step_seconds']}", flush=True)
    return rows


def render(rows: dict[str, dict], batch: int, grid: int) -> str:
    base = rows["AdamW"]["measured"]
    base_time = base["step_seconds"][-1]
    n_params = rows["AdamW"]["estimate"]["params"]
    lines = [
        f"Paper Darcy model (`configs/paper/darcy.yaml`: 4 layers, 64×64 modes, 128 channels, "
        f"{n_params / MiB:,.0f} MiB of parameters), float32, **measured** on a real training step with a Lightning "
        f"`Trainer` at batch {batch}, {grid}×{grid} grid: the peak over steps 1 and 2 (step 1 creates the optimizer "
        f"state and the first Tucker subspaces), tensor bytes by category at the moment of the peak, from torch's "
        f"`MemTracker` (not RSS). Machine: {platform.machine()} CPU, 1 thread, torch {torch.__version__}. "
        f"Regenerate: `{COMMAND}`.",
        "",
        "| configuration | params | grads | optimizer state | activations | temporaries | **peak** | vs AdamW "
        "| step time vs AdamW |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        m = r["measured"]
        cats = " | ".join(f"{m['at_peak'][c] / MiB:,.0f}" for c in CATEGORIES)
        lines.append(
            f"| {label} | {cats} | **{m['peak'] / MiB:,.0f} MiB** | {m['peak'] / base['peak'] - 1:+.1%}"
            f" | {m['step_seconds'][-1] / base_time:.2f}× |"
        )
    lines += [
        "",
        "Rows from `+ fused` on add to the row above; `+ bf16 moments` is `TensorGaLoreAdamW(rank=0.25, "
        "moment_dtype=bfloat16)` (`--model.optimizer.init_args.moment_dtype=bfloat16`): its moments stored in "
        "bfloat16 and rounded stochastically. Categories are in MiB at the moment of the "
        "peak (they sum to it); *temporaries* are tensors created in the backward pass (gradients of activations, "
        "FFT outputs), the optimizer step's workspace and the batch. Step time: wall time of step 2 (no subspace "
        "refresh) relative to AdamW's, one run each, tracker on; checkpointing recomputes the forward pass of every "
        "FNO layer and of the lifting and projection in backward. In every row the dense spectral contraction "
        "writes each weight's gradient into one contiguous buffer, a chunk of Fourier modes at a time "
        "(`app.fno_memory.contract_dense`: no second, contiguous copy by autograd), and with checkpointing the "
        "recomputed FNO layer frees its skip and spectral outputs once summed (`app.fno_memory.LeanFNOLayers`).",
        "",
        "Estimate (`app.memory_estimate`, what `tgalore memory` prints) against the measurement, MiB: each "
        "category's estimate vs its own maximum over the two steps; the total vs the measured peak.",
        "",
        "| configuration | params | grads | optimizer state | activations | total vs peak "
        "| estimate at 16×128² | at 16×421² |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        e, mx, m = r["estimate"], r["measured"]["max_by_category"], r["measured"]
        cells = " | ".join(f"{e[c] / MiB:,.0f} / {mx[c] / MiB:,.0f}" for c in CATEGORIES[:4])
        pe = r["paper_estimates"]
        total = f"{e['total'] / MiB:,.0f} / {m['peak'] / MiB:,.0f} ({e['total'] / m['peak'] - 1:+.0%})"
        lines.append(f"| {label} | {cells} | {total} | {pe['16x128'] / MiB:,.0f} | {pe['16x421'] / MiB:,.0f} |")
    target = rows.get(TARGET_ROW)
    if target:
        cut = 1 - target["measured"]["peak"] / base["peak"]
        lines += ["", f"Target (issue 19): the measured peak of Tensor-GaLore 0.25 + fused + checkpointing + bf16 "
                      f"moments at least 65% below AdamW's: **{cut:.1%} below** "
                      f"({'met' if cut >= 0.65 else 'missed'})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--grid", type=int, default=129)
    p.add_argument("--only", nargs="+", help="measure only these rows (labels); written with the other rows of the "
                   "last run at the same batch and grid (--json)")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "memory_bench.json")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.batch < 1 or args.grid < 2:
        raise SystemExit(f"--batch must be >= 1 and --grid >= 2, got {args.batch} and {args.grid}")
    rows = run(args.batch, args.grid, args.only)
    note = ""
    if args.only and args.json.is_file():  # the other rows: the last run's, at the same batch and grid
        saved = json.loads(args.json.read_text())
        if (saved.get("batch"), saved.get("grid")) == (args.batch, args.grid):
            kept = {k: v for k, v in saved["rows"].items() if k not in rows}
            order = [label for label, _ in ROWS]
            rows = {k: v for k, v in sorted({**kept, **rows}.items(), key=lambda kv: order.index(kv[0]))
                    if k in order}
            if kept:
                names = ", ".join(f"`{k}`" for k in args.only)
                note = (f"\n\nRe-measured later with `--only`: {names}; the other rows are from the last run at this "
                        "batch and grid.")
    if "AdamW" not in rows:
        raise SystemExit("the AdamW row is the baseline of every ratio; include it in --only")
    body = "## Memory: measured peak of a training step, the paper's Darcy model (issue 19)\n\n" + render(
        rows, args.batch, args.grid
    ) + note
    print(body)
    if not args.no_write:
        args.json.write_text(json.dumps({"batch": args.batch, "grid": args.grid, "rows": rows}, indent=1))
        markdown.write_section(REPO / "BENCHMARKS.md", *markdown.markers("memory"), body)
        table = body.split("\n\n", 1)[1]
        markdown.write_section(REPO / "README.md", *markdown.markers("memory-table"), table)


if __name__ == "__main__":
    main()
