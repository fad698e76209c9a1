"""Exact memory accounting: bytes of parameters, gradients and optimizer state, counted tensor by tensor.

Counting ``numel * element_size`` of the tensors themselves is exact and machine-independent, unlike RSS. Any
``torch.optim.Optimizer`` works; state entries that are not tensors count 0 (ours has none).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["MemoryBreakdown", "tensor_bytes", "optimizer_state_bytes", "memory_breakdown", "adamw_state_bytes"]


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer, per_group: bool = False) -> int | list[int]:
    """Bytes of every tensor in ``optimizer.state`` (all groups), or a list with one total per param group."""
    totals = []
    for group in optimizer.param_groups:
        n = 0
        for p in group["params"]:
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, torch.Tensor):
                    n += tensor_bytes(v)
        totals.append(n)
    return totals if per_group else sum(totals)


def adamw_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """What ``torch.optim.AdamW`` would keep for ``params``: two moments of each parameter's size and dtype,
    plus one 0-d float32 step per parameter (16 bytes per complex64 element, 8 per float32 element)."""
    return sum(2 * tensor_bytes(p) + 4 for p in params)


@dataclass(frozen=True)
class MemoryBreakdown:
    params: int
    grads: int
    optimizer_state: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer_state

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def memory_breakdown(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryBreakdown:
    """Exact bytes of ``model``'s parameters, of the gradients that currently exist, and of the optimizer state."""
    params = list(model.parameters())
    return MemoryBreakdown(
        params=sum(tensor_bytes(p) for p in params),
        grads=sum(tensor_bytes(p.grad) for p in params),
        optimizer_state=optimizer_state_bytes(optimizer) if optimizer is not None else 0,
    )
