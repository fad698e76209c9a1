"""Plots of the optimizer comparison (``bench.tables``), drawn from its raw results (the JSON's dict).

* ``<prefix>_rank_sweep.png``: test relative L2 against rank, one line per method (mean ± sd over the sweep's
  seeds), AdamW as a horizontal band;
* ``<prefix>_memory.png``: exact bytes of parameters, gradients and optimizer state per method, one panel per
  dataset;
* ``<prefix>_curves.png``: validation relative L2 after each epoch (mean over seeds) per method, one panel per
  dataset.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["make_all", "plot_rank_sweep", "plot_memory", "plot_curves"]

_SWEEP_FAMILIES = (
    ("tensor_galore", "Tensor-GaLore"),
    ("galore_d1", "GaLore d=1"),
    ("galore_d2", "GaLore d=2"),
    ("galore_d3", "GaLore d=3"),
)


def _runs(res: dict[str, Any], dataset: str, method: str) -> list[dict[str, Any]]:
    return [r for r in res["runs"] if r["dataset"] == dataset and r["method"] == method and not r.get("failure")]


def _l2(runs: list[dict[str, Any]], test: str) -> list[float]:
    return [r["tests"][test]["l2"] for r in runs if test in r["tests"]]


def _mean_sd(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0


def plot_rank_sweep(res: dict[str, Any], path: Path) -> Path | None:
    sw = res.get("sweep") or {}
    if not sw:
        return None
    key, seeds = sw["dataset"], set(sw["seeds"])
    test = res["datasets"][key]["tests"][0]["name"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for prefix, label in _SWEEP_FAMILIES:
        xs, ms, sds = [], [], []
        for r in sw["ranks"]:
            v = _l2([x for x in _runs(res, key, f"{prefix}_{r:g}") if x["seed"] in seeds], test)
            if v:
                m, sd = _mean_sd(v)
                xs.append(r)
                ms.append(m)
                sds.append(sd)
        if xs:
            ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=label)
    base = _l2([x for x in _runs(res, key, "adamw") if x["seed"] in seeds], test)
    if base:
        m, sd = _mean_sd(base)
        ax.axhline(m, color="k", ls="--", lw=1, label="AdamW")
        ax.axhspan(m - sd, m + sd, color="k", alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("rank (fraction kept)")
    ax.set_ylabel(f"test relative L2 ({test})")
    ax.set_title(f"Rank sweep: {res['datasets'][key]['label']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(res: dict[str, Any], path: Path) -> Path | None:
    keys = list(res["datasets"])
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        labels, parts = [], {"params": [], "grads": [], "state": []}
        for mk, meta in res["methods"].items():
            runs = _runs(res, key, mk)
            if not runs or not runs[0].get("memory"):
                continue
            labels.append(meta["label"].replace(" + Tensor-GaLore", "\n+ T-GaLore").replace(" (", "\n("))
            for p in parts:
                parts[p].append(runs[0]["memory"][p] / 1024)
        bottom = [0.0] * len(labels)
        for p, vals in parts.items():
            ax.bar(range(len(labels)), vals, bottom=bottom, label=p)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=6)
        ax.set_ylabel("KiB (exact)")
        ax.set_title(res["datasets"][key]["label"], fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(res: dict[str, Any], path: Path) -> Path | None:
    keys = list(res["datasets"])
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for mk, meta in res["methods"].items():
            runs = [r for r in _runs(res, key, mk) if r.get("curve")]
            if not runs:
                continue
            n = min(len(r["curve"]) for r in runs)
            steps = [runs[0]["curve"][i]["step"] for i in range(n)]
            vals = [statistics.fmean(r["curve"][i]["val_l2"] for r in runs) for i in range(n)]
            ax.plot(steps, vals, marker=".", label=meta["label"])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("validation relative L2")
        ax.set_title(res["datasets"][key]["label"], fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(res: dict[str, Any], out_dir: Path, prefix: str = "tables") -> dict[str, Path]:
    """Draw every plot into ``out_dir``; returns ``{name: path}`` of those drawn."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, fn, suffix in (
        ("rank sweep", plot_rank_sweep, "rank_sweep"),
        ("memory breakdown", plot_memory, "memory"),
        ("training curves", plot_curves, "curves"),
    ):
        p = fn(res, out_dir / f"{prefix}_{suffix}.png")
        if p is not None:
            made[name] = p
    return made
