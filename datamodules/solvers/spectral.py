"""Fourier pseudo-spectral building blocks on the periodic unit torus, shared by the Burgers and Navier-Stokes solvers.

* ``wavenumbers``/``dealias_mask``: angular wavenumbers ``2 pi k`` in ``rfft`` layout and Orszag's 2/3 rule (keep
  ``|k_i| <= (n - 1) // 3``, so the product of two kept fields aliases only onto discarded modes: the truncated
  (Galerkin) system is exact and keeps its quadratic invariants).
* ETDRK4 (Cox & Matthews 2002) for ``v' = L v + N(v)`` with a diagonal linear part ``L``, with the coefficients
  computed by the contour integrals of Kassam & Trefethen (SIAM J. Sci. Comput. 26, 2005), which avoid the
  cancellation of the phi-functions at small ``|h L|``. Fourth order; ``L`` is integrated exactly (no stiffness
  limit from the viscosity), and with ``L = 0`` the scheme is the classical Runge-Kutta method.

* ``steps_per_interval``/``etdrk4_advance``: every sample of a batch gets its own number of steps per output
  interval (from its own CFL condition, rounded up to a quarter-octave ladder so that a batch needs few distinct
  step sizes); samples sharing a step count advance together. A sample's solution therefore does not depend on
  which other samples share its batch.

Everything is torch, batched over the leading dimension, and runs on the device of its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "wavenumbers",
    "dealias_mask",
    "ETDRK4Coefficients",
    "etdrk4_coefficients",
    "etdrk4_step",
    "steps_per_interval",
    "etdrk4_advance",
    "solver_threads",
]


def wavenumbers(n: int, n_dims: int, device: torch.device | str | None = None) -> list[Tensor]:
    """Angular wavenumbers ``2 pi k`` per axis, broadcastable against an ``rfftn`` array of an ``(n,)*n_dims`` grid
    (the last axis is the half axis)."""
    out = []
    for axis in range(n_dims):
        last = axis == n_dims - 1
        k = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64) if last else torch.fft.fftfreq(
            n, 1.0 / n, dtype=torch.float64
        )
        shape = [1] * n_dims
        shape[axis] = len(k)
        out.append((2 * math.pi * k).view(shape).to(device))
    return out


def dealias_mask(n: int, n_dims: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``rfftn``-layout mask of the modes kept by the 2/3 rule: ``|k_i| <= (n - 1) // 3`` on every axis."""
    cutoff = 2 * math.pi * ((n - 1) // 3)
    mask = None
    for k in wavenumbers(n, n_dims, device):
        m = k.abs() <= cutoff + 1e-9
        mask = m if mask is None else mask & m
    return mask


class ETDRK4Coefficients(NamedTuple):
    """Real coefficient arrays of one ETDRK4 step of size ``h`` (each broadcastable like ``L``)."""

    E: Tensor   # exp(h L)
    E2: Tensor  # exp(h L / 2)
    Q: Tensor   # (exp(h L / 2) - 1) / L, the half-step weight of N
    f1: Tensor  # full-step weights of N at the four stages (Cox-Matthews alpha, beta, gamma)
    f2: Tensor
    f3: Tensor


def etdrk4_coefficients(L: Tensor, h: float, n_contour: int = 32) -> ETDRK4Coefficients:
    """Kassam-Trefethen coefficients for a real diagonal ``L`` (float64) and step ``h``.

    Each phi-function is the mean of its values on a circle of radius 1 around ``h L`` (``n_contour`` points),
    exact for an analytic function up to the trapezoidal rule's exponentially small error.
    """
    if h <= 0:
        raise ValueError(f"time step h={h} must be > 0")
    L = L.to(torch.float64)
    hL = h * L
    r = torch.exp(1j * math.pi * (torch.arange(1, n_contour + 1, dtype=torch.float64, device=L.device) - 0.5)
                  / n_contour)
    LR = hL.unsqueeze(-1) + r  # (..., n_contour)
    eLR = torch.exp(LR)
    Q = h * ((torch.exp(LR / 2) - 1) / LR).mean(-1).real
    f1 = h * ((-4 - LR + eLR * (4 - 3 * LR + LR**2)) / LR**3).mean(-1).real
    f2 = h * ((2 + LR + eLR * (-2 + LR)) / LR**3).mean(-1).real
    f3 = h * ((-4 - 3 * LR - LR**2 + eLR * (4 - LR)) / LR**3).mean(-1).real
    return ETDRK4Coefficients(torch.exp(hL), torch.exp(hL / 2), Q, f1, f2, f3)


def etdrk4_step(v: Tensor, nonlinear: Callable[[Tensor], Tensor], c: ETDRK4Coefficients) -> Tensor:
    """One ETDRK4 step of ``v' = L v + N(v)`` (``v`` in spectral space, ``c`` from ``etdrk4_coefficients``)."""
    Nv = nonlinear(v)
    a = c.E2 * v + c.Q * Nv
    Na = nonlinear(a)
    b = c.E2 * v + c.Q * Na
    Nb = nonlinear(b)
    cc = c.E2 * a + c.Q * (2 * Nb - Nv)
    Nc = nonlinear(cc)
    return c.E * v + c.f1 * Nv + 2 * c.f2 * (Na + Nb) + c.f3 * Nc


def steps_per_interval(interval: float, dt: Tensor | float, *, ladder: bool = True) -> list[int]:
    """Per sample, the number of equal steps that fill ``interval`` with steps no longer than ``dt``; with
    ``ladder``, rounded up to the next ``ceil(2^(j/4))``."""
    dt = torch.as_tensor(dt, dtype=torch.float64).reshape(-1).cpu()
    if bool((dt <= 0).any()) or not bool(torch.isfinite(dt).all()):
        raise ValueError(f"time steps must be finite and > 0, got {dt.tolist()}")
    out = []
    for m in torch.ceil(interval / dt - 1e-9).clamp_min(1).tolist():
        m = int(m)
        out.append(max(m, math.ceil(2 ** (math.ceil(4 * math.log2(m) - 1e-9) / 4) - 1e-9)) if ladder else m)
    return out


def etdrk4_advance(
    v: Tensor,
    steps: list[int],
    L: Tensor,
    interval: float,
    nonlinear: Callable[[Tensor], Tensor],
    cache: dict[int, ETDRK4Coefficients] | None = None,
) -> Tensor:
    """Advance each sample ``v[i]`` by ``interval`` in ``steps[i]`` ETDRK4 steps (``nonlinear`` acts row-wise).

    ``cache`` (a dict) keeps the coefficients of each step count between calls.
    """
    if len(steps) != len(v):
        raise ValueError(f"{len(steps)} step counts for a batch of {len(v)}")
    cache = {} if cache is None else cache
    out = torch.empty_like(v)
    counts = torch.tensor(steps)
    for m in sorted(set(steps)):
        idx = (counts == m).nonzero().squeeze(1).to(v.device)
        if m not in cache:
            cache[m] = etdrk4_coefficients(L, interval / m)
        w = v[idx]
        for _ in range(m):
            w = etdrk4_step(w, nonlinear, cache[m])
        out[idx] = w
    return out


@contextmanager
def solver_threads(device: torch.device | str) -> Iterator[None]:
    """Run a CPU solve on one intra-op thread (restored afterwards).

    The solvers loop over many small FFTs, which extra threads do not speed up; on a busy machine their
    synchronisation made a Burgers batch 30x slower with 2 threads than with 1 (measured on a shared 2-core CPU).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
