"""Symmetric split-step Fourier solver for a pulse in a quasi-phase-matched chi(2) waveguide.

    dA/dz = -i (beta2 / 2) d^2A/dt^2  +  i gamma |A|^2 A  +  i kappa A* exp(i dk z)

``A(z, t)`` is the complex envelope (sqrt(W)) in the frame moving with the group velocity, ``t`` is periodic on a
window of ``t_window``. Units are the caller's, as long as they agree: the data module uses mm for ``z``, fs for
``t``, W for ``|A|^2``, so ``beta2`` is in fs^2/mm, ``gamma`` in 1/(W mm), ``kappa`` and ``dk`` in 1/mm.

Method. In the frame rotating at ``dk / 2``, ``B = A exp(-i dk z / 2)``, the equation is autonomous:

    dB/dz = [ -i (beta2/2) d^2/dt^2 - i dk/2 ] B + i kappa B*   +   i gamma |B|^2 B
            \\------------------- linear, L --------------------/   \\-- nonlinear, N --/

* ``L`` couples each Fourier mode ``B^(w)`` only with ``conj(B^(-w))`` (the Fourier transform of ``B*``). With
  ``a(w) = beta2 w^2 / 2 - dk / 2`` the pair obeys ``d/dz (b+, b-) = i [[a, kappa], [-kappa, -a]] (b+, b-)``,
  whose matrix squares to ``g^2 I`` with ``g^2 = kappa^2 - a^2``; so, exactly,

      B^(w, z + h) = (cosh(g h) + i a sinh(g h)/g) B^(w, z) + i kappa sinh(g h)/g conj(B^(-w, z)),

  i.e. dispersion, phase mismatch and phase-sensitive parametric gain (``|a| < kappa``) are integrated exactly.
* ``N`` keeps ``|B|`` pointwise, so ``B(z + h) = B(z) exp(i gamma |B|^2 h)`` exactly.

One Strang step is ``L(h/2) N(h) L(h/2)`` (second order; consecutive half steps are merged). Its error comes
only from ``L`` and ``N`` not commuting, so it vanishes when ``gamma = 0`` (then any step count is exact) and
when ``beta2 = kappa = 0``. :func:`propagate` controls the step: it doubles the number of steps of each sample
until two successive solutions agree to ``rtol`` (a convergence check by step doubling; the Richardson estimate
of the remaining error of the finer solution is a third of that difference for a second-order method).

Every function is batched over samples (each with its own length and ``dk``) and runs on the inputs' device
and dtype (complex128 recommended for data generation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["angular_frequencies", "time_grid", "linear_propagator", "split_step", "propagate", "Propagation"]


def time_grid(n: int, t_window: float, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """``n`` points ``t_j = -t_window/2 + j t_window/n`` of the periodic window (pulse centred at ``t = 0``);
    the grid of ``n / k`` points is this one subsampled by ``k``."""
    return (torch.arange(n, dtype=dtype, device=device) - n // 2) * (t_window / n)


def angular_frequencies(n: int, t_window: float, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Angular frequencies ``w`` (rad per time unit) of ``torch.fft.fft`` on ``n`` points spanning ``t_window``."""
    return 2 * math.pi * torch.fft.fftfreq(n, d=t_window / n, dtype=dtype, device=device)


def _as_column(v: Tensor | float, batch: int, ref: Tensor) -> Tensor:
    """A per-sample value as a real ``(batch, 1)`` column on ``ref``'s device."""
    real = ref.real.dtype if ref.is_complex() else ref.dtype
    v = torch.as_tensor(v, dtype=real, device=ref.device)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"expected a scalar or {batch} per-sample values, got shape {tuple(v.shape)}")
    return v.view(batch, 1)


def linear_propagator(
    w: Tensor, h: Tensor, *, beta2: float, kappa: float, dk: Tensor
) -> tuple[Tensor, Tensor]:
    """Coefficients ``(p, q)`` of the exact linear step over ``h`` in the rotating frame:
    ``B^_new(w) = p(w) B^(w) + q(w) conj(B^(-w))``. ``h`` and ``dk`` are ``(batch, 1)`` columns, ``w`` is ``(n,)``;
    the results are complex ``(batch, n)``."""
    a = (0.5 * beta2) * w**2 - 0.5 * dk  # (batch, n), real
    g = torch.sqrt((kappa**2 - a**2).to(torch.promote_types(a.dtype, torch.complex64)))  # real gain or i*|a|
    x = g * h
    small = x.abs() < 1e-4
    sinhc = torch.where(small, 1 + x * x / 6, torch.sinh(x) / torch.where(small, torch.ones_like(x), x))
    s = sinhc * h  # sinh(g h) / g, continuous through g = 0
    p = torch.cosh(x) + 1j * a * s
    q = (1j * kappa) * s
    return p, q


def _apply_linear(b_hat: Tensor, p: Tensor, q: Tensor) -> Tensor:
    # conj(B^(-w)) on the FFT grid: index -k mod n, i.e. flip then roll by one
    b_minus = torch.roll(torch.flip(b_hat, dims=(-1,)), 1, dims=-1).conj()
    return p * b_hat + q * b_minus


def split_step(
    a0: Tensor,
    t_window: float,
    length: Tensor | float,
    n_steps: int,
    *,
    beta2: float,
    gamma: float,
    kappa: float = 0.0,
    dk: Tensor | float = 0.0,
) -> Tensor:
    """``A(length, t)`` from ``A(0, t) = a0`` with ``n_steps`` Strang steps of size ``length / n_steps`` each.

    Args:
        a0: complex envelopes ``(batch, n)`` (or ``(n,)``) on the periodic window.
        t_window: width of the time window.
        length: propagation length, a scalar or one per sample.
        n_steps: number of equal steps (per sample).
        beta2: group-velocity dispersion.
        gamma: Kerr-type nonlinear coefficient.
        kappa: phase-sensitive parametric coupling.
        dk: phase mismatch, a scalar or one per sample.
    """
    if not a0.is_complex():
        raise TypeError(f"a0 must be a complex tensor, got {a0.dtype}")
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    squeeze = a0.ndim == 1
    a = a0.unsqueeze(0) if squeeze else a0
    if a.ndim != 2:
        raise ValueError(f"a0 must be (batch, n) or (n,), got shape {tuple(a0.shape)}")
    batch, n = a.shape
    length_c = _as_column(length, batch, a)
    dk_c = _as_column(dk, batch, a)
    h = length_c / n_steps
    w = angular_frequencies(n, t_window, dtype=length_c.dtype, device=a.device)
    p_half, q_half = linear_propagator(w, h / 2, beta2=beta2, kappa=kappa, dk=dk_c)
    p_full, q_full = linear_propagator(w, h, beta2=beta2, kappa=kappa, dk=dk_c)
    b_hat = _apply_linear(torch.fft.fft(a), p_half, q_half)
    for i in range(n_steps):
        b = torch.fft.ifft(b_hat)
        if gamma != 0.0:
            phase = (gamma * h) * (b.real**2 + b.imag**2)
            b = b * torch.polar(torch.ones_like(phase), phase)
        b_hat = torch.fft.fft(b)
        last = i == n_steps - 1
        b_hat = _apply_linear(b_hat, p_half if last else p_full, q_half if last else q_full)
    out = torch.fft.ifft(b_hat) * torch.exp((0.5j * dk_c) * length_c)  # back to the lab frame
    return out.squeeze(0) if squeeze else out


@dataclass(frozen=True)
class Propagation:
    """Result of :func:`propagate`: the output envelopes, the steps each sample used and the last difference
    between its two finest solutions (relative L2; the finer one's error is about a third of it)."""

    field: Tensor
    n_steps: Tensor
    rel_change: Tensor


def _relative_l2(a: Tensor, b: Tensor) -> Tensor:
    tiny = torch.finfo(b.real.dtype).tiny  # a zero field has converged: 0 / tiny = 0
    return torch.linalg.vector_norm(a - b, dim=-1) / torch.linalg.vector_norm(b, dim=-1).clamp_min(tiny)


def propagate(
    a0: Tensor,
    t_window: float,
    length: Tensor | float,
    *,
    beta2: float,
    gamma: float,
    kappa: float = 0.0,
    dk: Tensor | float = 0.0,
    rtol: float = 1e-6,
    min_steps: int = 8,
    max_steps: int = 1 << 14,
) -> Propagation:
    """Split-step solution with a convergence check: each sample's step count doubles from ``min_steps`` until
    the relative L2 change of its solution is below ``rtol`` (samples that converge stop early). Raises
    ``RuntimeError`` if a sample needs more than ``max_steps``."""
    if rtol <= 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    if min_steps < 1 or max_steps < 2 * min_steps:
        raise ValueError(f"need 1 <= min_steps and 2 * min_steps <= max_steps, got {min_steps}, {max_steps}")
    a = a0.unsqueeze(0) if a0.ndim == 1 else a0
    batch = a.shape[0]
    length_c = _as_column(length, batch, a).squeeze(1)
    dk_c = _as_column(dk, batch, a).squeeze(1)
    kw = dict(beta2=beta2, gamma=gamma, kappa=kappa)
    n = min_steps
    coarse = split_step(a, t_window, length_c, n, dk=dk_c, **kw)
    field = coarse.clone()
    steps = torch.full((batch,), n, dtype=torch.long)
    change = torch.full((batch,), float("inf"), dtype=torch.float64)
    todo = torch.arange(batch, device=a.device)
    while len(todo):
        n *= 2
        if n > max_steps:
            worst = float(change.max())
            raise RuntimeError(
                f"split-step did not converge to rtol={rtol:g} within max_steps={max_steps} for {len(todo)} "
                f"sample(s) (relative change {worst:.2e}); raise max_steps or rtol, or reduce the nonlinearity"
            )
        fine = split_step(a[todo], t_window, length_c[todo], n, dk=dk_c[todo], **kw)
        rel = _relative_l2(coarse, fine)
        field[todo] = fine
        steps[todo.cpu()] = n
        change[todo.cpu()] = rel.detach().cpu().double()
        done = rel <= rtol
        coarse, todo = fine[~done], todo[~done]
    if a0.ndim == 1:
        field = field.squeeze(0)
    return Propagation(field=field, n_steps=steps, rel_change=change)
