"""TensorGRaD benchmark (issue 5): state bytes, step time and Darcy test error; writes its BENCHMARKS.md section.

Optimizers are built from the YAML files in ``configs/optim/`` (so the figures describe those configs):
AdamW (``adamw.yaml``), Tensor-GaLore (``tensor_galore.yaml``, rank 0.25), TensorGRaD (``tensorgrad.yaml``,
rank 0.2 + sparse 0.05) and TensorGRaD with bfloat16 moments (``tensorgrad_bf16.yaml``), plus two TensorGRaD
variants given as overrides (``composition="sparse_first"``; bfloat16 rounded to nearest).

1. **State bytes** of one complex64 spectral weight (``SHAPE``), counted exactly after a step, against
   ``torch.optim.AdamW``'s measured state; the prediction of ``app.memory_estimate.predict_state_bytes`` is
   checked to agree.
2. **Step time** on that weight, between refreshes, as a ratio to ``torch.optim.AdamW``'s step on the same
   gradient, measured in one process with interleaved repeats (medians); and the extra time of a refresh step.
3. **Darcy test error**: an FNO trained with each row's config through the product (``tgalore fit`` runs of
   ``bench.harness``; study ``tensorgrad`` of ``bench.studies``) on neuraloperator's 16x16 Darcy set
   (``../shared/data/neuralop``), 3 seeds, 1,000 steps; relative L2 of the final model on the test set.

Run ``python -m bench.tensorgrad_bench`` (about 25 minutes on a busy 2-core CPU; set ``BENCH_LAUNCHER`` as for
``bench.tables``) or with ``--quick`` (20 steps, 1 seed, 5 repeats; prints without writing).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from app.memory import optimizer_state_bytes
from app.memory_estimate import predict_state_bytes
from bench import harness, markdown, studies, tables

log = logging.getLogger("bench.tensorgrad_bench")

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- tensorgrad:start -->", "<!-- tensorgrad:end -->"
SHAPE = (64, 64, 32, 17)  # a spectral weight (in, out, modes_x, modes_y // 2 + 1), as in bench/optim_bench.py
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

# row name -> (config file, overrides of its init_args)
ROWS: dict[str, tuple[str, dict]] = {
    "AdamW": ("adamw.yaml", {}),
    "Tensor-GaLore": ("tensor_galore.yaml", {}),
    "Tensor-GaLore, every mode projected": ("tensor_galore.yaml", {"proj_modes": None}),
    "TensorGRaD": ("tensorgrad.yaml", {}),
    "TensorGRaD, every mode projected": ("tensorgrad.yaml", {"proj_modes": None}),
    "TensorGRaD, sparse_first": ("tensorgrad.yaml", {"composition": "sparse_first"}),
    "TensorGRaD, bf16 state": ("tensorgrad_bf16.yaml", {}),
    "TensorGRaD, bf16 state, nearest rounding": ("tensorgrad_bf16.yaml", {"moment_rounding": "nearest"}),
}


def optimizer_factory(config: str, overrides: dict) -> tuple[Callable, dict]:
    """``(make(params) -> optimizer, init_args)`` of ``configs/optim/<config>`` with ``overrides``, built by the
    product's own parser (``cli_main(run=False)`` over `the default job's configs`); ``init_args`` are the file's
    values and the overrides (what the row states)."""
    import tempfile
    import warnings

    import yaml

    from app.cli import cli_main

    path = REPO / "configs" / "optim" / config
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        delta = Path(tmp) / "delta.yaml"  # the overrides, as a config delta
        delta.write_text(yaml.safe_dump({"model": {"optimizer": {"init_args": overrides}}}))
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cli = cli_main(["-c", str(path), "-c", str(delta)], run=False)
    stated = yaml.safe_load(path.read_text())["model"]["optimizer"].get("init_args", {})
    return cli.model.optimizer_factory, {**stated, **overrides}


# ----------------------------------------------------------------------------------------------- memory and time


def _grad(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, dtype=torch.complex64, generator=torch.Generator().manual_seed(seed))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_weight(repeats: int) -> dict[str, dict]:
    """State bytes (measured, predicted) and medians of step / refresh-step times for each row on ``SHAPE``."""
    g = _grad(0)
    opts, params = {}, {}
    for name, (config, overrides) in ROWS.items():
        make, _ = optimizer_factory(config, {**overrides, **({} if name == "AdamW" else {"update_proj_gap": None})})
        p = torch.nn.Parameter(torch.zeros(SHAPE, dtype=torch.complex64))
        p.grad = g
        opts[name] = make([{"params": [p], "galore": True}])
        params[name] = p
    out = {}
    for name, opt in opts.items():
        predicted = predict_state_bytes(opt)
        opt.step()
        out[name] = {"bytes": optimizer_state_bytes(opt), "predicted": predicted, "step": [], "refresh": []}
    for _ in range(2):  # warm-up
        for opt in opts.values():
            opt.step()
    for _ in range(repeats):  # interleaved: load drifts hit every row alike
        for name, opt in opts.items():
            out[name]["step"].append(_timed(opt.step))
            if name != "AdamW":

                def refresh_step(opt=opt):
                    opt.request_refresh()
                    opt.step()

                out[name]["refresh"].append(_timed(refresh_step))
    for r in out.values():
        r["step"] = statistics.median(r["step"])
        r["refresh"] = statistics.median(r["refresh"]) if r["refresh"] else None
    return out


# ----------------------------------------------------------------------------------------------- Darcy training


def darcy_study(seeds: int, steps: int) -> tuple[dict[str, list[float]], str, float]:
    """Test relative L2 per row and seed, from product runs of study ``tensorgrad`` (``bench.studies``)."""
    methods = tuple(
        studies.Method(f"row{i}", name, (f"configs/optim/{config}",), {"model": {"optimizer": {"init_args": o}}})
        for i, (name, (config, o)) in enumerate(ROWS.items())
    )
    study = replace(studies.STUDIES["tensorgrad"], methods=methods, seeds=tuple(range(seeds)), steps=steps)
    results = tables.run_study(study, REPO / "bench" / "out" / "runs")
    errors: dict[str, list[float]] = {}
    for m in methods:
        runs = tables.ok(tables.select(results, study.datasets[0].key, m.key))
        if len(runs) != seeds:
            raise RuntimeError(f"{m.label}: {seeds - len(runs)} of {seeds} runs failed or were not run")
        errors[m.label] = [r["tests"][tables._main_key(r)] for r in runs]
    seconds = sum(r.get("process_s", 0.0) for r in results)
    source = (
        f"neuraloperator's Darcy 16x16 (`../shared/data/neuralop`, 900 train / 50 test), {study.note}, "
        f"{steps} steps per run through `tgalore fit` (`bench.studies`, study `tensorgrad`)"
    )
    return errors, source, seconds


# ----------------------------------------------------------------------------------------------- report


def hardware_line() -> str:
    return harness.hardware_line({**harness.hardware(), "load": LOAD_AT_START})


def render(weight: dict, study: tuple | None, command: str, repeats: int, steps: int) -> str:
    adamw = weight["AdamW"]
    lines = [
        "## TensorGRaD: low-rank + sparse gradients, bfloat16 state (issue 5)",
        "",
        f"Hardware: {hardware_line()}. Regenerate: `{command}`.",
        "",
        f"One complex64 spectral weight of shape {SHAPE}: optimizer state after a step, counted exactly "
        "(`predict_state_bytes` agrees: column 'predicted'), and step times (medians of "
        f"{repeats} interleaved repeats, between refreshes) against `torch.optim.AdamW` on the same gradient.",
        "",
        "| optimizer (config) | state | ÷ AdamW state (target < 30%) | predicted | step | step ÷ AdamW "
        "| refresh step, extra ÷ AdamW |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, r in weight.items():
        config, overrides = ROWS[name]
        label = f"{name} (`{config}`" + "".join(f", {k}={v}" for k, v in overrides.items()) + ")"
        extra = "" if r["refresh"] is None else f"{(r['refresh'] - r['step']) / adamw['step']:.2f}"
        lines.append(
            f"| {label} | {r['bytes'] / 2**20:.2f} MiB | {100 * r['bytes'] / adamw['bytes']:.1f}% "
            f"| {'exact' if r['predicted'] == r['bytes'] else r['predicted']} | {r['step'] * 1e3:.1f} ms "
            f"| {r['step'] / adamw['step']:.2f} | {extra} |"
        )
    lines += [
        "",
        "State: AdamW 16 bytes per element (+4); Tensor-GaLore core moments (complex first, real second) + factors "
        "+ spectra + counters; TensorGRaD adds, per kept entry, a complex and a real moment and an int32 index "
        "(16 bytes at float32, 10 at bfloat16). The refresh step of TensorGRaD adds a `topk` over the residual.",
    ]
    if study is not None:
        errors, source, seconds = study
        n = len(next(iter(errors.values())))

        def cell(v):
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"

        lines += [
            "",
            f"### Darcy test error ({n} seeds, {steps} steps; mean ± sd; lower is better)",
            "",
            f"Data: {source}; spectral weights (32, 32, 8, 5), relative-L2 loss, per-step cosine LR, optimizer "
            f"settings from the config files, final model tested; {seconds / 60:.1f} min in the runs' processes.",
            "",
            "| optimizer | test rel. L2 | per seed | vs TensorGRaD (paired over seeds) |",
            "|---|---:|---|---:|",
        ]
        by_seed = {name: dict(enumerate(v)) for name, v in errors.items()}
        for name, v in errors.items():
            vs = "—" if name == "TensorGRaD" else tables.paired_cell(by_seed[name], by_seed["TensorGRaD"])
            lines.append(f"| {name} | {cell(v)} | {', '.join(f'{e:.4f}' for e in v)} | {vs} |")

        def paired(a: str, b: str) -> str:  # mean ± sd over seeds of a / b - 1, the verdict, seeds where a is lower
            return tables.paired_cell(by_seed[a], by_seed[b])

        lines += [
            "",
            "Paired by seed (same initialisation and batches; mean ± sd over seeds, *lower*/*higher* beyond 2 "
            "standard errors): bfloat16 state (stochastic rounding) vs float32 "
            f"state: {paired('TensorGRaD, bf16 state', 'TensorGRaD')}; round-to-nearest vs stochastic rounding: "
            f"{paired('TensorGRaD, bf16 state, nearest rounding', 'TensorGRaD, bf16 state')}; `sparse_first` vs "
            f"`lowrank_first`: {paired('TensorGRaD, sparse_first', 'TensorGRaD')}; TensorGRaD vs Tensor-GaLore: "
            f"{paired('TensorGRaD', 'Tensor-GaLore')}; Tensor-GaLore on the channel modes (its config) vs every mode: "
            f"{paired('Tensor-GaLore', 'Tensor-GaLore, every mode projected')}; TensorGRaD on the channel modes (its "
            f"config) vs every mode: {paired('TensorGRaD', 'TensorGRaD, every mode projected')}. "
            "Defaults: `moment_dtype: param` (float32 moments; "
            "`configs/optim/tensorgrad_bf16.yaml` selects bfloat16) and `composition: lowrank_first`.",
        ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the text between this benchmark's markers; other sections are left alone."""
    markdown.write_section(path, START, END, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 seed, 5 repeats; print, no write")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the Darcy study (default 3)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per training run (default 1000)")
    parser.add_argument("--repeats", type=int, default=21, help="timing repeats (default 21)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a busy CPU)")
    parser.add_argument("--no-darcy", action="store_true", help="skip the training study")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.steps, args.repeats = 1, 20, 5

    weight = measure_weight(args.repeats)
    for name, r in weight.items():
        log.info("%-42s state %d B (predicted %d), step %.1f ms", name, r["bytes"], r["predicted"], r["step"] * 1e3)
    study = None if args.no_darcy else darcy_study(args.seeds, args.steps)
    command = "python -m bench.tensorgrad_bench" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    body = render(weight, study, command, args.repeats, args.steps)
    sys.stdout.write(body)
    if not (args.quick or args.no_write):
        write_section(args.output, body)
        log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
