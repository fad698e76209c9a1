"""Memory of the paper's Darcy model: AdamW vs Tensor-GaLore (rank 0.25), with and without fused updates.

    python -m bench.memory_bench          # writes the memory sections of BENCHMARKS.md and README.md

The big model is predicted with ``app.memory_estimate`` (exact for parameters, gradients and optimizer state;
activations from a forward pass on the ``meta`` device). The same predictions are cross-checked against bytes
measured after a real training step of a small model in the same run.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from app.memory import memory_breakdown
from app.memory_estimate import estimate_memory
from app.models import FNO
from app.optim import TensorGaLoreAdamW, TensorGRaDAdamW
from app.param_groups import split_param_groups
from bench import markdown

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python -m bench.memory_bench"
MiB = 2**20


def _paper_model() -> FNO:
    # Tensor-GaLore's Darcy model: 4 Fourier layers, 64x64 modes, 128 channels (complex spectral weights)
    with torch.device("meta"):
        return FNO(n_modes=(64, 64), hidden_channels=128, n_layers=4)


def predicted_rows(batch: int, grid: int) -> dict[str, dict[str, int]]:
    model = _paper_model()
    shape = (batch, 1, grid, grid)
    rows = {
        "AdamW": estimate_memory(model, torch.optim.AdamW(model.parameters()), shape),
        "AdamW, fused": estimate_memory(model, torch.optim.AdamW(model.parameters()), shape, fused_update=True),
    }
    for rank in (0.25, 0.1):
        opt = TensorGaLoreAdamW(split_param_groups(model), rank=rank)
        rows[f"Tensor-GaLore {rank}"] = estimate_memory(model, opt, shape)
        rows[f"Tensor-GaLore {rank}, fused"] = estimate_memory(model, opt, shape, fused_update=True)
    # the default job's form: the same 25% reached on the channel modes only (Fourier modes whole)
    chan = TensorGaLoreAdamW(split_param_groups(model), rank=0.25, proj_modes=[0, 1])
    rows["Tensor-GaLore 0.25, channel modes, fused"] = estimate_memory(model, chan, shape, fused_update=True)
    # the same Tucker projection with bfloat16 moments (TensorGRaD's low-precision option, no sparse part)
    bf16 = TensorGRaDAdamW(split_param_groups(model), rank=0.25, sparse_ratio=0.0, moment_dtype="bfloat16")
    rows["Tensor-GaLore 0.25, bf16 moments, fused"] = estimate_memory(model, bf16, shape, fused_update=True)
    return {k: v.as_dict() for k, v in rows.items()}


def cross_check() -> list[tuple[str, int, int]]:
    """(optimizer, predicted state bytes, measured state bytes) after one real step of a small model."""
    out = []
    for name, make in (
        ("AdamW", lambda m: torch.optim.AdamW(m.parameters())),
        ("Tensor-GaLore 0.25", lambda m: TensorGaLoreAdamW(split_param_groups(m), rank=0.25)),
        (
            "Tensor-GaLore 0.25, channel modes",
            lambda m: TensorGaLoreAdamW(split_param_groups(m), rank=0.25, proj_modes=[0, 1]),
        ),
    ):
        torch.manual_seed(0)
        m = FNO(n_modes=(16, 16), hidden_channels=32, n_layers=4)
        opt = make(m)
        predicted = estimate_memory(m, opt, None).optimizer_state
        m(torch.randn(4, 1, 33, 33)).pow(2).mean().backward()
        opt.step()
        out.append((name, predicted, memory_breakdown(m, opt).optimizer_state))
    return out


def render(rows: dict[str, dict[str, int]], checks, batch: int, grid: int) -> str:
    base = rows["AdamW"]["params+grads+state"]
    lines = [
        f"Paper Darcy model (4 layers, 64×64 modes, 128 channels; "
        f"{sum(p.numel() for p in _paper_model().parameters()):,} parameters), batch {batch}, {grid}×{grid} grid, "
        f"float32. Regenerate: `{COMMAND}`.",
        "",
        "| optimizer | params | grads | optimizer state | params+grads+state | vs AdamW | activations (saved) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params'] / MiB:,.0f} MiB | {r['grads'] / MiB:,.0f} MiB"
            f" | {r['optimizer_state'] / MiB:,.0f} MiB | {r['params+grads+state'] / MiB:,.0f} MiB"
            f" | {r['params+grads+state'] / base - 1:+.1%} | {r['activations'] / MiB:,.0f} MiB |"
        )
    lines += ["", "Cross-check, small FNO (16×16 modes, 32 channels) after one real step, optimizer-state bytes:", "",
              "| optimizer | predicted | measured |", "|---|---:|---:|"]
    lines += [f"| {n} | {p:,} | {m:,} |" for n, p, m in checks]
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}. Target: "
              "params+grads+state at rank 0.25 with fused updates at least 60% below AdamW."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--grid", type=int, default=128)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    body = "## Memory: the paper's Darcy model (issue 8)\n\n" + render(
        predicted_rows(args.batch, args.grid), cross_check(), args.batch, args.grid
    )
    print(body)
    if not args.no_write:
        markdown.write_section(REPO / "BENCHMARKS.md", *markdown.markers("memory"), body)
        table = body.replace("## Memory: the paper's Darcy model (issue 8)\n\n", "")
        markdown.write_section(REPO / "README.md", *markdown.markers("memory-table"), table)


if __name__ == "__main__":
    main()
