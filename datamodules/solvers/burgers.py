"""Viscous Burgers' equation on the periodic unit interval, pseudo-spectral in space, ETDRK4 in time.

    u_t + (u^2 / 2)_x = nu u_xx,   x in [0, 1) periodic.

Space: Fourier modes on ``n`` equispaced points ``x_j = j / n``; the nonlinear flux is formed pointwise and
dealiased by the 2/3 rule (``datamodules.solvers.spectral``), which makes the semi-discrete system a Galerkin
truncation: the mean is conserved exactly and the energy ``int u^2 / 2`` decays at the rate ``nu int u_x^2``.
The initial condition is projected onto the kept modes first (the returned trajectory starts from that projection).

Time: ETDRK4 with the Kassam-Trefethen coefficients; the viscous term is integrated exactly, so the step is limited
only by the explicit advection of the modes that viscosity does not damp faster than they move, ``|k| <~ U / nu``
(``U = max|u0|``, per sample; ``max|u|`` never grows, by the maximum principle):
``dt = cfl * max(dx, nu / U) / U``, capped by ``max_dt``; a whole number of steps fills every output interval
(``spectral.steps_per_interval``). At the defaults (``n = 1024``, ``nu = 0.01``, ``cfl = 1``) that is about
``8e-4`` and the time error is ~1e-7 relative, below float32 storage; ``cfl = 1`` keeps the explicit part
inside the stability region for every ``nu >= 0`` (measured: unstable only beyond ~1.5 at ``nu = 1e-3``).

Batched in torch (float64) on the device of ``u0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from datamodules.solvers.spectral import dealias_mask, etdrk4_advance, steps_per_interval, wavenumbers

__all__ = ["burgers_time_step", "solve_burgers"]


def burgers_time_step(u0: Tensor, viscosity: float, *, cfl: float = 1.0, max_dt: float = 2e-3) -> Tensor:
    """Per sample of ``(B, n)``, the automatic step ``min(max_dt, cfl * max(dx, nu / U) / U)``, ``U = max|u0|``."""
    if cfl <= 0 or max_dt <= 0:
        raise ValueError(f"cfl={cfl} and max_dt={max_dt} must be > 0")
    umax = u0.abs().amax(dim=-1).to(torch.float64).cpu().clamp_min(1e-300)
    dx = 1.0 / u0.shape[-1]
    return (cfl * torch.clamp(viscosity / umax, min=dx) / umax).clamp_max(max_dt)


def solve_burgers(
    u0: Tensor,
    viscosity: float,
    *,
    t_final: float = 1.0,
    n_intervals: int = 1,
    dt: float | None = None,
    cfl: float = 1.0,
    max_dt: float = 2e-3,
) -> Tensor:
    """Solution ``(B, n_intervals + 1, n)`` (float64) at ``t_j = j t_final / n_intervals``, ``j = 0..n_intervals``.

    Args:
        u0: initial conditions ``(B, n)`` (or ``(n,)``) on ``x_j = j / n``; ``n`` even and >= 8.
        viscosity: ``nu >= 0``.
        t_final: final time.
        n_intervals: number of equal output intervals (1: only ``u(t_final)`` after ``u0``).
        dt: a fixed time step for every sample (rounded down to fill each interval exactly); None chooses one per
            sample from ``cfl`` and ``max_dt``.
        cfl: Courant number of the automatic step.
        max_dt: cap of the automatic step.

    Raises:
        ValueError: invalid arguments. RuntimeError: the solution blew up (a step too large for ``dt`` given).
    """
    squeeze = u0.ndim == 1
    u0 = u0.unsqueeze(0) if squeeze else u0
    if u0.ndim != 2:
        raise ValueError(f"u0 must be (B, n) or (n,), got shape {tuple(u0.shape)}")
    n = u0.shape[-1]
    if n < 8 or n % 2:
        raise ValueError(f"the grid must have an even number n >= 8 of points, got n={n}")
    if viscosity < 0 or t_final <= 0 or n_intervals < 1:
        raise ValueError(
            f"need viscosity >= 0, t_final > 0 and n_intervals >= 1; got {viscosity}, {t_final}, {n_intervals}"
        )
    if dt is not None and dt <= 0:
        raise ValueError(f"dt={dt} must be > 0, or None for the automatic step")
    device = u0.device
    u0 = u0.to(torch.float64)
    (k,) = wavenumbers(n, 1, device)
    mask = dealias_mask(n, 1, device)
    ik_half = (0.5j * k) * mask  # d/dx of u^2/2, restricted to the kept modes

    def nonlinear(v: Tensor) -> Tensor:
        u = torch.fft.irfft(v, n=n)
        return -ik_half * torch.fft.rfft(u * u)

    interval = t_final / n_intervals
    if dt is None:
        steps = steps_per_interval(interval, burgers_time_step(u0, viscosity, cfl=cfl, max_dt=max_dt))
    else:
        steps = steps_per_interval(interval, dt, ladder=False) * len(u0)
    L, cache = -viscosity * k**2, {}
    v = torch.fft.rfft(u0) * mask
    out = [torch.fft.irfft(v, n=n)]
    for j in range(n_intervals):
        v = etdrk4_advance(v, steps, L, interval, nonlinear, cache)
        u = torch.fft.irfft(v, n=n)
        if not bool(torch.isfinite(u).all()):
            raise RuntimeError(
                f"the Burgers solution blew up before t={(j + 1) * interval:g} (steps per interval: "
                f"{sorted(set(steps))}); use a smaller dt, or dt=None for the automatic CFL step"
            )
        out.append(u)
    traj = torch.stack(out, dim=1)
    return traj[0] if squeeze else traj
