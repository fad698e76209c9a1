"""Which Tensor-GaLore settings train as well as AdamW? The study behind the default job's optimizer settings.

``python -m bench.defaults_study`` trains the same small FNO on neuraloperator's Darcy 16×16 set (900 train samples
of ``darcy_train_16.pt``, tested on ``darcy_test_16.pt``) through the product (``tgalore fit`` runs of
``bench.harness``, study ``defaults`` of ``bench.studies``): torch's AdamW, our complex AdamW under both
``complex_norm`` rules, and Tensor-GaLore at rank 0.25 while the settings change one at a time (the complex
normalisation, the refresh gap, the scale of the back-projected update, a Fira-style residual step, which modes are
projected), plus ranks 0.5 and 0.1; same seeds, steps and cosine schedule for every row. It rewrites the
``defaults-study`` section of BENCHMARKS.md (``--quick``: 20 steps, one seed, printed, nothing written). Set
``BENCH_LAUNCHER`` as for ``bench.tables``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from bench import harness, markdown, studies, tables

log = logging.getLogger("bench.defaults_study")

REPO = Path(__file__).resolve().parent.parent
START, END = markdown.markers("defaults-study")
RESULTS = REPO / "bench" / "results" / "defaults_study.json"


def rows_of(study: studies.Study, results: list[dict]) -> list[dict]:
    """One row per variant: test and train L2 per seed (finished runs), failures."""
    key = study.datasets[0].key
    out = []
    for m in study.methods:
        runs = tables.select(results, key, m.key)
        good = tables.ok(runs)
        out.append({
            "key": m.key, "label": m.label, "change": m.note,
            "test": {r["seed"]: r["tests"][tables._main_key(r)] for r in good},
            "train": {r["seed"]: r["train"]["test/l2_train"] for r in good},
            "state": good[0]["state_bytes"] / good[0]["adamw_state_bytes"] if good else None,
            "failed": len(runs) - len(good),
        })
    return out


DEFAULT_ROW = "tg_proj_modes_2"  # configs/optim/tensor_galore.yaml as shipped: the class defaults after grouping
#: per class default, (the row with the default, the row with the alternative, what the alternative is): the
#: paired change alternative / default - 1 says whether the default is the better setting
CHOICES: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("update_proj_gap=50", (("tg_component_50_1", "tg_component_200_1", "gap 200 (every mode, scale 1)"),)),
    ('scale="auto" (2 here)', ((DEFAULT_ROW, "tg_proj_modes_1", "scale 1"), (DEFAULT_ROW, "tg_proj_modes_3", "scale 3"),
                               ("tg_component_50_2", "tg_component_50_1", "scale 1, every mode"),
                               ("tg_component_50_2", "tg_component_50_3", "scale 3, every mode"))),
    ('proj_modes="auto" (channel modes [0, 1])', ((DEFAULT_ROW, "tg_component_50_2", "every mode"),
                                                  (DEFAULT_ROW, "tg_channel_halves", "rank [0.5, 0.5, 1, 1]"))),
)


def reading(rows: list[dict]) -> str:
    """The study's answer, from the numbers: for each class default, the paired change of each alternative row
    against the row with the default (lower beyond 2 standard errors means the alternative measured better), and
    whether the defaults are the measured best or within noise of it."""
    by = {r["key"]: r for r in rows}
    if any(k not in by or not by[k]["test"] for k in (DEFAULT_ROW, "adamw")):
        return "**Reading:** not available (the defaults row or AdamW has no finished run)."
    parts, beaten = [], []
    for default, pairs in CHOICES:
        cells = []
        for ref, alt, what in pairs:
            if not (by.get(ref) and by.get(alt) and by[ref]["test"] and by[alt]["test"]):
                cells.append(f"{what}: not run")
                continue
            m, sd, n, _ = tables.paired(by[alt]["test"], by[ref]["test"])
            v = tables.verdict(m, sd, n)
            cells.append(f"{what} {tables._pct(m)} ± {100 * sd:.1f} ({v})")
            if v == "lower":
                beaten.append(f"{default}: {what} ({tables._pct(m)})")
        parts.append(f"{default} — alternative vs default: " + "; ".join(cells))
    m, sd, n, _ = tables.paired(by[DEFAULT_ROW]["test"], by["adamw"]["test"])
    text = (f"**Reading** (generated from the numbers; paired test-L2 changes over seeds, *lower* / *higher* beyond "
            f"2 standard errors): the shipped row (`{by[DEFAULT_ROW]['label']}`, i.e. the class defaults after "
            f"`split_param_groups`) vs AdamW: {tables._pct(m)} ± {100 * sd:.1f} ({tables.verdict(m, sd, n)}). "
            + ". ".join(parts) + ". ")
    lr = by.get("adamw_lr1e-2")
    if lr and lr["test"]:
        m, sd, n, _ = tables.paired(lr["test"], by["adamw"]["test"])
        text += (f"AdamW at 2× lr vs AdamW: {tables._pct(m)} ± {100 * sd:.1f} ({tables.verdict(m, sd, n)}), so a "
                 "gain from a larger scale can be step size rather than the subspace. ")
    if beaten:
        return text + ("**Not every default is the measured best here**: an alternative is lower beyond the noise "
                       "for " + "; ".join(beaten) + ".")
    return text + ("**The class defaults are the measured best or within noise of it**: no alternative setting is "
                   "lower than the default beyond 2 standard errors (with 3 seeds that threshold is loose).")


def render(rows: list[dict], study: studies.Study, minutes: float, command: str) -> str:
    ref = next(r for r in rows if r["key"] == "adamw")
    lines = [
        "## Tensor-GaLore defaults: what makes it train like AdamW (issue 3)",
        "",
        f"Regenerate: `{command}` ({minutes:.1f} min in the runs' processes). neuraloperator's Darcy 16×16 (900 "
        f"train samples of `darcy_train_16.pt`, test `darcy_test_16.pt`) through `tgalore fit`, {study.note} "
        f"(spectral weights (16, 16, 8, 5) complex), {study.steps} steps, per-step cosine decay, seeds "
        f"{', '.join(map(str, study.seeds))}; one setting changes per row (`bench/studies.py`, `DEFAULTS_VARIANTS`). "
        "Test and train: mean ± sd over seeds of the final model's mean relative L2; paired: per seed, row / AdamW "
        "− 1, mean ± sd.",
        "",
        "| variant | what changed | optimizer state vs AdamW | test L2 | vs AdamW (paired) | train L2 | not ok |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        state = "—" if r["state"] is None else tables._pct(r["state"] - 1)
        rel = "—" if r["key"] == "adamw" else tables.paired_cell(r["test"], ref["test"])
        lines.append(f"| {r['label']} | {r['change']} | {state} | {tables.cell(r['test'])} | {rel} "
                     f"| {tables.cell(r['train'])} | {r['failed']} |")
    return "\n".join([*lines, "", reading(rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 seed; print, no write")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--from-json", type=Path, help="re-render the section from saved results (no training)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.steps, args.seeds = 20, 1
    study = replace(studies.STUDIES["defaults"], seeds=tuple(range(args.seeds)), steps=args.steps)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        study = replace(study, seeds=tuple(saved["seeds"]), steps=saved["steps"])
        results, hw = saved["results"], saved["hardware"]
    else:
        work = REPO / "bench" / "out" / ("runs_quick" if args.quick else "runs")
        results, hw = tables.run_study(study, work), harness.hardware()
        if not args.quick:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            saved = {"seeds": list(study.seeds), "steps": study.steps, "hardware": hw, "results": results}
            RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
    minutes = sum(r.get("process_s", 0.0) for r in results) / 60
    command = "python -m bench.defaults_study" + (f" --steps {study.steps}" if study.steps != 1000 else "")
    body = render(rows_of(study, results), study, minutes, command)
    body += f"\n\nHardware: {harness.hardware_line(hw, tables._threads(results))}."
    if args.quick:
        sys.stdout.write(body + "\n")
        return 0
    markdown.write_section(args.output, START, END, body)
    log.info("wrote the defaults-study section of %s", args.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
