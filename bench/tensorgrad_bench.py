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
3. **Darcy test error**: a small FNO trained with each optimizer on neuraloperator's 16x16 Darcy set
   (``../shared/data/neuralop``; the generated default Darcy set if absent), for several seeds (same
   initialisation and batch order for every optimizer of a seed); relative L2 of the final model on the test set.

Run ``python -m bench.tensorgrad_bench`` (about 10 minutes on a busy 2-core CPU) or with ``--quick`` (fewer
epochs, seeds and repeats; prints without writing).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from app.memory import optimizer_state_bytes
from app.memory_estimate import predict_state_bytes
from bench import markdown

log = logging.getLogger("bench.tensorgrad_bench")

REPO = Path(__file__).resolve().parent.parent
START, END = "<!-- tensorgrad:start -->", "<!-- tensorgrad:end -->"
SHAPE = (64, 64, 32, 17)  # a spectral weight (in, out, modes_x, modes_y // 2 + 1), as in bench/optim_bench.py
DARCY = REPO.parent / "shared" / "data" / "neuralop"
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
    """``(make(params) -> optimizer, init_args)`` from ``configs/optim/<config>`` and ``overrides``."""
    spec = yaml.safe_load((REPO / "configs" / "optim" / config).read_text())["model"]["optimizer"]
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    kwargs = {**spec.get("init_args", {}), **overrides}
    return (lambda params: cls(params, **kwargs)), kwargs


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


def darcy_data() -> tuple[dict[str, torch.Tensor], str]:
    """Encoded training inputs, physical outputs, test set and the output statistics; and a description."""
    from datamodules.darcy import DarcyDataModule

    if (DARCY / "darcy_train_16.pt").is_file():
        dm = DarcyDataModule(
            train_file=str(DARCY / "darcy_train_16.pt"),
            test_files=[str(DARCY / "darcy_test_16.pt")],
            n_train=1000,
            n_test=50,
            batch_size=32,
        )
        source = "neuraloperator's Darcy 16x16 (`../shared/data/neuralop`, 900 train / 50 test)"
    else:
        dm = DarcyDataModule(batch_size=32, data_dir=str(REPO / "data"))
        dm.prepare_data()
        source = "the generated default Darcy set (33x33, 900 train / 100 test)"
    dm.setup("fit")
    train = dm.train_dataloader().dataset
    test = dm.test_dataloader()
    test = (test[0] if isinstance(test, list) else test).dataset
    data = {
        "x": train.x,
        "y": train.y,
        "x_test": test.x,
        "y_test": test.y,
        "y_mean": torch.as_tensor(dm.y_mean).view(1, -1, 1, 1),
        "y_std": torch.as_tensor(dm.y_std).view(1, -1, 1, 1),
    }
    return data, source


MODEL = dict(n_modes=(8, 8), hidden_channels=32, n_layers=4)


def train_darcy(make: Callable, data: dict, seed: int, epochs: int, batch_size: int = 32) -> float:
    """Train a small FNO (``MODEL``) with cosine LR over ``epochs``; return the test relative L2 (mean)."""
    from app.metrics import relative_l2
    from app.models import FNO
    from app.param_groups import split_param_groups

    torch.manual_seed(seed)
    model = FNO(in_channels=1, out_channels=1, **MODEL)
    opt = make(split_param_groups(model))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    x, y, n = data["x"], data["y"], len(data["x"])

    def predict(inp):
        return model(inp) * data["y_std"] + data["y_mean"]

    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            loss = relative_l2(predict(x[idx]), y[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        return float(relative_l2(predict(data["x_test"]), data["y_test"]).mean())


def darcy_study(seeds: int, epochs: int) -> tuple[dict[str, list[float]], str, float]:
    data, source = darcy_data()
    errors: dict[str, list[float]] = {name: [] for name in ROWS}
    t0 = time.perf_counter()
    for seed in range(seeds):
        for name, (config, overrides) in ROWS.items():
            make, _ = optimizer_factory(config, overrides)
            errors[name].append(train_darcy(make, data, seed, epochs))
            log.info(
                "seed %d %-42s test rel. L2 %.4f (%.0f s so far)",
                seed,
                name,
                errors[name][-1],
                time.perf_counter() - t0,
            )
    return errors, source, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- report


def hardware_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    line = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} thread(s))"
    if LOAD_AT_START is not None:
        line += f"; 1-min load average {LOAD_AT_START:.1f} before the run (other processes)"
    return line


def render(weight: dict, study: tuple | None, command: str, repeats: int, epochs: int) -> str:
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
        base = errors["TensorGRaD"]

        def cell(v):
            return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.4f}"

        lines += [
            "",
            f"### Darcy test error ({n} seeds, {epochs} epochs; mean ± sd; lower is better)",
            "",
            f"Data: {source}. FNO n_modes {MODEL['n_modes']}, {MODEL['hidden_channels']} channels, "
            f"{MODEL['n_layers']} layers (spectral weights {(32, 32, 8, 5)}), batch 32, relative-L2 loss, cosine LR "
            f"over the epochs, optimizer settings from the config files; {seconds / 60:.1f} min for all runs.",
            "",
            "| optimizer | test rel. L2 | per seed | vs TensorGRaD (same seed) |",
            "|---|---:|---|---:|",
        ]
        for name, v in errors.items():
            rel = statistics.mean(a / b - 1 for a, b in zip(v, base, strict=True))
            lines.append(f"| {name} | {cell(v)} | {', '.join(f'{e:.4f}' for e in v)} | {100 * rel:+.1f}% |")

        def paired(a: str, b: str) -> str:
            pairs = list(zip(errors[a], errors[b], strict=True))
            change = 100 * statistics.mean(x / y - 1 for x, y in pairs)
            return f"{change:+.1f}% test error, higher on {sum(x > y for x, y in pairs)}/{len(pairs)} seeds"

        lines += [
            "",
            "Paired by seed (same initialisation and batches): bfloat16 state (stochastic rounding) vs float32 "
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
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, 5 repeats; print, no write")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the Darcy study (default 3)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per run (default 20)")
    parser.add_argument("--repeats", type=int, default=21, help="timing repeats (default 21)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a busy CPU)")
    parser.add_argument("--no-darcy", action="store_true", help="skip the training study")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.epochs, args.repeats = 1, 2, 5

    weight = measure_weight(args.repeats)
    for name, r in weight.items():
        log.info("%-42s state %d B (predicted %d), step %.1f ms", name, r["bytes"], r["predicted"], r["step"] * 1e3)
    study = None if args.no_darcy else darcy_study(args.seeds, args.epochs)
    command = "python -m bench.tensorgrad_bench" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    body = render(weight, study, command, args.repeats, args.epochs)
    sys.stdout.write(body)
    if not (args.quick or args.no_write):
        write_section(args.output, body)
        log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
