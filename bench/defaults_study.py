"""Which Tensor-GaLore settings train as well as AdamW? The study behind the default job's optimizer settings.

``python -m bench.defaults_study`` trains the same small FNO on neuraloperator's Darcy 16×16 set (900 train /
100 validation samples of ``darcy_train_16.pt``, tested on ``darcy_test_16.pt``), with the same seeds, batches,
learning rate (cosine) and number of steps, once per variant: torch's AdamW, our complex AdamW under both
``complex_norm`` rules, and Tensor-GaLore at rank 0.25 while the settings change one at a time (the complex
normalisation, the refresh gap, the scale of the back-projected update, a Fira-style residual step, which modes are
projected), plus ranks 0.5 and 0.1.
It reports the mean ± sd over seeds of the final test and validation relative L2 and rewrites the
``defaults-study`` section of BENCHMARKS.md. The training loop is ``bench.harness.train_run`` (the one behind
``python -m bench.tables``). ``--quick`` runs 2 epochs and one seed and prints without writing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench import harness, markdown
from bench.harness import Hyper, Method

log = logging.getLogger("bench.defaults_study")

REPO = Path(__file__).resolve().parent.parent
START, END = markdown.markers("defaults-study")
RESULTS = REPO / "bench" / "results" / "defaults_study.json"  # raw rows, for --from-json
MODEL = dict(n_modes=(8, 8), hidden_channels=16, n_layers=4)
BATCH = 32


def variants(hp: Hyper) -> list[tuple[Method, Hyper, str]]:
    """(method, shared settings, what changes) in the order of the table; ``hp`` supplies lr and weight decay."""
    old = replace(hp, update_proj_gap=200, scale=1.0, proj_modes=None)
    every = replace(hp, proj_modes=None)  # the chosen gap and scale, every mode projected
    chosen = replace(hp, proj_modes=(0, 1))

    def tg(key: str, label: str, rank: float | tuple = 0.25, **opts) -> Method:
        return Method(key, label, "ours", tuple(sorted({"rank": rank, **opts}.items())))

    def cadamw(key: str, label: str, norm: str) -> Method:
        return Method(key, label, "ours", (("complex_norm", norm),), spectral_galore=False)

    return [
        (Method("adamw", "AdamW (torch)", "torch"), hp, "reference"),
        (cadamw("cadamw_element", "complex AdamW, element", "element"), hp, "paper's complex rule"),
        (cadamw("cadamw_component", "complex AdamW, component", "component"), hp, "torch-sized complex steps"),
        (tg("tg_element_200_1", "TG r=0.25, element, gap 200, scale 1", complex_norm="element"), old, "before"),
        (tg("tg_component_200_1", "TG r=0.25, component, gap 200, scale 1"), old, "complex rule"),
        (tg("tg_component_50_1", "TG r=0.25, component, gap 50, scale 1"), replace(old, update_proj_gap=50), "gap"),
        (tg("tg_component_50_2", "TG r=0.25, component, gap 50, scale 2"), every, "scale"),
        (tg("tg_component_50_3", "TG r=0.25, component, gap 50, scale 3"), replace(every, scale=3.0), "larger scale"),
        (
            tg("tg_residual", "TG r=0.25, gap 50, scale 2, residual scaled", residual="scaled"),
            every,
            "Fira residual",
        ),
        (
            tg("tg_channel_halves", "TG rank [0.5, 0.5, 1.0, 1.0] (Fourier modes rotated)", rank=(0.5, 0.5, 1.0, 1.0)),
            every,
            "which modes",
        ),
        (
            tg("tg_proj_modes_2", "TG r=0.25, proj_modes [0, 1], gap 50, scale 2"),
            chosen,
            "channel modes only (chosen)",
        ),
        (
            tg("tg_proj_modes_1", "TG r=0.25, proj_modes [0, 1], gap 50, scale 1"),
            replace(chosen, scale=1.0),
            "scale, channel modes",
        ),
        (
            tg("tg_proj_modes_3", "TG r=0.25, proj_modes [0, 1], gap 50, scale 3"),
            replace(chosen, scale=3.0),
            "larger scale, channel modes",
        ),
        (Method("adamw_lr1e-2", "AdamW (torch), lr 1e-2", "torch"), replace(hp, lr=1e-2), "AdamW at 2x lr"),
        (tg("tg05_component_50_2", "TG r=0.5, every mode, gap 50, scale 2", rank=0.5), every, "rank"),
        (tg("tg01_every", "TG r=0.1, every mode, gap 50, scale 2", rank=0.1), every, "rank"),
        (tg("tg01_proj_modes", "TG r=0.1, proj_modes [0, 1], gap 50, scale 2", rank=0.1), chosen, "rank"),
    ]


def prepare(data_dir: Path) -> harness.Prepared:
    from datamodules.darcy import DarcyDataModule

    shared = REPO.parent / "shared" / "data" / "neuralop"
    train, test = shared / "darcy_train_16.pt", shared / "darcy_test_16.pt"
    if not (train.is_file() and test.is_file()):
        raise FileNotFoundError(f"neuraloperator's Darcy 16x16 files are not in {shared}")
    dm = DarcyDataModule(
        train_file=str(train), test_files=[str(test)], batch_size=BATCH, data_dir=str(data_dir), n_train=1000, n_test=50
    )
    return harness.prepare("darcy16", dm, model=MODEL, periodic=False)


def study(seeds: list[int], epochs: int, data_dir: Path, only: set[str] | None = None) -> list[dict]:
    """One row per variant (only the variants whose key is in ``only``, if given)."""
    data = prepare(data_dir)
    hp = harness.default_hyper()
    rows = []
    for method, h, change in variants(hp):
        if only is not None and method.key not in only:
            continue
        runs = [harness.train_run(data, method, h, s, epochs=epochs, batch_size=BATCH) for s in seeds]
        ok = [r for r in runs if r["failure"] is None]
        test = [next(iter(r["tests"].values()))["l2"] for r in ok]
        val = [r["curve"][-1]["val_l2"] for r in ok]
        rows.append(
            {
                "key": method.key,
                "label": method.label,
                "change": change,
                "test": test,
                "val": val,
                "kept": ok[0]["kept_fraction"] if ok else None,
                "failed": len(runs) - len(ok),
            }
        )
        log.info("%s: test L2 %.4f", method.label, harness.mean_sd(test)[0])
    return rows


def render(rows: list[dict], seeds: list[int], epochs: int, steps: int, minutes: float, command: str) -> str:
    ref = {r["key"]: r for r in rows}["adamw"]
    lines = [
        "## Tensor-GaLore defaults: what makes it train like AdamW (issue 3)",
        "",
        f"Regenerate: `{command}` ({minutes:.1f} min). neuraloperator's Darcy 16×16 (900 train / 100 validation "
        f"from `darcy_train_16.pt`, test `darcy_test_16.pt`), FNO 4 layers, 16 channels, 8×8 modes (spectral "
        f"weights (16, 16, 8, 5) complex), {epochs} epochs × batch {BATCH} = {steps} steps, lr and weight decay "
        f"of `configs/defaults.yaml` with cosine decay, seeds {', '.join(map(str, seeds))}; one setting changes per "
        "row. Test and validation: mean ± sd over seeds of the final model's mean relative L2.",
        "",
        "| variant | what changed | spectral entries kept | test L2 | vs AdamW (paired) | validation L2 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        mu, sd = harness.mean_sd(r["test"])
        vmu, vsd = harness.mean_sd(r["val"])
        kept = "—" if r["kept"] is None else f"{100 * r['kept']:.1f}%"
        if r["key"] == "adamw" or len(r["test"]) != len(ref["test"]):
            rel = "—"
        else:
            m, s = harness.paired_relative_change(r["test"], ref["test"])
            rel = f"{100 * m:+.1f}% ± {100 * s:.1f}"
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        lines.append(
            f"| {r['label']} | {r['change']} | {kept} | {mu:.4f} ± {sd:.4f}{failed} | {rel} | {vmu:.4f} ± {vsd:.4f} |"
        )
    lines += [
        "",
        "Reading it: the paper's complex rule (`element`: divide by the RMS modulus) moves each real part by about "
        "lr/√2, so at torch's lr it trains slower; `component` divides by the RMS of the parts (same state: one "
        "real second moment per entry) and gives torch-sized steps. A projected update of a rank-r core has about "
        "√r of a full update's size, which `scale = 1/√r` restores (2 at r = 0.25); refreshing every 50 instead of "
        "200 steps lets the subspace follow the gradient. A Fira-style residual step (`residual: scaled`) adds "
        "the gradient outside the subspace at Adam's norm ratio; it is too small next to Adam's normalised core "
        "step to matter here. What matters is *which* modes carry the 25%: cutting the Fourier modes (8 and 5 "
        "entries) loses frequencies the operator needs, while the channel modes (16 × 16) compress well. "
        "`proj_modes: [0, 1]` reaches the same 25% on the channel modes alone and leaves the Fourier modes whole "
        "and unrotated (no factor, two mode products fewer per projection). A larger scale (3) on the channel "
        "modes beats AdamW here, but so does AdamW itself at twice the lr: the lr of `configs/defaults.yaml` (chosen "
        "for the default job) is low for this run, so that gain is step size, not the subspace; scale 2 keeps the "
        "projected update AdamW-sized, which makes the comparison at one lr fair. The default job and "
        "`configs/optim/tensor_galore.yaml` use component, gap 50, scale 2, proj_modes [0, 1]. The settings were "
        "chosen on these seeds' validation and test errors, so `python -m bench.tables` (other datasets, its own "
        "budgets) is the check that they carry over.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed; print, no write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "bench")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--from-json", type=Path, help="re-render the section from a saved results file (no training)"
    )
    parser.add_argument(
        "--only",
        help="comma-separated variant keys: train only these and merge them into the saved study "
        "(bench/results/defaults_study.json, same seeds and epochs)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    harness.quiet_lightning()
    if args.quick:
        args.epochs, args.seeds = 2, 1
    from bench.tables import hardware

    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        rows, seeds, epochs, minutes, hw = (saved[k] for k in ("rows", "seeds", "epochs", "minutes", "hardware"))
    else:
        seeds, epochs = list(range(args.seeds)), args.epochs
        start = time.perf_counter()
        only = None if args.only is None else set(args.only.split(","))
        rows = study(seeds, epochs, args.data_dir, only)
        minutes = (time.perf_counter() - start) / 60
        hw = hardware(torch.device("cpu"))
        if only is not None:  # merge into the saved study (same seeds and epochs), in the table's order
            saved = json.loads(RESULTS.read_text())
            if (saved["seeds"], saved["epochs"]) != (seeds, epochs):
                parser.error(f"--only needs the saved study's seeds and epochs ({RESULTS})")
            by_key = {r["key"]: r for r in saved["rows"]} | {r["key"]: r for r in rows}
            order = [m.key for m, _, _ in variants(harness.default_hyper())]
            rows = [by_key[k] for k in order if k in by_key]
            minutes, hw = saved["minutes"] + minutes, saved["hardware"]
        if not args.quick:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            saved = dict(rows=rows, seeds=seeds, epochs=epochs, minutes=minutes, hardware=hw)
            RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    steps = epochs * -(-900 // BATCH)
    command = "python -m bench.defaults_study" + (f" --epochs {epochs}" if epochs != 20 else "")
    body = render(rows, seeds, epochs, steps, minutes, command)
    body += (
        f"\n\nHardware: {hw['cpu']}, {hw['cores']} cores ({hw['threads']} torch threads), torch {hw['torch']}, "
        f"neuraloperator {hw['neuralop']}; 1-min load average {hw['load_start']:.1f} at the start."
    )
    if args.quick:
        sys.stdout.write(body + "\n")
        return 0
    markdown.write_section(args.output, START, END, body)
    log.info("wrote the defaults-study section of %s", args.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
