"""Burgers from a PDEBench-layout HDF5 file written from this project's own solver (issue 17); writes its
BENCHMARKS.md section.

1. Solves ``N_SAMPLES`` Burgers trajectories with ``BurgersDataModule.generate`` (nu = 0.01, 1024 points, 11
   times in [0, 1]) and writes them as PDEBench writes ``1D_Burgers_Sols_Nu*.hdf5``: ``tensor`` (N, T, X),
   ``x-coordinate``, ``t-coordinate``. The same samples also go into neuraloperator-format ``.pt`` files, split
   the way PDEBench splits (test: the first 10%; training: the next ``N_TRAIN``).
2. Trains the product (``configs/experiments/burgers_tensor_galore.yaml`` through ``app.cli``, a Lightning
   ``Trainer``) on each source for ``SEEDS``, and reports the test relative L2 at 128 and, zero-shot, 256 points.
   The two sources hold the same numbers, so their rows must agree to float precision: the HDF5 reader (lazy,
   one sample per read, PDEBench's split) is checked end to end against the ``.pt`` path.

Run ``python -m bench.pdebench_burgers`` (a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from bench import markdown

REPO = Path(__file__).resolve().parent.parent
START, END = markdown.markers("pdebench-burgers")
N_SAMPLES, N_TRAIN, EPOCHS = 1000, 500, 10
SEEDS = (0, 1, 2)


def write_files(folder: Path) -> dict[str, str]:
    """The solver's trajectories as a PDEBench HDF5 file and as the equivalent neuraloperator .pt pair."""
    from datamodules.burgers import BurgersDataModule

    dm = BurgersDataModule(task="trajectory", trajectory_steps=10, solve_resolution=1024, viscosity=0.01)
    parts = []
    for start in range(0, N_SAMPLES, 100):
        rngs = [np.random.default_rng([2026, 17, i]) for i in range(start, start + 100)]
        parts.append(dm.generate(rngs, [1024])[1024][1])  # y: u at t = 0, 0.1, ..., 1, (100, 11, 1024)
    u = torch.cat(parts)
    h5 = folder / "1D_Burgers_Sols_Nu0.01.hdf5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("tensor", data=u.numpy(), chunks=(1, *u.shape[1:]))
        f.create_dataset("x-coordinate", data=np.arange(1024, dtype=np.float32) / 1024)
        f.create_dataset("t-coordinate", data=np.linspace(0.0, 1.0, u.shape[1], dtype=np.float32))
    n_test = int(0.1 * N_SAMPLES)
    train, test = folder / "train.pt", folder / "test.pt"
    torch.save({"x": u[n_test : n_test + N_TRAIN, 0], "y": u[n_test : n_test + N_TRAIN, -1]}, train)
    torch.save({"x": u[:n_test, 0], "y": u[:n_test, -1]}, test)
    return {"hdf5": str(h5), "train_pt": str(train), "test_pt": str(test), "n_test": n_test}


def train(files: dict, source: str, seed: int, runs: Path) -> dict[str, float]:
    from app.cli import cli_main

    data = [f"--data.init_args.train_file={files['hdf5']}", "--data.init_args.test_files=null"]
    if source == "pt":
        data = [f"--data.init_args.train_file={files['train_pt']}", f"--data.init_args.test_files=[{files['test_pt']}]"]
    start = time.perf_counter()
    cli = cli_main([
        "fit", "-c", str(REPO / "configs/experiments/burgers_tensor_galore.yaml"), f"--seed_everything={seed}",
        f"--trainer.default_root_dir={runs}", f"--trainer.logger.init_args.save_dir={runs}",
        f"--trainer.logger.init_args.name={source}_{seed}", f"--trainer.max_epochs={EPOCHS}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        *data, f"--data.init_args.n_train={N_TRAIN}", f"--data.init_args.n_test={files['n_test']}",
        f"--data.init_args.seed={seed}",
    ])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/l2_")}
    return {**metrics, "seconds": time.perf_counter() - start}


def table(results: dict) -> str:
    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    lines = [
        "## Burgers from a PDEBench-layout HDF5 file (issue 17)",
        "",
        f"`python -m bench.pdebench_burgers`: {N_SAMPLES} trajectories of this project's Burgers solver (nu = 0.01, "
        f"1024 points, 11 times) written as PDEBench's `1D_Burgers_Sols_Nu0.01.hdf5` (`tensor` (N, T, X)); the "
        f"same numbers as neuraloperator `.pt` files, split as PDEBench splits (test: the first "
        f"{results['n_test']}; training: the next {N_TRAIN}, 10% of them for validation). "
        f"`configs/experiments/burgers_tensor_galore.yaml` (Tensor-GaLore r=0.25, FNO 4x32, 16 modes) through the "
        f"CLI, {EPOCHS} epochs, training at 128 points; seeds {', '.join(map(str, SEEDS))} (mean ± sd).",
        "",
        "| source | test L2 res128 | test L2 res256 (zero-shot) | run (s) |",
        "|---|---:|---:|---:|",
    ]
    labels = {"hdf5": "PDEBench HDF5 (`.hdf5`, lazy reads)", "pt": "neuraloperator `.pt`, same samples"}
    for source, label in labels.items():
        rows = results[source]
        secs = statistics.mean(r["seconds"] for r in rows)
        lines.append(f"| {label} | {cell(rows, 'test/l2_res128')} | {cell(rows, 'test/l2_res256')} | {secs:.0f} |")
    diff = max(abs(a[k] - b[k]) for a, b in zip(results["hdf5"], results["pt"], strict=True)
               for k in ("test/l2_res128", "test/l2_res256"))
    lines += ["", f"Largest difference between the two sources, same seed: {diff:.1e}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_files(folder)
        results = {"n_test": files["n_test"]}
        for source in ("hdf5", "pt"):
            results[source] = [train(files, source, seed, folder / "runs") for seed in SEEDS]
    (REPO / "bench/results").mkdir(exist_ok=True)
    (REPO / "bench/results/pdebench_burgers.json").write_text(json.dumps(results, indent=1))
    markdown.write_section(args.output, START, END, table(results))


if __name__ == "__main__":
    main()
