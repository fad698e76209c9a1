"""Micro-benchmark of the Tensor-GaLore optimizer (issue 3); writes its section of BENCHMARKS.md.

For complex64 gradients of FNO spectral-weight shapes at rank 0.25, measured side by side in one process
(interleaved repeats, medians):

* one ``torch.optim.AdamW`` step on the same tensor (the unit of time);
* our optimizer step between refreshes, the subspace solver alone (sequentially truncated HOSVD) and the extra
  time of a refresh step;
* ``tensorly.decomposition.tucker(init="svd", n_iter_max=10)`` on the same gradient, and the captured energy
  ``||core||^2 / ||G||^2`` of both on a gradient with a decaying spectrum and on a random one;
* optimizer state bytes against AdamW's.

Unless ``--quick``, it also compares the ``refresh_moments`` rules (and AdamW): on a complex least-squares problem
(a bare parameter, plain PyTorch) and on Darcy 16x16 through the product (``tgalore fit`` runs of
``bench.harness``, study ``refresh_moments`` of ``bench.studies``), the evidence for the default rule.

Run ``python -m bench.optim_bench`` (a few minutes on 2 CPU cores) or ``python -m bench.optim_bench --quick``
(one shape, fewer repeats, no training study; prints without writing).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.memory import adamw_state_bytes
from app.optim import TensorGaLoreAdamW, layout, tucker
from bench import harness, markdown, tables

log = logging.getLogger("bench.optim_bench")

START, END = "<!-- optim-bench:start -->", "<!-- optim-bench:end -->"
SHAPES = [(64, 64, 32, 17), (128, 128, 32, 17)]
RANK = 0.25
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ----------------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def decaying_gradient(shape, device, seed=0, dtype=torch.complex64) -> torch.Tensor:
    """A gradient whose every mode has an exponentially decaying spectrum (``e^{-4 i / n_k}``), plus 1% noise."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    g = torch.randn(shape, dtype=dtype, generator=gen)
    for k, n in enumerate(shape):
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=dtype, generator=gen))
        g = tucker.mode_dot(g, q * torch.exp(-4.0 * torch.arange(n) / n).to(dtype), k)
    g = g / g.norm() + 0.01 * torch.randn(shape, dtype=dtype, generator=gen) / (g.numel() ** 0.5)
    return g.to(device)


def random_gradient(shape, device, seed=1, dtype=torch.complex64) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, dtype=dtype, generator=gen).to(device)


def tensorly_tucker_energy(g: torch.Tensor, ranks) -> tuple[float, float]:
    """(seconds, captured energy) of tensorly's ``tucker(init="svd", n_iter_max=10)`` under a local backend."""
    import tensorly as tl
    from tensorly.decomposition import tucker as tl_tucker

    with tl.backend_context("pytorch"):
        _sync(g.device)
        t0 = time.perf_counter()
        core, _ = tl_tucker(g, rank=list(ranks), init="svd", n_iter_max=10)
        _sync(g.device)
        seconds = time.perf_counter() - t0
    return seconds, float(tucker.norm_sq(core) / tucker.norm_sq(g))


# ----------------------------------------------------------------------------------------------- speed/quality


def measure_shape(shape, device, repeats: int, tl_repeats: int) -> dict:
    ranks = layout.resolve_ranks(RANK, shape)
    g_rand, g_decay = random_gradient(shape, device), decaying_gradient(shape, device)

    p_adam = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64, device=device))
    p_ours = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64, device=device))
    p_adam.grad, p_ours.grad = g_rand, g_rand
    adamw = torch.optim.AdamW([p_adam], lr=1e-3)
    ours = TensorGaLoreAdamW([p_ours], lr=1e-3, galore=True, rank=RANK, update_proj_gap=None)

    def refresh_step():
        ours.request_refresh()
        ours.step()

    def solve():
        return tucker.hosvd(g_rand, ranks)

    for fn in (adamw.step, ours.step, refresh_step, solve):  # warm-up
        fn()
    t = {"adamw": [], "step": [], "refresh_step": [], "solver": []}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all columns alike
        t["adamw"].append(_timed(adamw.step, device))
        t["step"].append(_timed(ours.step, device))
        t["refresh_step"].append(_timed(refresh_step, device))
        t["solver"].append(_timed(solve, device))
    med = {k: statistics.median(v) for k, v in t.items()}

    tl_times, energy = [], {}
    for name, g in (("decaying", g_decay), ("random", g_rand)):
        runs = [tensorly_tucker_energy(g, ranks) for _ in range(tl_repeats)]
        tl_times += [s for s, _ in runs]
        ours_e = float(tucker.captured_energy(tucker.hosvd(g, ranks).core, g))
        hooi_e = float(tucker.captured_energy(tucker.hooi(g, tucker.hosvd(g, ranks).factors, 1).core, g))
        energy[name] = (ours_e, hooi_e, runs[0][1])
    return {
        "shape": shape,
        "ranks": ranks,
        **med,
        "tensorly": statistics.median(tl_times),
        "energy": energy,
        "state_ours": ours.state_bytes()["total"],
        "state_adamw": adamw_state_bytes([p_adam]),
    }


# ----------------------------------------------------------------------------------------------- training study


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def lsq_task(seed: int, rule: str | None, steps: int = 400) -> float:
    """Noisy complex least squares with an FNO-like contraction ``y = sum_i x_i W_io`` (per Fourier mode):
    minibatch Tensor-GaLore at rank 0.25, gap 25; returns ``||W - W*|| / ||W*||``."""
    torch.manual_seed(seed)
    shape = (16, 16, 8, 5)
    w_true = torch.randn(shape, dtype=torch.complex64)
    x = torch.randn(512, 16, 8, 5, dtype=torch.complex64)
    y = torch.einsum("bikl,iokl->bokl", x, w_true) + 0.1 * torch.randn(512, 16, 8, 5, dtype=torch.complex64)
    w = torch.nn.Parameter(torch.zeros(shape, dtype=torch.complex64))
    if rule is None:
        opt = torch.optim.AdamW([w], lr=0.05, weight_decay=0.0)
    else:
        opt = TensorGaLoreAdamW([w], lr=0.05, galore=True, rank=RANK, update_proj_gap=25, refresh_moments=rule)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 512, (32,), generator=gen)
        loss = (torch.einsum("bikl,iokl->bokl", x[idx], w) - y[idx]).abs().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return _rel(w.detach(), w_true)


def darcy_refresh_study(seeds: int, steps: int = 1000) -> dict[str, list[float]]:
    """Test relative L2 on Darcy 16x16 per rule (and AdamW) and seed, from product runs (study ``refresh_moments``)."""
    from dataclasses import replace

    from bench import studies, tables

    study = replace(studies.STUDIES["refresh_moments"], seeds=tuple(range(seeds)), steps=steps)
    results = tables.run_study(study, Path(__file__).resolve().parent / "out" / "runs")
    out = {}
    for m in study.methods:
        runs = tables.ok(tables.select(results, study.datasets[0].key, m.key))
        if len(runs) != seeds:
            raise RuntimeError(f"{m.label}: {seeds - len(runs)} of {seeds} runs failed or were not run")
        out[m.key.removeprefix("tg_refresh_")] = [r["tests"][tables._main_key(r)] for r in runs]
    return out


def refresh_moments_study(seeds: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {"lsq": {}}
    for rule in ("keep", "project", "reset", None):
        out["lsq"][rule or "adamw"] = [lsq_task(s, rule) for s in range(seeds)]
        log.info("lsq %s %s", rule or "adamw", out["lsq"][rule or "adamw"])
    out["darcy"] = darcy_refresh_study(seeds)
    return out


# ----------------------------------------------------------------------------------------------- report


def hardware_line(device: torch.device) -> str:
    line = harness.hardware_line({**harness.hardware(), "load": LOAD_AT_START})
    return f"{torch.cuda.get_device_name(device)} (host: {line})" if device.type == "cuda" else line


def render(rows: list[dict], study: dict | None, device: torch.device, command: str, repeats: int) -> str:
    ms = 1e3
    lines = [
        "## Optimizer micro-benchmark (Tensor-GaLore, issue 3)",
        "",
        f"Hardware: {hardware_line(device)}; device `{device}`.",
        f"Regenerate: `{command}`. complex64 gradients, rank {RANK} (fraction of elements kept), medians of "
        f"{repeats} interleaved repeats (tensorly: of its runs on both gradients).",
        "",
        "| shape (ranks) | AdamW step | our step | step ÷ AdamW (target ≤ 3) | solver (ST-HOSVD) "
        "| solver ÷ AdamW (target ≤ 5) | refresh step, extra ÷ AdamW | tensorly tucker | tensorly ÷ solver "
        "(target ≥ 10) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["adamw"]
        lines.append(
            f"| {r['shape']} {r['ranks']} | {a * ms:.1f} ms | {r['step'] * ms:.1f} ms | {r['step'] / a:.2f} "
            f"| {r['solver'] * ms:.1f} ms | {r['solver'] / a:.2f} | {(r['refresh_step'] - r['step']) / a:.2f} "
            f"| {r['tensorly']:.2f} s | {r['tensorly'] / r['solver']:.0f} |"
        )
    lines += [
        "",
        "| shape | captured energy, decaying spectrum: ours / +1 HOOI sweep / tensorly | random: ours / +1 HOOI "
        "sweep / tensorly | ours vs tensorly (target within 1%) | state bytes ÷ AdamW (target ≤ 22%) |",
        "|---|---|---|---|---:|",
    ]
    for r in rows:
        d, x = r["energy"]["decaying"], r["energy"]["random"]
        gap = max(abs(d[0] / d[2] - 1), abs(x[0] / x[2] - 1))
        lines.append(
            f"| {r['shape']} | {d[0]:.4f} / {d[1]:.4f} / {d[2]:.4f} | {x[0]:.4f} / {x[1]:.4f} / {x[2]:.4f} "
            f"| {100 * gap:.2f}% | {100 * r['state_ours'] / r['state_adamw']:.1f}% |"
        )
    lines += [
        "",
        "Step = a full `TensorGaLoreAdamW.step()` between refreshes (project, Adam on the core, back-project "
        "into the weight); solver = `tucker.hosvd` (Gram matrices + `eigh`, sequentially truncated); refresh "
        "step extra = (refresh step − step); state = moments (complex first, real second) + factors + spectra "
        "+ counters, counted exactly. AdamW on CPU is memory-bound while the projections are GEMMs "
        "(~134·N complex multiply-adds per step at these ranks), so on a 2-core CPU the step ratio depends on "
        "the shape's cache behaviour.",
    ]
    if study:

        def cell(v):
            mean = statistics.mean(v)
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            return f"{mean:.4f} ± {sd:.4f}"

        def vs(task, a, b):  # paired over seeds: mean ± sd of a / b - 1, verdict, seeds where a is lower
            return f"{task} " + tables.paired_cell(dict(enumerate(study[task][a])), dict(enumerate(study[task][b])))

        n = len(next(iter(study["lsq"].values())))
        lines += [
            "",
            f"### `refresh_moments`: which rule trains best ({n} seeds, mean ± sd; lower is better)",
            "",
            "| task | keep (GaLore) | project | reset | AdamW (full) |",
            "|---|---:|---:|---:|---:|",
            "| complex least squares (16,16,8,5), gap 25: ‖W−W*‖/‖W*‖ | "
            + " | ".join(cell(study["lsq"][k]) for k in ("keep", "project", "reset", "adamw"))
            + " |",
            "| Darcy 16×16 through `tgalore fit` (FNO 16 channels, 8×8 modes), 1,000 steps, gap 50: test rel. L2 | "
            + " | ".join(cell(study["darcy"][k]) for k in ("keep", "project", "reset", "adamw"))
            + " |",
            "",
            "Paired by seed (same initialisation and batches for every rule; mean ± sd over seeds, *lower*/*higher* "
            "beyond 2 standard errors): `reset` vs `project`: "
            + "; ".join(vs(task, "reset", "project") for task in ("lsq", "darcy"))
            + ". `reset` vs `keep`: " + "; ".join(vs(task, "reset", "keep") for task in ("lsq", "darcy"))
            + ". `reset` vs AdamW: " + "; ".join(vs(task, "reset", "adamw") for task in ("lsq", "darcy"))
            + ". Details in `bench/optim_bench.py` (`lsq_task`) and `bench/studies.py` (study `refresh_moments`). "
            "Default: `reset`; `keep` misaligns coordinates after a refresh.",
        ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the text between this benchmark's markers; other sections are left alone."""
    markdown.write_section(path, START, END, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape, 3 repeats, no training study, no write")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 9; 3 with --quick)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the refresh_moments study")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-write", action="store_true", help="print the section without writing BENCHMARKS.md")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent.parent / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 9)
    shapes = SHAPES[:1] if args.quick else SHAPES
    rows = []
    for shape in shapes:
        log.info("measuring %s ...", shape)
        rows.append(measure_shape(shape, device, repeats, tl_repeats=1 if args.quick else 2))
    study = None if args.quick else refresh_moments_study(args.seeds)
    command = "python -m bench.optim_bench" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    body = render(rows, study, device, command, repeats)
    sys.stdout.write(body)
    if not (args.quick or args.no_write):
        write_section(args.output, body)
        log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
