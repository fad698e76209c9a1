"""2-D incompressible Navier-Stokes in vorticity form on the unit torus, pseudo-spectral in space, ETDRK4 in time.

    w_t + u . grad w = nu Laplacian w + f,   u = (psi_y, -psi_x),   -Laplacian psi = w,   (x, y) in [0, 1)^2.

Conventions (those of the FNO data generator): fields are arrays ``w[..., i, j] = w(x_i, y_j)`` on
``x_i = i / n``, ``y_j = j / n``; the vorticity has zero mean (it is the curl of a periodic velocity);
the FNO forcing is ``f = 0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))``.

Space: Fourier modes (``rfft2`` layout); the advection term is formed pointwise and dealiased by the 2/3 rule, so
the semi-discrete system is a Galerkin truncation: with ``nu = 0`` and ``f = 0`` it conserves the energy
``int |u|^2 / 2`` and the enstrophy ``int w^2 / 2`` exactly, and the velocity is divergence-free by construction.

Time: ETDRK4 with the Kassam-Trefethen coefficients (``datamodules.solvers.spectral``): fourth order, the viscous
term integrated exactly (with ``nu = 0`` it is the classical Runge-Kutta method). The step is chosen afresh for
each sample and output interval from its current velocity, ``dt = cfl * max(dx, nu / U) / U`` with
``U = max |u|``, capped by ``max_dt``; a whole number of steps fills the interval
(``spectral.steps_per_interval``). At ``nu = 1e-3`` on 64^2 the defaults give a time error of ~1e-6 relative over
20 time units.

Batched in torch (float64) on the device of ``w0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from datamodules.solvers.spectral import dealias_mask, etdrk4_advance, steps_per_interval, wavenumbers

__all__ = ["fno_forcing", "velocity", "vorticity_tendency", "energy", "enstrophy", "solve_navier_stokes"]


def fno_forcing(n: int, amplitude: float = 0.1, device: torch.device | str | None = None) -> Tensor:
    """``amplitude * (sin 2 pi (x + y) + cos 2 pi (x + y))`` on the ``n x n`` grid (float64)."""
    x = torch.arange(n, dtype=torch.float64, device=device) / n
    s = x[:, None] + x[None, :]
    return amplitude * (torch.sin(2 * math.pi * s) + torch.cos(2 * math.pi * s))


class _Spectral:
    """Wavenumbers, the 2/3 mask and the inverse Laplacian of an ``n x n`` grid on one device."""

    def __init__(self, n: int, device: torch.device) -> None:
        if n < 8 or n % 2:
            raise ValueError(f"the grid must have an even number n >= 8 of points per side, got n={n}")
        self.n = n
        self.kx, self.ky = wavenumbers(n, 2, device)
        self.k2 = self.kx**2 + self.ky**2
        self.inv_k2 = torch.where(self.k2 > 0, 1.0 / self.k2.clamp_min(1e-30), torch.zeros_like(self.k2))
        self.mask = dealias_mask(n, 2, device)

    def rfft(self, w: Tensor) -> Tensor:
        return torch.fft.rfft2(w)

    def irfft(self, w_hat: Tensor) -> Tensor:
        return torch.fft.irfft2(w_hat, s=(self.n, self.n))

    def velocity_hat(self, w_hat: Tensor) -> tuple[Tensor, Tensor]:
        psi_hat = w_hat * self.inv_k2
        return 1j * self.ky * psi_hat, -1j * self.kx * psi_hat

    def advection_hat(self, w_hat: Tensor) -> Tensor:
        """Dealiased ``FFT(u . grad w)``."""
        u_hat, v_hat = self.velocity_hat(w_hat)
        u, v, wx, wy = self.irfft(torch.stack((u_hat, v_hat, 1j * self.kx * w_hat, 1j * self.ky * w_hat)))
        return self.rfft(u * wx + v * wy) * self.mask


def _as_batch(w: Tensor) -> tuple[Tensor, bool]:
    if w.ndim == 2:
        return w.unsqueeze(0), True
    if w.ndim != 3 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"vorticity must be (B, n, n) or (n, n), got shape {tuple(w.shape)}")
    return w, False


def velocity(w: Tensor) -> tuple[Tensor, Tensor]:
    """Velocity ``(u, v) = (psi_y, -psi_x)`` of a vorticity field ``(..., n, n)`` (its mean is ignored)."""
    sp = _Spectral(w.shape[-1], w.device)
    u_hat, v_hat = sp.velocity_hat(sp.rfft(w.to(torch.float64)))
    return sp.irfft(u_hat), sp.irfft(v_hat)


def vorticity_tendency(w: Tensor, viscosity: float, forcing: Tensor | None = None) -> Tensor:
    """``dw/dt = -u . grad w + nu Laplacian w + f`` of the dealiased (semi-discrete) system, in physical space."""
    sp = _Spectral(w.shape[-1], w.device)
    w_hat = sp.rfft(w.to(torch.float64)) * sp.mask
    rhs = -sp.advection_hat(w_hat) - viscosity * sp.k2 * w_hat
    if forcing is not None:
        rhs = rhs + sp.rfft(forcing.to(w.device, torch.float64)) * sp.mask
    return sp.irfft(rhs)


def energy(w: Tensor) -> Tensor:
    """Kinetic energy ``int |u|^2 / 2`` per field ``(..., n, n)`` (Parseval: ``sum |w_k|^2 / (2 |2 pi k|^2)``)."""
    u, v = velocity(w)
    return 0.5 * (u**2 + v**2).mean(dim=(-2, -1))


def enstrophy(w: Tensor) -> Tensor:
    """Enstrophy ``int w^2 / 2`` per field ``(..., n, n)``."""
    return 0.5 * (w.to(torch.float64) ** 2).mean(dim=(-2, -1))


def _max_speed(sp: _Spectral, w_hat: Tensor) -> Tensor:
    """``max |u|`` per sample ``(B,)`` (float64, CPU)."""
    u_hat, v_hat = sp.velocity_hat(w_hat)
    return (sp.irfft(u_hat) ** 2 + sp.irfft(v_hat) ** 2).amax(dim=(-2, -1)).sqrt().cpu()


def solve_navier_stokes(
    w0: Tensor,
    viscosity: float,
    *,
    forcing: Tensor | None = None,
    n_snapshots: int = 1,
    interval: float = 1.0,
    dt: float | None = None,
    cfl: float = 0.75,
    max_dt: float = 0.1,
) -> Tensor:
    """Vorticity ``(B, n_snapshots + 1, n, n)`` (float64) at ``t_j = j * interval``, ``j = 0..n_snapshots``.

    Args:
        w0: initial vorticity ``(B, n, n)`` (or ``(n, n)``), ``n`` even and >= 8; projected onto the dealiased
            modes (the returned ``[:, 0]`` is that projection). Its mean should be zero; a mean is kept unchanged.
        viscosity: ``nu >= 0``.
        forcing: time-independent forcing ``(n, n)`` (e.g. ``fno_forcing(n)``); None for none.
        n_snapshots: number of output intervals.
        interval: time between snapshots.
        dt: a fixed time step for every sample (rounded down to fill each interval exactly); None chooses one
            per sample and interval from ``cfl`` and ``max_dt``.
        cfl: Courant number of the automatic step.
        max_dt: cap of the automatic step.

    Raises:
        ValueError: invalid arguments. RuntimeError: the solution blew up.
    """
    w0, squeeze = _as_batch(w0)
    if viscosity < 0 or interval <= 0 or n_snapshots < 1:
        raise ValueError(f"need viscosity >= 0, interval > 0 and n_snapshots >= 1; got {viscosity}, {interval}, "
                         f"{n_snapshots}")
    if dt is not None and dt <= 0:
        raise ValueError(f"dt={dt} must be > 0")
    if cfl <= 0 or max_dt <= 0:
        raise ValueError(f"cfl={cfl} and max_dt={max_dt} must be > 0")
    n = w0.shape[-1]
    sp = _Spectral(n, w0.device)
    f_hat = None
    if forcing is not None:
        if tuple(forcing.shape) != (n, n):
            raise ValueError(f"forcing has shape {tuple(forcing.shape)}, expected ({n}, {n})")
        f_hat = sp.rfft(forcing.to(w0.device, torch.float64)) * sp.mask

    def nonlinear(w_hat: Tensor) -> Tensor:
        adv = -sp.advection_hat(w_hat)
        return adv if f_hat is None else adv + f_hat

    L, cache = -viscosity * sp.k2, {}
    w_hat = sp.rfft(w0.to(torch.float64)) * sp.mask
    out = [sp.irfft(w_hat)]
    for j in range(n_snapshots):
        if dt is None:
            umax = _max_speed(sp, w_hat).clamp_min(1e-300)
            step = (cfl * torch.clamp(viscosity / umax, min=1.0 / n) / umax).clamp_max(max_dt)
            steps = steps_per_interval(interval, step)
        else:
            steps = steps_per_interval(interval, dt, ladder=False) * len(w_hat)
        w_hat = etdrk4_advance(w_hat, steps, L, interval, nonlinear, cache)
        w = sp.irfft(w_hat)
        if not bool(torch.isfinite(w).all()):
            raise RuntimeError(
                f"the Navier-Stokes solution blew up before t={(j + 1) * interval:g} (steps per interval: "
                f"{sorted(set(steps))}); use a smaller dt (or dt=None for the automatic CFL step) or a finer grid"
            )
        out.append(w)
    traj = torch.stack(out, dim=1)
    return traj[0] if squeeze else traj
