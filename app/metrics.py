"""Relative L2 / H1 errors for operator learning: pure functions, training losses and torchmetrics metrics.

All functions take fields shaped ``(batch, channels, *spatial)``, real or complex. Errors are *per-sample*
relative norms (channels and space pooled within a sample) and are averaged over samples, the convention of
the FNO papers and of ``neuralop.losses.LpLoss``/``H1Loss``.

Norms use the grid quadrature of a domain with side ``domain_length``. For the H1 norm
``||u||_H1^2 = ||u||_L2^2 + ||grad u||_L2^2``; the gradient is taken

* spectrally (``periodic=True``): exact for band-limited periodic fields, grid points at ``k * L / n``;
* by second-order finite differences (``periodic=False``, the default, right for Darcy's Dirichlet problem):
  central differences inside, second-order one-sided differences on the boundary, grid points including both
  ends (spacing ``L / (n - 1)``).

Frequency bands (``band_relative_errors``, ``SpectralBandError``), in the spirit of PDEBench's fRMSE: the error and
the target are taken to Fourier space over all spatial axes (``torch.fft.fftn``, no windowing: a non-periodic field
such as Darcy's pressure leaks some energy into higher frequencies, for prediction and target alike). Each
frequency gets its normalised radius ``rho = max_k |f_k| / (n_k / 2)`` (the largest of its integer frequencies
over each axis's Nyquist frequency; ``rho`` lies in [0, 1] on every grid). The bands, fractions of Nyquist so
that they mean the same on 16 and on 128 points (PDEBench's fixed wavenumbers 4 and 12 would leave a 16x16 grid
without a high band):

* ``low``: ``rho <= 1/4``; ``mid``: ``1/4 < rho <= 1/2``; ``high``: ``rho > 1/2``.

The band error of a sample is ``||P_b (pred - target)|| / ||P_b target||`` (``P_b``: keep band ``b`` only): the
relative error *within* the band, averaged over samples like the L2 error. A high-band value near 1 means the
model misses those frequencies altogether.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import Metric

__all__ = [
    "abs_sq",
    "spatial_gradients",
    "relative_l2",
    "relative_h1",
    "RelativeL2Loss",
    "RelativeH1Loss",
    "RelativeL2",
    "RelativeH1",
    "BANDS",
    "band_masks",
    "band_relative_errors",
    "SpectralBandError",
]

#: the frequency bands of ``band_relative_errors``: name -> (lower, upper] edges of ``rho`` (fraction of Nyquist)
BANDS: dict[str, tuple[float, float]] = {"low": (-1.0, 0.25), "mid": (0.25, 0.5), "high": (0.5, 1.0)}


def abs_sq(x: Tensor) -> Tensor:
    """|x|^2 as a real tensor, for real and complex ``x``."""
    return (x.conj() * x).real if x.is_complex() else x * x


def _check_fields(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.ndim < 3:
        raise ValueError(
            f"fields must be shaped (batch, channels, *spatial); got {pred.ndim} dimensions {tuple(pred.shape)}"
        )


def spatial_gradients(u: Tensor, *, periodic: bool = False, domain_length: float = 1.0) -> list[Tensor]:
    """Derivatives of ``u`` (batch, channels, *spatial) along every spatial axis, in physical units."""
    dims = list(range(2, u.ndim))
    grads = []
    for d in dims:
        n = u.shape[d]
        if periodic:
            k = torch.fft.fftfreq(n, d=domain_length / n, device=u.device) * (2 * math.pi)
            shape = [1] * u.ndim
            shape[d] = n
            du = torch.fft.ifft(1j * k.view(shape) * torch.fft.fft(u, dim=d), dim=d)
            grads.append(du if u.is_complex() else du.real)
        else:
            if n < 3:
                raise ValueError(f"finite-difference gradient needs at least 3 points per axis, got {n} on axis {d}")
            grads.append(torch.gradient(u, spacing=domain_length / (n - 1), dim=d, edge_order=2)[0])
    return grads


def _sq_norms(u: Tensor, *, h1: bool, periodic: bool, domain_length: float) -> Tensor:
    """Per-sample squared norm (up to the common quadrature weight, which cancels in a ratio)."""
    sq = abs_sq(u).flatten(1).sum(1)
    if h1:
        for g in spatial_gradients(u, periodic=periodic, domain_length=domain_length):
            sq = sq + abs_sq(g).flatten(1).sum(1)
    return sq


def _per_sample_relative(
    pred: Tensor, target: Tensor, *, h1: bool, periodic: bool, domain_length: float, eps: float = 1e-12
) -> Tensor:
    _check_fields(pred, target)
    kw = dict(h1=h1, periodic=periodic, domain_length=domain_length)
    err = _sq_norms(pred - target, **kw)
    ref = _sq_norms(target, **kw)
    return torch.sqrt(err / ref.clamp_min(eps))


def relative_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample relative L2 error ``||pred - target|| / ||target||``, shape (batch,)."""
    return _per_sample_relative(pred, target, h1=False, periodic=False, domain_length=1.0)


def relative_h1(pred: Tensor, target: Tensor, *, periodic: bool = False, domain_length: float = 1.0) -> Tensor:
    """Per-sample relative H1 error, shape (batch,).

    It exceeds the relative L2 error whenever the error is rougher than the target (the usual case: a learned
    operator misses the high frequencies), because the gradient term weighs high frequencies more.
    """
    return _per_sample_relative(pred, target, h1=True, periodic=periodic, domain_length=domain_length)


class RelativeL2Loss(nn.Module):
    """Training loss: mean over the batch of the per-sample relative L2 error."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return relative_l2(pred, target).mean()


class RelativeH1Loss(nn.Module):
    """Training loss: mean over the batch of the per-sample relative H1 error.

    Args:
        periodic: spectral derivatives on a periodic grid; otherwise second-order finite differences on a grid
            that includes both boundaries.
        domain_length: side length of the (square/cubic) domain.
    """

    def __init__(self, periodic: bool = False, domain_length: float = 1.0) -> None:
        super().__init__()
        if domain_length <= 0:
            raise ValueError(f"domain_length must be > 0, got {domain_length}")
        self.periodic = periodic
        self.domain_length = domain_length

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return relative_h1(pred, target, periodic=self.periodic, domain_length=self.domain_length).mean()


class _MeanRelativeError(Metric):
    """Average over samples of a per-sample relative error; sums reduce across DDP ranks."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _per_sample(self, pred: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:
        errs = self._per_sample(pred.detach(), target.detach())
        self.total += errs.sum().to(self.total.dtype)
        self.count += errs.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class RelativeL2(_MeanRelativeError):
    """Mean per-sample relative L2 error."""

    def _per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        return relative_l2(pred, target)


class RelativeH1(_MeanRelativeError):
    """Mean per-sample relative H1 error (see the module docstring for the gradient)."""

    def __init__(self, periodic: bool = False, domain_length: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.periodic = periodic
        self.domain_length = domain_length

    def _per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        return relative_h1(pred, target, periodic=self.periodic, domain_length=self.domain_length)


def band_masks(shape: tuple[int, ...], device: torch.device | None = None) -> dict[str, Tensor]:
    """Boolean masks over the ``fftn`` frequencies of a grid ``shape`` (spatial axes only), one per band of
    ``BANDS``; every frequency is in exactly one band."""
    if not shape:
        raise ValueError("band masks need at least one spatial axis")
    rho = None
    for n in shape:
        f = torch.fft.fftfreq(n, d=1.0 / n, device=device).abs() / max(n / 2, 1.0)
        rho = f if rho is None else torch.maximum(rho.unsqueeze(-1), f)
    return {name: (rho > lo) & (rho <= hi) for name, (lo, hi) in BANDS.items()}


def band_relative_errors(pred: Tensor, target: Tensor, eps: float = 1e-12) -> dict[str, Tensor]:
    """Per-sample relative error in each Fourier band (see the module docstring), ``{band: (batch,)}``."""
    _check_fields(pred, target)
    dims = tuple(range(2, pred.ndim))
    err = abs_sq(torch.fft.fftn(pred - target, dim=dims))
    ref = abs_sq(torch.fft.fftn(target, dim=dims))
    out = {}
    for name, mask in band_masks(tuple(pred.shape[2:]), pred.device).items():
        e = (err * mask).flatten(1).sum(1)
        r = (ref * mask).flatten(1).sum(1)
        out[name] = torch.sqrt(e / r.clamp_min(eps))
    return out


class SpectralBandError(_MeanRelativeError):
    """Mean per-sample relative error in one Fourier band (``band``: ``low``, ``mid`` or ``high``; see the module
    docstring for the band edges)."""

    def __init__(self, band: str, **kwargs) -> None:
        if band not in BANDS:
            raise ValueError(f"band={band!r} is not one of {list(BANDS)}")
        super().__init__(**kwargs)
        self.band = band

    def _per_sample(self, pred: Tensor, target: Tensor) -> Tensor:
        return band_relative_errors(pred, target)[self.band]
