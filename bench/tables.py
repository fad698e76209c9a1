"""The accuracy benchmarks through the product (issue 16): the regularisation study, the rank sweep and the main
table; writes the raw results and the ``tables`` section of BENCHMARKS.md.

    python -m bench.tables                       # every study (about an hour on a 2-core CPU)
    python -m bench.tables --studies regularisation sweep
    python -m bench.tables --quick               # CI-sized smoke test: 1 seed, 20 steps (writes under bench/out)
    python -m bench.tables --from-json bench/results/tables.json   # re-render, no training
    python -m bench.tables --studies main --datasets burgers --keep-saved   # one dataset; keep the other results

Every run is ``tgalore fit`` composed from the shipped configs plus a YAML delta (``bench.studies``), in its own
process (``bench.harness``; one process per method and dataset, its seeds in turn). Set ``BENCH_LAUNCHER`` to
prefix each process (e.g. ``BENCH_LAUNCHER=/work/cpu-run`` on a shared machine), and ``--jobs N`` (or
``BENCH_JOBS``) to run N processes at once, each with cores ÷ N torch threads unless ``OMP_NUM_THREADS`` is set.
Finished runs are cached under ``bench/out/runs`` (keyed by a digest of their configs), so an interrupted
benchmark resumes where it stopped; a study's runs that are not done are listed as not run, never estimated. While
a file ``bench/out/runs/PAUSE`` exists, no new process is started.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import harness, markdown, studies
from bench.studies import Study

log = logging.getLogger("bench.tables")

REPO = Path(__file__).resolve().parent.parent
START, END = markdown.markers("tables")
BANDS = ("low", "mid", "high")


# ============================================================================================ running


def run_study(
    study: Study, work_dir: Path, *, budget_s: float | None = None, started: float = 0.0, cached_only: bool = False,
    jobs: int | None = None,
) -> list[dict]:
    """Every run of ``study`` (cached runs reused), one process per (dataset, method), ``jobs`` processes at a time
    (default ``BENCH_JOBS``, else 1); runs that are not cached when ``budget_s`` (since ``started``) is spent, or with
    ``cached_only``, are not started and come back as ``{"not_run": True}``. Results are in ``specs`` order."""
    jobs = harness.bench_jobs() if jobs is None else jobs
    by_group: dict[tuple[str, str], list] = {}
    for spec in studies.specs(study):
        by_group.setdefault((spec.dataset, spec.method), []).append(spec)

    def one(item: tuple[tuple[str, str], list]) -> list[dict]:
        (dataset, method), group = item
        while (work_dir / "PAUSE").exists():  # lets the machine's owner run something else between processes
            time.sleep(5)
        t0 = time.perf_counter()
        spent = budget_s is not None and time.perf_counter() - started > budget_s
        done = harness.launch(group, work_dir, start=not (spent or cached_only), parallel=jobs)
        done = [r if r is not None else _not_run(s) for r, s in zip(done, group, strict=True)]
        if not all(r.get("not_run") for r in done):
            l2 = [r["tests"].get(_main_key(r)) for r in done]
            log.info("%s %s %s: test L2 %s (%.0f s)", study.name, dataset, method,
                     ", ".join("failed" if v is None else f"{v:.4f}" for v in l2), time.perf_counter() - t0)
        return done

    if jobs == 1:
        return [r for item in by_group.items() for r in one(item)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each thread only waits on its run's process
        return [r for done in pool.map(one, by_group.items()) for r in done]


def _not_run(spec) -> dict:
    return {"study": spec.study, "dataset": spec.dataset, "method": spec.method, "seed": spec.seed,
            "not_run": True, "tests": {}, "train": {}}


def _main_key(r: dict) -> str:
    names = r.get("test_names") or ["?"]
    return f"test/l2_{names[0]}"


# ============================================================================================ statistics


def ok(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r.get("not_run") and not r.get("failure")]


def select(results: list[dict], dataset: str, method: str) -> list[dict]:
    return sorted((r for r in results if r["dataset"] == dataset and r["method"] == method), key=lambda r: r["seed"])


def values(runs: list[dict], where: str, key: str) -> dict[int, float]:
    """``seed -> value`` of ``runs[where][key]`` (``where``: ``tests`` or ``train``) for finished runs."""
    return {r["seed"]: r[where][key] for r in ok(runs) if key in r[where]}


def cell(v: dict[int, float] | list[float], digits: int = 4) -> str:
    vals = list(v.values()) if isinstance(v, dict) else list(v)
    if not vals:
        return "—"
    m, sd = harness.mean_sd(vals)
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"


def paired(ours: dict[int, float], base: dict[int, float]) -> tuple[float, float, int, int]:
    """Mean and sd over common seeds of ``ours / base - 1``, the seed count and on how many seeds ours is lower."""
    seeds = sorted(set(ours) & set(base))
    if not seeds:
        return math.nan, math.nan, 0, 0
    m, sd = harness.paired_relative_change([ours[s] for s in seeds], [base[s] for s in seeds])
    return m, sd, len(seeds), sum(ours[s] < base[s] for s in seeds)


def verdict(m: float, sd: float, n: int) -> str:
    """'lower' / 'higher' when the mean paired change is beyond 2 standard errors, 'same' for an exact tie on every
    seed (0 ± 0), else 'within noise'."""
    if n == 0 or math.isnan(m):
        return "n/a"
    if n < 2:
        return "1 seed"
    if m == 0:
        return "same" if sd == 0 else "within noise"
    if sd == 0 or abs(m) > 2 * sd / math.sqrt(n):
        return "lower" if m < 0 else "higher"
    return "within noise"


def paired_cell(ours: dict[int, float], base: dict[int, float]) -> str:
    m, sd, n, wins = paired(ours, base)
    if n == 0:
        return "—"
    return f"{_pct(m)} ± {100 * sd:.1f} ({verdict(m, sd, n)}; lower on {wins}/{n})"


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.1f}%".replace("-", "−")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _status(runs: list[dict]) -> str:
    failed = [r for r in runs if r.get("failure")]
    missing = [r for r in runs if r.get("not_run")]
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed ({failed[0]['failure'][:80]})")
    if missing:
        parts.append(f"{len(missing)} not run")
    return "; ".join(parts)


def _test_names(results: list[dict], dataset: str) -> list[str]:
    for r in ok([r for r in results if r["dataset"] == dataset]):
        return list(r.get("test_names") or [])
    return []


def _step_ms(runs: list[dict]) -> str:
    t = [r["fit_s"] / r["steps"] for r in ok(runs) if r.get("steps")]
    return f"{1e3 * harness.mean_sd(t)[0]:.0f}" if t else "—"


def _state(runs: list[dict]) -> str:
    r = next(iter(ok(runs)), None)
    if r is None or not r.get("state_bytes") or not r.get("adamw_state_bytes"):
        return "—"
    return f"{r['state_bytes'] / 1024:,.0f} ({_pct(r['state_bytes'] / r['adamw_state_bytes'] - 1)})"


# ============================================================================================ rendering


def render_summary(study: Study, results: list[dict]) -> list[str]:
    """One row per method: its paired test-L2 change vs AdamW on each dataset that has results, and the count of
    datasets where it is lower / within noise / higher (the per-dataset tables below hold the rest)."""
    names = {d.key: _test_names(results, d.key) for d in study.datasets}
    done = [d for d in study.datasets if names[d.key]]
    if len(done) < 2:
        return []
    mains = {d.key: f"test/l2_{names[d.key][0]}" for d in done}  # each dataset's first test set, as its table
    header = ["method", *(d.label.split(" (")[0] for d in done), "lower / within noise / higher"]
    rows, tally = [], {}
    for m in study.methods:
        if m.key == "adamw":
            continue
        row, counts = [m.label], {"lower": 0, "within noise": 0, "same": 0, "higher": 0}
        for d in done:
            ours = values(select(results, d.key, m.key), "tests", mains[d.key])
            mean, sd, n, _ = paired(ours, values(select(results, d.key, "adamw"), "tests", mains[d.key]))
            v = verdict(mean, sd, n)
            counts[v] = counts.get(v, 0) + 1
            row.append("—" if n == 0 else f"{_pct(mean)} ({v})")
        if counts.get("n/a") == len(done):  # no finished run of this method
            continue
        rows.append(row + [f"{counts['lower']} / {counts['within noise'] + counts['same']} / {counts['higher']}"])
        tally[m.label] = counts
    if not tally:  # only AdamW has finished runs: nothing to compare
        return []
    score = {k: (c["lower"] - c["higher"], -c["higher"]) for k, c in tally.items()}
    best = [k for k in tally if score[k] == max(score.values())]
    never_worse = [k for k, c in tally.items() if c["higher"] == 0]
    everywhere = [k for k, c in tally.items() if c["lower"] == len(done)]
    reading = (f"**Reading** ({len(done)} datasets, each one's training resolution): "
               + (f"lower than AdamW on every dataset: {', '.join(everywhere)}. " if everywhere else
                  "no method is lower than AdamW on every dataset. ")
               + f"Most often lower and least often higher: {' and '.join(best)} (lower on "
               f"{tally[best[0]]['lower']}, higher on {tally[best[0]]['higher']}). "
               + ("Never higher than AdamW beyond the noise: " + "; ".join(never_worse) + "."
                  if never_worse else "Every method is higher than AdamW on at least one dataset."))
    return ["Test L2 vs AdamW (paired change over seeds; *lower*/*higher* beyond 2 standard errors):", "",
            *_table(header, rows), "", reading, ""]


def render_dataset(study: Study, results: list[dict], dataset) -> list[str]:
    names = _test_names(results, dataset.key)
    if not names:
        return [f"#### {dataset.label}", "", "Not run (no finished run): " + _rerun(study, dataset.key) + ".", ""]
    main = names[0]
    base = values(select(results, dataset.key, "adamw"), "tests", f"test/l2_{main}")
    header = ["method"] + [f"test L2 `{n}`" + (" (zero-shot)" if i else "") for i, n in enumerate(names)]
    header += [f"H1 `{main}`", f"L2 vs AdamW `{main}` (paired)", "train L2",
               *(f"{b} band `{main}`" for b in BANDS), "optimizer state KiB (vs AdamW)", "ms/step", "not ok"]
    empty = empty_bands(results, dataset.key, main)
    rows = []
    for m in study.methods:
        runs = select(results, dataset.key, m.key)
        t = values(runs, "tests", f"test/l2_{main}")
        row = [m.label] + [cell(values(runs, "tests", f"test/l2_{n}")) for n in names]
        row += [cell(values(runs, "tests", f"test/h1_{main}")),
                "—" if m.key == "adamw" else paired_cell(t, base),
                cell(values(runs, "train", "test/l2_train"))]
        row += ["—" if b in empty else cell(values(runs, "tests", f"test_band/{b}_{main}"), 3) for b in BANDS]
        row += [_state(runs), _step_ms(runs), _status(runs) or "0"]
        rows.append(row)
    r0 = next(iter(ok([r for r in results if r["dataset"] == dataset.key])))
    same = identical_rows(study, results, dataset.key, main)
    notes = " ".join(filter(None, [dataset.note, same]))
    return [f"#### {dataset.label}", "",
            f"{r0['n_train']} training samples, {study.steps} steps, seeds {_seeds(study)}; ms/step is the fit time "
            "over the steps in a shared machine's slot (a rough cost, not a timing benchmark).", "",
            *_table(header, rows), "", band_sentence(study, results, dataset.key, main), "",
            *([notes, ""] if notes else [])]


def identical_rows(study: Study, results: list[dict], dataset: str, test: str) -> str:
    """Methods whose test errors are equal on every seed: one update under two names on this dataset."""
    seen: dict[tuple, list[str]] = {}
    for m in study.methods:
        t = values(select(results, dataset, m.key), "tests", f"test/l2_{test}")
        if len(t) == len(study.seeds):
            seen.setdefault(tuple(sorted(t.items())), []).append(m.label)
    groups = [labels for labels in seen.values() if len(labels) > 1]
    if not groups:
        return ""
    return ("Identical on every seed (the same update here, not independent evidence): "
            + "; ".join(" and ".join(g) for g in groups) + ".")


def empty_bands(results: list[dict], dataset: str, test: str) -> dict[str, float]:
    """Bands whose relative error measures nothing: AdamW's mean error there exceeds the band's whole target
    content (the targets carry almost no energy in it, so the ratio is noise over ~0). ``{band: AdamW's mean}``."""
    out = {}
    for b in BANDS:
        v = values(select(results, dataset, "adamw"), "tests", f"test_band/{b}_{test}")
        if v and statistics.fmean(v.values()) > 1.0:
            out[b] = statistics.fmean(v.values())
    return out


def band_sentence(study: Study, results: list[dict], dataset: str, test: str) -> str:
    """Where in frequency each method's error differs from AdamW's: per band, the paired change beyond noise."""
    empty = empty_bands(results, dataset, test)
    note = ""
    if empty:
        note = (" Not shown: the " + " and ".join(f"{b} band (AdamW's error {v:,.0f}× the band's content)"
                                                   for b, v in empty.items())
                + ", where the targets carry almost no energy, so a relative error there measures nothing "
                "(the values stay in the JSON).")
    base = {b: values(select(results, dataset, "adamw"), "tests", f"test_band/{b}_{test}")
            for b in BANDS if b not in empty}
    parts = []
    for m in study.methods:
        if m.key == "adamw":
            continue
        runs = select(results, dataset, m.key)
        changes = []
        for b in base:
            mean, sd, n, _ = paired(values(runs, "tests", f"test_band/{b}_{test}"), base[b])
            v = verdict(mean, sd, n)
            if v in ("lower", "higher"):
                changes.append(f"{b} {_pct(mean)}")
        if changes:
            parts.append(f"{m.label}: " + ", ".join(changes))
    if not parts:
        return f"Band errors on `{test}` vs AdamW (paired): no band differs beyond 2 standard errors." + note
    return (f"Band errors on `{test}` that differ from AdamW's beyond 2 standard errors (paired change): "
            + "; ".join(parts) + "." + note)


def render_sweep(study: Study, results: list[dict]) -> list[str]:
    d = study.datasets[0]
    names = _test_names(results, d.key)
    if not names:
        return ["Not run: " + _rerun(study) + ".", ""]
    key = f"test/l2_{names[0]}"
    base = values(select(results, d.key, "adamw"), "tests", key)
    fams = [("tg", "Tensor-GaLore (channel modes)"), ("galore_d1", "GaLore d=1"), ("galore_d2", "GaLore d=2"),
            ("galore_d3", "GaLore d=3")]
    rows = []
    for r in studies.RANKS:
        row = [f"{r:g}"]
        for prefix, _ in fams:
            runs = select(results, d.key, f"{prefix}_{r:g}")
            t = values(runs, "tests", key)
            m, sd, n, wins = paired(t, base)
            extra = f" ({_pct(m)} ± {100 * sd:.1f}, {verdict(m, sd, n)}; state {_state(runs).split(' ', 1)[-1]})"
            row.append((cell(t) + extra if t else "—") + (f"; {_status(runs)}" if _status(runs) else ""))
        rows.append(row)
    return [f"AdamW on the same seeds: test L2 {cell(base)}. Cells: test L2 on `{names[0]}` (mean ± sd over seeds "
            "{seeds}), then in brackets the paired change vs AdamW (mean ± sd over seeds; lower/higher beyond 2 "
            "standard errors) and the optimizer state vs AdamW's.".replace("{seeds}", _seeds(study)), "",
            *_table(["rank"] + [label for _, label in fams], rows), ""]


def render_regularisation(study: Study, results: list[dict]) -> list[str]:
    lines: list[str] = []
    findings = []
    for d in study.datasets:
        names = _test_names(results, d.key)
        if not names:
            lines += [f"#### {d.label}", "", "Not run: " + _rerun(study, d.key) + ".", ""]
            continue
        key = f"test/l2_{names[0]}"
        base_runs = select(results, d.key, "adamw")
        base_test, base_train = values(base_runs, "tests", key), values(base_runs, "train", "test/l2_train")
        base_gap = {s: base_test[s] - base_train[s] for s in base_test if s in base_train}
        rows = []
        for m in study.methods:
            runs = select(results, d.key, m.key)
            test, train = values(runs, "tests", key), values(runs, "train", "test/l2_train")
            gap = {s: test[s] - train[s] for s in test if s in train}
            gd = {s: gap[s] - base_gap[s] for s in gap if s in base_gap}
            gm, gsd = harness.mean_sd(gd.values())
            is_base = m.key == "adamw"
            rows.append([
                m.label, cell(train), cell(test), cell(gap),
                "—" if is_base else paired_cell(test, base_test),
                "—" if is_base or not gd else f"{gm:+.4f} ± {gsd:.4f} ({verdict(gm, gsd, len(gd))})".replace("-", "−"),
                *(cell(values(runs, "tests", f"test_band/{b}_{names[0]}"), 3) for b in BANDS),
                _status(runs) or "0",
            ])
            if not is_base and test:
                pm, psd, n, _ = paired(test, base_test)
                tm, tsd, tn, _ = paired(train, base_train)
                findings.append((d.label, m.label, pm, psd, n, gm, gsd, len(gd), tm, tsd, tn))
        lines += [f"#### {d.label}", "", *_table(
            ["method", "train L2", "test L2", "gap (test − train)", "test L2 vs AdamW (paired)",
             "gap − AdamW's gap (paired)", *(f"{b} band" for b in BANDS), "not ok"], rows), "",
            band_sentence(study, results, d.key, names[0]), ""]
    lines += [claim_sentence(findings), ""]
    return lines


PAPER_DARCY_L2 = -0.49  # Tensor-GaLore (arXiv:2501.02379): test L2 vs AdamW on Darcy 421x421, rank 0.25


def claim_sentence(findings: list[tuple]) -> str:
    """The paper's claim (low-rank gradients regularise: a smaller gap and a lower test error than AdamW's), judged
    from the numbers. ``findings``: (dataset, method, paired test change mean, sd, n, gap change mean, sd, n,
    paired train change mean, sd, n).
    The rule, fixed before the runs: the claim *holds* if at least half of the low-rank (dataset, method) pairs
    have a lower test error beyond 2 standard errors together with a smaller gap, *holds partly* if some do, and
    *does not hold* if none do."""
    if not findings:
        return "**The claim is not tested here**: no finished runs."
    lower = [f for f in findings if verdict(f[2], f[3], f[4]) == "lower"]
    higher = [f for f in findings if verdict(f[2], f[3], f[4]) == "higher"]
    smaller_gap = [f for f in findings if verdict(f[5], f[6], f[7]) == "lower"]
    both = [f for f in lower if f in smaller_gap]
    by_train = [f for f in smaller_gap if verdict(f[8], f[9], f[10]) == "higher"]
    best = min(findings, key=lambda f: f[2])
    text = (
        f"**Reading** ({len(findings)} low-rank (dataset, method) pairs, each against AdamW on the same seeds): "
        f"the generalisation gap is smaller beyond 2 standard errors in {len(smaller_gap)} ({len(by_train)} of them "
        f"with a training error higher than AdamW's beyond 2 standard errors); the test error is lower "
        f"beyond 2 standard errors in {len(lower)}, higher in {len(higher)}, within noise in the rest. The largest "
        f"mean reduction of the test error is {_pct(best[2])} ({best[0]}, {best[1]}); the paper reports "
        f"{_pct(PAPER_DARCY_L2)} on Darcy at 421×421. With 3 seeds a 2-standard-error threshold is loose (t with 2 "
        "degrees of freedom: about 18% two-sided false-positive rate per comparison), so a few single *lower* "
        "verdicts among this many comparisons are expected by chance. "
    )
    if len(both) * 2 >= len(findings):
        return text + "**The claim holds here**: most low-rank methods have both a smaller gap and a lower test error."
    if both:
        return text + (
            f"**The claim holds only partly here**: only {len(both)} of {len(findings)} pairs have both a smaller gap "
            "and a test error lower than AdamW's beyond the noise, and by far less than the paper's figure."
        )
    return text + (
        "**The paper's claim does not hold here**: whatever the gap does, no low-rank method has a test error lower "
        "than AdamW's beyond the noise in this data-limited regime."
    )


def _seeds(study: Study) -> str:
    return ", ".join(map(str, study.seeds))


def _rerun(study: Study, dataset: str | None = None) -> str:
    return f"`python -m bench.tables --studies {study.name}`" + (f" (dataset `{dataset}`)" if dataset else "")


def render(saved: dict[str, Any]) -> str:
    meta, results = saved["meta"], saved["results"]
    lines = [
        "## Accuracy through the product: regularisation, rank sweep, every dataset (issue 16)",
        "",
        f"Command: `{meta['command']}`. {_cost_sentence(results)} Hardware: "
        f"{harness.hardware_line(meta['hardware'], _threads(results))}. Raw results: `{meta.get('results', '?')}`.",
        "",
        *_kept_lines(meta),
        "Every figure comes from `tgalore fit` runs (`app.cli.cli_main(args, run=False)` and its Trainer, one process "
        "per method and dataset): the default job's configs (`app.cli.DEFAULT_CONFIGS`), the dataset's and the "
        "optimizer's shipped configs, "
        "`configs/bench/base.yaml` (budget in optimizer steps, per-step cosine decay to 0, no validation passes, "
        "no checkpoints: the *final* model is tested) and a per-run YAML delta (seed, steps, the method's overrides; "
        "`bench/studies.py`). The seed (`seed_everything`) sets the initialisation; data and batch order are the "
        "same for every run of a dataset. Errors: mean ± sd over seeds of the mean per-sample relative error; "
        "*paired* changes are per seed, ours / AdamW − 1, mean ± sd over seeds, *lower*/*higher* when beyond 2 "
        "standard errors (else *within noise*), with on how many seeds ours was lower. Band errors (`app.metrics."
        "SpectralBandError`, logged at test as `test_band/<band>_<test set>`): the relative error within the low "
        "(≤ 1/4 of Nyquist), mid (1/4–1/2) and high (> 1/2) Fourier bands of the test outputs. Train L2: the final "
        "model on its own training split (same metric).",
        "",
    ]
    for name in saved["studies"]:
        study = _study(saved, name)
        lines += [f"### {study.title}", "", f"{study.steps} steps, seeds {_seeds(study)}; {study.note}.", ""]
        if name == "regularisation":
            lines += render_regularisation(study, results)
        elif name == "sweep":
            lines += render_sweep(study, results)
        else:
            lines += render_summary(study, results)
            for d in study.datasets:
                lines += render_dataset(study, results, d)
    not_run = [n for n in studies.TABLES if n not in saved["studies"]]
    missing = {(r["study"], r["dataset"]) for r in results if r.get("not_run")}
    for name in saved["studies"]:  # datasets left out (--datasets) have no record at all
        missing |= {(name, d.key) for d in _study(saved, name).datasets
                    if not any(r["study"] == name and r["dataset"] == d.key for r in results)}
    missing = sorted(missing)
    if not_run or missing:
        lines += ["### Not run in this session", ""]
        lines += [f"- study `{n}`: `python -m bench.tables --studies {n}`" for n in not_run]
        lines += [f"- `{s}` / `{d}`: `python -m bench.tables --studies {s}` (cached runs are reused)"
                  for s, d in missing]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _kept_lines(meta: dict[str, Any]) -> list[str]:
    """What ``--keep-saved`` kept: the earlier commands and the (study, dataset) pairs whose results come from them."""
    earlier = meta.get("earlier") or []
    if not earlier:
        return []
    lines = ["Results kept from earlier commands (`--keep-saved`; each study and dataset comes from the last command "
             "that trained it):", ""]
    for e in earlier:
        pairs = ", ".join(f"`{s}/{d}`" for s, d in e["trained"]) or "nothing"
        lines.append(f"- `{e['command']}`: {pairs}; hardware: {harness.hardware_line(e['hardware'])}.")
    return [*lines, ""]


def _pairs(results: list[dict]) -> list[tuple[str, str]]:
    """The (study, dataset) pairs with at least one run that was started (not only "not run" records)."""
    return sorted({(r["study"], r["dataset"]) for r in results if not r.get("not_run")})


def keep_saved(saved: dict[str, Any], old: dict[str, Any], trained: set[tuple[str, str]]) -> dict[str, Any]:
    """``saved`` (this command's results) plus ``old``'s results for every (study, dataset) that this command did not
    train; the studies of both, in ``studies.TABLES`` order; ``meta["earlier"]`` names the commands kept from."""
    kept = [r for r in old["results"] if (r["study"], r["dataset"]) not in trained]
    earlier = [dict(e, trained=[p for p in map(tuple, e["trained"]) if p not in trained])
               for e in old["meta"].get("earlier", [])]
    earlier.append({"command": old["meta"]["command"], "hardware": old["meta"]["hardware"],
                    "trained": [p for p in map(tuple, old["meta"].get("trained") or _pairs(old["results"]))
                                if p not in trained]})
    names = set(saved["studies"]) | set(old["studies"])
    return {
        "meta": {**saved["meta"], "earlier": [e for e in earlier if e["trained"]]},
        "studies": [n for n in studies.TABLES if n in names],
        "results": kept + saved["results"],
    }


def _cost_sentence(results: list[dict]) -> str:
    """What the tabulated runs cost: their fitting time (one core each: CPU-minutes), and their processes' wall
    time, which also counts imports, tests and waits for a CPU slot."""
    fit = sum(r.get("fit_s", 0.0) for r in results) / 60
    wall = sum(r.get("process_s", 0.0) for r in results) / 60
    return (f"The {len(ok(results))} tabulated runs fitted for {fit:.0f} min in all ({wall:.0f} min of their "
            "processes' wall time, imports, tests and waits for a CPU slot included).")


def _threads(results: list[dict]) -> int | None:
    return next((r["threads"] for r in ok(results) if r.get("threads")), None)


def _study(saved: dict, name: str) -> Study:
    return studies.shrink(studies.STUDIES[name], saved["meta"]["mode"], saved["meta"].get("steps"))


# ============================================================================================ main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="CI-sized smoke test: 1 seed, 20 steps, each study's first dataset")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="the test's size: a tiny generated Darcy set, 3 steps, 2 methods")
    parser.add_argument("--studies", nargs="+", choices=studies.TABLES, default=list(studies.TABLES))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the study's)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="training processes at once (default: BENCH_JOBS, else 1); each gets cores/jobs threads")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="start no new run after this many minutes (the rest is reported as not run)")
    parser.add_argument("--cached-only", action="store_true",
                        help="train nothing: tabulate the cached runs, list the others as not run")
    parser.add_argument("--work-dir", type=Path, default=None, help="run cache (default bench/out/runs[_<mode>])")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown file (default BENCHMARKS.md; --quick/--tiny: bench/out/BENCHMARKS.<mode>.md)")
    parser.add_argument("--results", type=Path, default=None,
                        help="raw results JSON (default bench/results/tables.json; --quick/--tiny: bench/out/)")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render from saved results (no training)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="KEY",
                        help="train only these datasets of the chosen studies (e.g. burgers); the others are "
                             "not run, or kept with --keep-saved")
    parser.add_argument("--keep-saved", action="store_true",
                        help="keep the results of the --results file for every study and dataset this command "
                             "does not train (they are re-rendered, not re-run)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps {args.steps}: give a positive number of optimizer steps")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give a positive number of processes")
    if args.jobs is None:
        try:
            args.jobs = harness.bench_jobs()
        except ValueError as err:
            parser.error(str(err))
    if args.datasets is not None:
        known = {d.key for n in args.studies for d in studies.shrink(studies.STUDIES[n], args.mode or "full").datasets}
        unknown = [k for k in args.datasets if k not in known]
        if unknown:
            parser.error(f"--datasets {' '.join(unknown)}: not a dataset of the studies {' '.join(args.studies)}; "
                         f"choose from {', '.join(sorted(known))}")
    if args.keep_saved and args.from_json is not None:
        parser.error("--keep-saved trains and merges; --from-json only re-renders: give one of them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    mode_name = args.mode or "full"
    scratch = mode_name != "full"
    scratch_dir = REPO / "bench" / "out"
    out_md = args.output or (scratch_dir / f"BENCHMARKS.{mode_name}.md" if scratch else REPO / "BENCHMARKS.md")
    out_json = args.results or (REPO / "bench" / "out" / f"tables_{mode_name}.json" if scratch
                                else REPO / "bench" / "results" / "tables.json")
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
    else:
        work = args.work_dir or REPO / "bench" / "out" / ("runs" if not scratch else f"runs_{mode_name}")
        started = time.perf_counter()
        results: list[dict] = []
        for name in args.studies:
            study = studies.shrink(studies.STUDIES[name], mode_name, args.steps)
            if args.datasets is not None:
                study = replace(study, datasets=tuple(d for d in study.datasets if d.key in args.datasets))
            budget = None if args.budget_min is None else 60 * args.budget_min
            results += run_study(study, work, budget_s=budget, started=started, cached_only=args.cached_only,
                                 jobs=args.jobs)
        shown = [a for a in argv if a != "--cached-only"]  # the command that trains what is tabulated
        command = "python -m bench.tables" + (" " + " ".join(shown) if shown else "")
        saved = {
            "meta": {"command": command, "mode": mode_name, "steps": args.steps, "hardware": harness.hardware(),
                     "results": str(out_json.relative_to(REPO)) if out_json.is_relative_to(REPO) else str(out_json),
                     "wall_s": time.perf_counter() - started, "trained": _pairs(results)},
            "studies": list(args.studies),
            "results": results,
        }
        if args.keep_saved and out_json.is_file():
            saved = keep_saved(saved, json.loads(out_json.read_text()), set(_pairs(results)))
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(saved, indent=1) + "\n")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_section(out_md, START, END, render(saved))
    bad = [r for r in saved["results"] if r.get("failure")]
    log.info("wrote %s and %s (%d runs, %d failed)", out_md, out_json, len(saved["results"]), len(bad))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
