"""Shared helpers of the optimizer tests: seeded parameters and gradients, a step loop, a spectral problem."""

from __future__ import annotations

import torch
from torch import nn


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def param(shape, dtype=torch.complex64, seed=0) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, dtype=dtype, generator=gen(seed)))


def grads(shape, n, dtype=torch.complex64, seed=1) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(shape, dtype=dtype, generator=g) for _ in range(n)]


def run(opt, params, grads_per_param) -> None:
    """One ``opt.step()`` per entry of the gradient lists (``grads_per_param[i]``: parameter i's gradients)."""
    for step_grads in zip(*grads_per_param, strict=True):
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def spectral_least_squares(shape, n: int = 64):
    """An FNO-like spectral contraction ``y = sum_i x_i W_io`` (per mode), seeded: ``(w_true, loss(w))``."""
    torch.manual_seed(0)
    w_true = torch.randn(shape, dtype=torch.complex64)
    x = torch.randn(n, *shape[:1], *shape[2:], dtype=torch.complex64)
    y = torch.einsum("bikl,iokl->bokl", x, w_true)
    return w_true, lambda w: (torch.einsum("bikl,iokl->bokl", x, w) - y).abs().square().mean()


def train(opt, w, loss_fn, steps: int, scheduler=None) -> float:
    """``steps`` optimizer steps on ``loss_fn(w)``; returns the last loss."""
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(w)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return float(loss.detach())


def reference_optimizer(cls, p, hp, **options):
    """A single-parameter projected optimizer ``cls`` with the hyperparameters ``hp`` of the reference
    implementations (``lr, b1, b2, eps, wd, scale``), one subspace for the whole run, and ``options``."""
    return cls(
        [p],
        lr=hp["lr"],
        betas=(hp["b1"], hp["b2"]),
        eps=hp["eps"],
        weight_decay=hp["wd"],
        galore=True,
        scale=hp["scale"],
        update_proj_gap=None,
        **options,
    )
