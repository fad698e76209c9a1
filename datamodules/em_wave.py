"""EM wave: an ultrashort optical pulse in a quasi-phase-matched chi(2) waveguide (complex-valued, 1-D).

The envelope ``A(z, t)`` of the pulse (sqrt(W); ``|A|^2`` is power) obeys

    dA/dz = -i (beta2 / 2) d^2A/dt^2  +  i gamma |A|^2 A  +  i kappa A* exp(i dk z),

solved by the symmetric split-step Fourier method with a convergence check (``datamodules.solvers.nlse``).
The task is the operator ``(A(0, t), L, mismatch, energy) -> A(L, t)``.

Per sample (independent uniform draws from the sample's own random stream):

* poling-region length ``L ~ U[2, 15]`` mm;
* poling-period mismatch ``dLambda ~ U[-50, 50]`` nm, which sets the residual phase mismatch of the
  quasi-phase-matched interaction: the grating vector ``K = 2 pi / Lambda`` compensates the material mismatch
  exactly at the nominal period ``Lambda0``, so ``Lambda = Lambda0 + dLambda`` leaves

      dk = 2 pi / Lambda0 - 2 pi / (Lambda0 + dLambda)  ~=  2 pi dLambda / Lambda0^2

  (about 0.24 rad/mm per nm at ``Lambda0 = 5.1`` um; +-50 nm is +-12 rad/mm, far beyond the phase-matched
  band, ``|dk|`` of order ``kappa`` and ``2 pi / L``, so the data covers the resonance and both wings);
* pulse energy ``E`` log-uniform in [5, 5000] fJ (the issue's "pump pulse energy");
* the input envelope ``A(0, t) = sqrt(P0) f(t / T0) exp(-i C t^2 / (2 T0^2)) [exp(i phi)]`` with ``f = sech``
  or Gaussian ``exp(-x^2 / 2)`` (equally likely), intensity FWHM ``~ U[40, 120]`` fs, linear chirp
  ``C ~ U[-2, 2]``, ``P0`` set so that ``sum |A|^2 dt = E`` on the solver grid, and optionally a random carrier
  phase ``phi`` (``random_phase``; the chi(2) term is phase sensitive).

Physical constants (defaults; every one is a constructor argument and part of the cache key). They describe a
thin-film lithium niobate (TFLN) ridge waveguide at a 2.09 um fundamental, the platform of the ultrafast
quasi-phase-matched OPA/SHG experiments this dataset imitates (e.g. Jankowski et al., Optica 7, 40 (2020);
Ledezma et al., Optica 9, 303 (2022)). They are order-of-magnitude choices, not a fit to one device:

* ``beta2 = -50 fs^2/mm``: anomalous group-velocity dispersion, the sign and size typical of sub-um TFLN
  ridges near 2 um (geometric dispersion); the dispersion length ``T0^2 / |beta2|`` is then ~10-90 mm for the
  pulses above (shorter with chirp), so dispersion is visible but does not dominate over ``L <= 15`` mm;
* ``gamma = 2 pi n2 / (lambda A_eff) = 5.4e-4 /(W mm)``: the Kerr coefficient with LN's
  ``n2 ~ 1.8e-19 m^2/W``, ``lambda = 2.09 um`` and an effective mode area ``A_eff ~ 1 um^2``; the peak powers
  (up to ~110 W) give nonlinear phases from ~1e-5 rad (fJ pulses: linear) to ~1 rad (pJ pulses), more where
  the parametric gain amplifies the pulse;
* ``kappa = 0.1 /mm``: the phase-sensitive parametric coupling to an undepleted second-harmonic field,
  ``kappa = sqrt(eta0 P_SH)`` with a TFLN normalised efficiency ``eta0 ~ 1000 %/(W cm^2) = 0.1 /(W mm^2)`` and
  ``P_SH = 100 mW``; at phase matching the quadrature it amplifies grows by at most ``exp(kappa L) ~ 4.5``;
* ``Lambda0 = 5.1 um``: the first-order QPM period for 2.09 um <-> 1.045 um in X-cut TFLN;
* time window 1024 fs on ``solve_resolution = 1024`` points (1 fs spacing, Nyquist 3.1 rad/fs, far beyond the
  pulses' and the self-phase-modulated spectra); the window is periodic, as are the solver and the FNO.

Units: ``t`` in fs, ``z`` in mm, ``|A|^2`` in W (so ``sum |A|^2 dt`` is in fJ).

Fields for the FNO (complex64, ``in_channels = 4``, ``out_channels = 1``):

* ``x[:, 0]`` = ``A(0, t)`` in sqrt(W); ``x[:, 1]`` = ``L`` in mm; ``x[:, 2]`` = ``dLambda`` in nm;
  ``x[:, 3]`` = ``log10(E / fJ)``; channels 1-3 are constant along ``t`` (the scalars as constant channels;
  the base class normalises every channel with training-split statistics);
* ``y[:, 0]`` = ``A(L, t)`` in sqrt(W).

Two sources (``PDEDataModule`` does the caching, checks, splits and normalisation):

* **generated** (no files): the solver runs on ``solve_resolution`` points and a resolution ``s`` is every
  ``(solve_resolution / s)``-th point, so ``s`` must divide ``solve_resolution``; test sets at several
  resolutions hold the same pulses (zero-shot super-resolution). Cached under ``<data_dir>/em_wave/``, keyed by
  every setting above; sample ``i`` draws from its own stream ``(seed, split, i)``.
* **files** in a plain ``.pt`` format: a dict with complex ``x`` of shape ``(N, 4, s)`` (the channels above)
  and complex ``y`` of shape ``(N, 1, s)`` (or ``(N, s)``); real tensors are refused (a complex envelope
  cannot be recovered from them). Each file is used at its own grid. A generated cache file is in this
  format (plus a ``meta`` entry), so it can be given as a file too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.base import Generated, PDEDataModule, as_fields
from datamodules.io import check_keys, load_pt
from datamodules.solvers.nlse import angular_frequencies, propagate, time_grid
from datamodules.solvers.spectral import solver_threads

log = logging.getLogger(__name__)

__all__ = [
    "EMWaveDataModule",
    "SCALAR_CHANNELS",
    "draw_parameters",
    "input_pulses",
    "out_of_band_fraction",
    "phase_mismatch",
    "solve_pulses",
]

#: the scalar inputs, in channel order after the envelope (name, unit)
SCALAR_CHANNELS = (("length", "mm"), ("mismatch", "nm"), ("log10_energy", "log10 fJ"))

# Thin-film lithium niobate at 2.09 um (see the module docstring for the sources and reasoning).
N2_M2_PER_W = 1.8e-19  # Kerr index of LN
WAVELENGTH_M = 2.09e-6  # fundamental
A_EFF_M2 = 1.0e-12  # effective mode area of a sub-um TFLN ridge
GAMMA_PER_W_MM = 2 * math.pi * N2_M2_PER_W / (WAVELENGTH_M * A_EFF_M2) * 1e-3  # 1/(W m) -> 1/(W mm): 5.4e-4
BETA2_FS2_PER_MM = -50.0
KAPPA_PER_MM = 0.1
POLING_PERIOD_UM = 5.1

_FWHM_PER_T0 = {"sech": 2 * math.acosh(math.sqrt(2)), "gaussian": 2 * math.sqrt(math.log(2))}
_SHAPES = ("sech", "gaussian")


def phase_mismatch(mismatch_nm: Tensor | float, poling_period_um: float = POLING_PERIOD_UM) -> Tensor:
    """Residual phase mismatch ``dk`` in rad/mm of a poling period ``Lambda0 + dLambda`` (``dLambda`` in nm)
    when ``Lambda0`` (in um) phase-matches exactly: ``2 pi / Lambda0 - 2 pi / (Lambda0 + dLambda)``."""
    period_mm = poling_period_um * 1e-3
    d = torch.as_tensor(mismatch_nm, dtype=torch.float64) * 1e-6
    return 2 * math.pi * d / (period_mm * (period_mm + d))  # the difference above, without cancellation


def input_pulses(
    t: Tensor, energy_fj: Tensor, fwhm_fs: Tensor, chirp: Tensor, shape: Tensor, phase: Tensor | None = None
) -> Tensor:
    """Complex envelopes ``(N, n)`` on the time grid ``t`` (fs): ``shape`` 0 = sech, 1 = Gaussian; each scaled
    so that ``sum |A|^2 dt`` equals its energy (fJ, with ``|A|^2`` in W)."""
    dt = float(t[1] - t[0])
    col = lambda v: torch.as_tensor(v, dtype=t.dtype, device=t.device).view(-1, 1)  # noqa: E731
    is_gauss = col(shape) > 0.5
    fwhm_per_t0 = torch.where(is_gauss, col(_FWHM_PER_T0["gaussian"]), col(_FWHM_PER_T0["sech"]))
    t0 = col(fwhm_fs) / fwhm_per_t0
    u = t.view(1, -1) / t0
    env = torch.where(is_gauss, torch.exp(-0.5 * u**2), 1 / torch.cosh(u))
    peak_power = col(energy_fj) / ((env**2).sum(-1, keepdim=True) * dt)
    phi = -0.5 * col(chirp) * u**2 + (0.0 if phase is None else col(phase))
    return torch.sqrt(peak_power) * env * torch.exp(1j * phi)


def draw_parameters(
    rngs: Sequence[np.random.Generator],
    *,
    length_mm: tuple[float, float] = (2.0, 15.0),
    mismatch_nm: tuple[float, float] = (-50.0, 50.0),
    energy_fj: tuple[float, float] = (5.0, 5000.0),
    fwhm_fs: tuple[float, float] = (40.0, 120.0),
    chirp: tuple[float, float] = (-2.0, 2.0),
    pulse_shapes: Sequence[str] = _SHAPES,
    random_phase: bool = False,
) -> dict[str, Tensor]:
    """One sample's parameters per generator (float64 tensors of length ``len(rngs)``): ``length_mm``,
    ``mismatch_nm``, ``energy_fj`` (log-uniform), ``fwhm_fs``, ``chirp``, ``shape`` (0 sech, 1 Gaussian) and
    ``phase`` (0 unless ``random_phase``). Each generator gives seven uniforms, always all seven, so changing one
    range or option leaves the other parameters of a sample unchanged."""
    u = torch.from_numpy(np.stack([rng.random(7) for rng in rngs])) if len(rngs) else torch.empty(0, 7)

    def uniform(col: int, lo_hi: tuple[float, float]) -> Tensor:
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u[:, col]

    shape_idx = torch.tensor([_SHAPES.index(s) for s in pulse_shapes], dtype=torch.float64)
    pick = (u[:, 5] * len(pulse_shapes)).long().clamp_max(len(pulse_shapes) - 1)
    return {
        "length_mm": uniform(0, length_mm),
        "mismatch_nm": uniform(1, mismatch_nm),
        "energy_fj": 10.0 ** uniform(2, (math.log10(energy_fj[0]), math.log10(energy_fj[1]))),
        "fwhm_fs": uniform(3, fwhm_fs),
        "chirp": uniform(4, chirp),
        "shape": shape_idx[pick],
        "phase": 2 * math.pi * u[:, 6] if random_phase else torch.zeros(len(u), dtype=torch.float64),
    }


def solve_pulses(
    params: dict[str, Tensor],
    *,
    solve_resolution: int = 1024,
    t_window_fs: float = 1024.0,
    beta2: float = BETA2_FS2_PER_MM,
    gamma: float = GAMMA_PER_W_MM,
    kappa: float = KAPPA_PER_MM,
    poling_period_um: float = POLING_PERIOD_UM,
    rtol: float = 1e-5,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """Input and output envelopes ``(N, solve_resolution)`` (complex128, CPU) of the pulses ``params`` (as from
    :func:`draw_parameters`), solved in one batch on ``device``, and the split-step count of each sample."""
    p = {k: v.to(device) for k, v in params.items()}
    t = time_grid(solve_resolution, t_window_fs, device=device)
    with solver_threads(device):  # ~1e5 complex numbers a batch: extra threads only cost
        a0 = input_pulses(t, p["energy_fj"], p["fwhm_fs"], p["chirp"], p["shape"], p["phase"])
        out = propagate(
            a0, t_window_fs, p["length_mm"], dk=phase_mismatch(p["mismatch_nm"], poling_period_um).to(device),
            beta2=beta2, gamma=gamma, kappa=kappa, rtol=rtol,
        )
    return a0.cpu(), out.field.cpu(), out.n_steps


def out_of_band_fraction(fields: Tensor, t_window_fs: float, resolution: int) -> Tensor:
    """Per-sample fraction of spectral energy above the Nyquist frequency of a ``resolution``-point grid."""
    w = angular_frequencies(fields.shape[-1], t_window_fs, device=fields.device)
    power = torch.fft.fft(fields.to(torch.complex128)).abs() ** 2
    return power[..., w.abs() > math.pi * resolution / t_window_fs].sum(-1) / power.sum(-1).clamp_min(1e-300)


class EMWaveDataModule(PDEDataModule):
    """Optical pulses in a chi(2) waveguide (module docstring): complex 1-D fields, four input channels
    (envelope, length, period mismatch, log10 energy), one output channel (the output envelope).

    Defaults as in the paper: 800 training pulses (720 train / 80 validation) and 200 test pulses, at 256 points
    of a 1024 fs window, solved on 1024 points (a few seconds of generation on a 2-core CPU, cached afterwards).

    Args:
        n_train: training samples, validation included (the paper: 800).
        n_test: samples per test set (the paper: 200).
        resolution: generated training grid (points of the periodic window); must divide ``solve_resolution``.
        test_resolutions: generated test grids (the same pulses at each); default ``[resolution]``.
        solve_resolution: points of the split-step solver's grid.
        t_window_fs: width of the periodic time window, fs.
        length_mm: range of the poling-region length ``L``, mm.
        mismatch_nm: range of the poling-period mismatch, nm.
        energy_fj: range of the pulse energy, fJ (drawn log-uniformly).
        fwhm_fs: range of the input pulse's intensity FWHM, fs.
        chirp: range of the input pulse's linear chirp ``C``.
        pulse_shapes: input pulse shapes, drawn with equal probability.
        random_phase: give each input pulse a uniformly random carrier phase.
        beta2: group-velocity dispersion, fs^2/mm.
        gamma: Kerr nonlinear coefficient, 1/(W mm).
        kappa: phase-sensitive parametric coupling, 1/mm.
        poling_period_um: nominal (phase-matched) poling period, um; sets ``dk`` from the mismatch.
        rtol: relative L2 tolerance of the solver's step-doubling convergence check.
        solver_device: device that generates the data; default a GPU when there is one, else the CPU (not part
            of the cache key: the solve is in float64 and stored in complex64, so devices agree).
        **kwargs: the arguments of ``PDEDataModule`` (train_file, test_files, data_dir, batch_size,
            test_batch_size, num_workers, val_fraction, seed, normalize).
    """

    name = "em_wave"
    n_dims = 1
    in_channels = 1 + len(SCALAR_CHANNELS)
    out_channels = 1
    complex_data = True
    generate_chunk = 64

    def __init__(
        self,
        n_train: int = 800,
        n_test: int = 200,
        resolution: int = 256,
        test_resolutions: Sequence[int] | None = None,
        solve_resolution: int = 1024,
        t_window_fs: float = 1024.0,
        length_mm: tuple[float, float] = (2.0, 15.0),
        mismatch_nm: tuple[float, float] = (-50.0, 50.0),
        energy_fj: tuple[float, float] = (5.0, 5000.0),
        fwhm_fs: tuple[float, float] = (40.0, 120.0),
        chirp: tuple[float, float] = (-2.0, 2.0),
        pulse_shapes: Sequence[Literal["sech", "gaussian"]] = _SHAPES,
        random_phase: bool = False,
        beta2: float = BETA2_FS2_PER_MM,
        gamma: float = GAMMA_PER_W_MM,
        kappa: float = KAPPA_PER_MM,
        poling_period_um: float = POLING_PERIOD_UM,
        rtol: float = 1e-5,
        solver_device: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            n_train=n_train, n_test=n_test, resolution=resolution, test_resolutions=test_resolutions, **kwargs
        )
        if not isinstance(solve_resolution, int) or solve_resolution < 2:
            raise ValueError(f"solve_resolution={solve_resolution!r} is invalid; use an integer >= 2, e.g. 1024")
        for name, value in (("t_window_fs", t_window_fs), ("poling_period_um", poling_period_um), ("rtol", rtol)):
            if not value > 0:
                raise ValueError(f"{name}={value!r} is invalid; it must be > 0")
        self.ranges = {
            "length_mm": _range("length_mm", length_mm, positive=True),
            "mismatch_nm": _range("mismatch_nm", mismatch_nm),
            "energy_fj": _range("energy_fj", energy_fj, positive=True),
            "fwhm_fs": _range("fwhm_fs", fwhm_fs, positive=True),
            "chirp": _range("chirp", chirp),
        }
        if self.ranges["mismatch_nm"][0] <= -1e3 * poling_period_um:
            raise ValueError(
                f"mismatch_nm={list(mismatch_nm)} reaches a non-positive poling period "
                f"(poling_period_um={poling_period_um}); keep the mismatch above {-1e3 * poling_period_um:g} nm"
            )
        self.pulse_shapes = tuple(pulse_shapes)
        if not self.pulse_shapes or any(s not in _SHAPES for s in self.pulse_shapes):
            raise ValueError(f"pulse_shapes={list(pulse_shapes)} is invalid; choose one or more of {list(_SHAPES)}")
        self.random_phase = bool(random_phase)
        self.solve_resolution = solve_resolution
        self.solver = {
            "solve_resolution": solve_resolution,
            "t_window_fs": float(t_window_fs),
            "beta2": float(beta2),
            "gamma": float(gamma),
            "kappa": float(kappa),
            "poling_period_um": float(poling_period_um),
            "rtol": float(rtol),
        }
        self.solver_device = solver_device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.check_generated_resolutions(solve_resolution)

    def generator_settings(self) -> dict[str, int | float | str | bool]:
        ranges = {f"{k}_{end}": v[i] for k, v in self.ranges.items() for i, end in enumerate(("lo", "hi"))}
        return {
            **self.solver,
            **ranges,
            "pulse_shapes": ",".join(self.pulse_shapes),
            "random_phase": self.random_phase,
            "scheme": "strang-ssf-exact-linear",
        }

    def generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        params = draw_parameters(rngs, **self.ranges, pulse_shapes=self.pulse_shapes, random_phase=self.random_phase)
        a0, a_out, n_steps = solve_pulses(params, device=self.solver_device, **self.solver)
        log.debug("split-step steps per sample: %s", n_steps.tolist())
        coarsest = min(resolutions)
        lost = out_of_band_fraction(a_out, self.solver["t_window_fs"], coarsest)
        if bool((lost > 1e-4).any()):
            log.warning(
                "%d of %d outputs have more than 1e-4 of their spectral energy above the Nyquist frequency of the "
                "%d-point grid (worst %.1e), so they alias when subsampled; a finer resolution avoids it",
                int((lost > 1e-4).sum()), len(lost), coarsest, float(lost.max()),
            )
        scalars = torch.stack(
            [params["length_mm"], params["mismatch_nm"], torch.log10(params["energy_fj"])], dim=1
        ).unsqueeze(-1)
        out = {}
        for s in resolutions:
            k = self.solve_resolution // s
            x = torch.cat([a0[:, None, ::k], scalars.expand(-1, -1, s)], dim=1)
            out[s] = (x.to(torch.complex64), a_out[:, None, ::k].to(torch.complex64))
        return out

    # ------------------------------------------------------------------ the plain .pt format
    def read_file(self, path: Path) -> tuple[Tensor, Tensor]:
        """``{"x": complex (N, 4, s), "y": complex (N, 1, s) or (N, s)}``; see the module docstring."""
        source = f"EM-wave data file {path}"
        d = load_pt(path, "EM-wave data file")
        check_keys(d, ["x", "y"], source)
        x, y = d["x"], as_fields(d["y"], 1)
        channels = ", ".join(["A(0,t)", *(f"{c} ({u})" for c, u in SCALAR_CHANNELS)])
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{source}: 'x' is {shape}; expected (N, {self.in_channels}, s) with channels [{channels}]"
            )
        if not isinstance(y, Tensor) or y.ndim != 3 or y.shape[1] != self.out_channels:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{source}: 'y' is {shape}; expected (N, 1, s) or (N, s): the output envelope A(L,t)")
        # the base check would make real data complex with a zero imaginary part: refuse it here
        _require_complex(x, y, source)
        scalars = x[:, 1:]
        if scalars.numel():
            spread = (scalars - scalars[..., :1]).abs().amax(dim=(0, 2)).tolist()
            scale = [max(1.0, float(scalars[:, i, 0].abs().max())) for i in range(len(spread))]
            varying = [SCALAR_CHANNELS[i][0] for i, v in enumerate(spread) if not v <= 1e-5 * scale[i]]
            if varying:
                raise ValueError(
                    f"{source}: input channel(s) {varying} vary along t, but channels 1-3 of 'x' hold the scalars "
                    f"{[c for c, _ in SCALAR_CHANNELS]} repeated along t; check the channel order [{channels}]"
                )
        return x, y


def _require_complex(x, y, source: str) -> None:
    for key, t in (("x", x), ("y", y)):
        if isinstance(t, Tensor) and not t.is_complex():
            raise ValueError(
                f"{source}: '{key}' has dtype {t.dtype}, but EM-wave fields are complex envelopes; store them as "
                f"complex64 or complex128 (e.g. torch.complex(real, imag))"
            )


def _range(name: str, lo_hi, *, positive: bool = False) -> tuple[float, float]:
    values = tuple(float(v) for v in lo_hi)
    if len(values) != 2 or not values[0] <= values[1] or (positive and values[0] <= 0):
        raise ValueError(
            f"{name}={list(lo_hi)} is invalid; give [low, high] with low <= high" + (" and low > 0" * positive)
        )
    return values
