"""Navier-Stokes (2-D vorticity form, unit torus): vorticity snapshots -> later vorticity snapshots.

    w_t + u . grad w = nu Delta w + f,   div u = 0,   f = 0.1 (sin 2 pi (x + y) + cos 2 pi (x + y)),

observed at the snapshots ``w(t_j)``, ``t_j = j * snapshot_interval``, ``j = 1, 2, ...`` (every unit of time by
default, as in the FNO data; the random initial condition ``w(0)`` is not a snapshot).

Tasks (``task``):

* ``"history"``: the first ``t_in`` snapshots -> the next ``t_out`` (``t_in`` input channels, ``t_out`` output
  channels; the FNO paper's setting, e.g. 10 -> 40 at ``nu = 1e-3`` and 10 -> 10 at ``nu = 1e-5``);
* ``"one_step"``: ``w(t_j) -> w(t_j+1)``, one channel each: every consecutive pair among the first
  ``t_in + t_out`` snapshots of a trajectory (``t_in + t_out - 1`` samples per trajectory, in trajectory order,
  so the validation split holds whole trajectories except at most one shared with training).

Two sources (``PDEDataModule`` does the caching, checks, splits and normalisation):

* **files** (``train_file`` and ``test_files``), told apart by their suffix:

  - the FNO paper's ``.mat`` (e.g. ``ns_V1e-3_N5000_T50.mat``; MATLAB v5, or v7.3 read lazily so that only the
    samples used are read): ``u`` (N, s, s, T), the snapshots ``t = 1..T``; ``n_train``/``n_test`` count
    trajectories;
  - neuraloperator's NS ``.pt`` (e.g. ``nsforcing_train_128.pt``): ``x`` and ``y`` (N, s, s) or (N, C, s, s),
    input/output pairs used as given; their channels must match the task (``one_step``: 1 and 1, ``history``:
    ``t_in`` and ``t_out``).

  - PDEBench's incompressible, inhomogeneously forced NS (``.h5``/``.hdf5``, e.g.
    ``ns_incom_inhom_2d_512-0.h5``; ``datamodules.pdebench``): ``velocity`` (N, T, X, Y, 2), ``particles``
    (N, T, X, Y, 1) a passive density, ``force`` (N, X, Y, 2), ``t`` (N, T); ``n_train``/``n_test`` count
    trajectories. **The model sees vorticity, computed from the velocity**, so the task is the same as for the
    other sources: ``w = d(v_y)/dx - d(v_x)/dy`` by second-order central differences on the file's full grid
    (one-sided at the walls; PDEBench's domain is ``[0, X] x [0, Y]`` with unit cells, so ``w`` is in units of
    the inverse time step), then subsampled. The snapshots are the stored frames ``0, time_stride, ...``. The
    forcing differs per sample and acts through the density (PDEBench adds ``dt * particles * force`` to the
    velocity), so the input also holds, after the vorticity channels, three channels that make the map
    well posed: the density at the last input snapshot and the force's two components (``in_channels =
    t_in + 3``, or 4 for ``one_step``). Without test files, PDEBench's split: the first 10% of the file's
    trajectories are the test set, the training trajectories are taken after them.

  Files are subsampled to ``resolution`` (training) and to each of ``test_resolutions`` (every test file), which
  must divide the file's grid. A file gives its first ``n_train`` / ``n_test`` samples, except a test file that is
  also the training file (the FNO ``.mat`` holds both): it gives its *last* ``n_test``, which must not overlap the
  training samples.
* **generated** (no files): ``w0 ~ N(0, grf_scale (-Delta + grf_tau^2 I)^-grf_alpha)`` with zero mean
  (``datamodules.grf_periodic``), solved by ``datamodules.solvers.navier_stokes`` (pseudo-spectral with 2/3
  dealiasing, ETDRK4) on ``solve_resolution``^2 points and subsampled, so test sets at several resolutions hold the
  same trajectories. The cache keeps whole trajectories (``x`` = ``w0``, ``y`` = the ``t_in + t_out``
  snapshots), so both tasks with the same ``t_in + t_out`` share it.

``grf_scale`` defaults to 686 = 2 * 7^3, the covariance of the FNO generator that made the public data: the
paper writes ``N(0, 7^(3/2) (-Delta + 49 I)^-2.5)``, but its code uses ``7^(3/2)`` as the factor ``sigma`` of the
standard deviation and its sampling doubles each mode's variance. Read literally (``grf_scale: 18.52``), the
initial vorticity is six times weaker, and at ``nu = 1e-3`` the snapshots of different samples differ by only
~5% of their size at t = 10 (the flow is mostly the deterministic response to ``f``), against ~30% with 686.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from datamodules.base import Generated, PDEDataModule, check_positive_int
from datamodules.grf_periodic import sample_grf_periodic
from datamodules.io import check_keys, load_pt
from datamodules.pdebench import PDEBenchFiles, dataset, grid_stride, is_pdebench, open_h5, read_rows
from datamodules.public_formats import load_mat, mat_shape
from datamodules.solvers.navier_stokes import fno_forcing, solve_navier_stokes
from datamodules.solvers.spectral import solver_threads

log = logging.getLogger(__name__)

__all__ = ["NavierStokesDataModule", "vorticity"]

TASKS = ("history", "one_step")
#: input channels after the vorticity snapshots for PDEBench files (see the module docstring)
PDEBENCH_EXTRA_CHANNELS = ("density at the last input snapshot", "force x", "force y")
_PDEBENCH_LAYOUT = (
    "incompressible NS layout: 'velocity' (N, T, X, Y, 2), 'particles' (N, T, X, Y, 1), 'force' (N, X, Y, 2), 't'"
)


def vorticity(velocity: np.ndarray) -> np.ndarray:
    """``d(v_y)/dx - d(v_x)/dy`` of velocities ``(..., X, Y, 2)`` on a unit-spaced grid (second-order central
    differences, second-order one-sided at the edges), shape ``(..., X, Y)``."""
    dvy_dx = np.gradient(velocity[..., 1], axis=-2, edge_order=2)
    dvx_dy = np.gradient(velocity[..., 0], axis=-1, edge_order=2)
    return dvy_dx - dvx_dy


class NavierStokesDataModule(PDEBenchFiles, PDEDataModule):
    """2-D Navier-Stokes vorticity on the unit torus; batches ``x`` (B, t_in or 1, s, s), ``y`` (B, t_out or 1, s, s).

    Defaults: 1000 training (900 train / 100 validation) and 200 test trajectories of 20 snapshots at 64x64,
    ``nu = 1e-3``; about 3-5 minutes of generation on a 2-core CPU (4-7 trajectories/s), cached afterwards.

    Args:
        task: ``"history"`` (``t_in`` snapshots -> the next ``t_out``) or ``"one_step"`` (``w(t) -> w(t + 1)``).
        t_in: input snapshots of the history task.
        t_out: output snapshots of the history task. Either task uses the first ``t_in + t_out`` snapshots of
            each trajectory.
        n_train: training trajectories (``.pt`` files: samples), validation included.
        n_test: test trajectories (``.pt`` files: samples) per test set.
        resolution: grid points per side of the training set (``x_j = j / s``); must divide
            ``solve_resolution`` or, for files, the file's grid.
        test_resolutions: grids of the test sets, the same trajectories at each; default ``[resolution]``.
        solve_resolution: grid the solver runs on (even, >= 8); 64 resolves ``nu = 1e-3`` to ~5e-4 relative.
        viscosity: ``nu >= 0`` (the FNO sets: 1e-3, 1e-4, 1e-5; smaller needs finer grids).
        forcing_amplitude: factor of the FNO forcing ``sin 2 pi (x + y) + cos 2 pi (x + y)`` (0: unforced).
        snapshot_interval: time between snapshots.
        grf_scale: factor of the initial vorticity's covariance ``scale (-Delta + tau^2 I)^-alpha`` (see the
            module docstring for the default).
        grf_tau: its ``tau``.
        grf_alpha: its ``alpha`` (> 1).
        dt: solver time step for every sample; None chooses one per sample and snapshot interval from the CFL
            condition (``datamodules.solvers.navier_stokes``).
        time_stride: PDEBench files: the snapshots are every ``time_stride``-th stored frame, from frame 0.
        solver_device: device that generates the data; default a GPU when there is one, else the CPU (not part
            of the cache key: the solve is in float64 and stored in float32, so devices agree).
        **kwargs: the arguments of ``PDEDataModule`` (train_file, test_files, data_dir, batch_size,
            test_batch_size, num_workers, val_fraction, seed, normalize).
    """

    name = "navier_stokes"
    file_kind = "Navier-Stokes data file"
    n_dims = 2
    in_channels = 10
    out_channels = 10
    generate_chunk = 32

    def __init__(
        self,
        task: Literal["history", "one_step"] = "history",
        t_in: int = 10,
        t_out: int = 10,
        n_train: int = 1000,
        n_test: int = 200,
        resolution: int = 64,
        test_resolutions: Sequence[int] | None = None,
        solve_resolution: int = 64,
        viscosity: float = 1e-3,
        forcing_amplitude: float = 0.1,
        snapshot_interval: float = 1.0,
        grf_scale: float = 686.0,
        grf_tau: float = 7.0,
        grf_alpha: float = 2.5,
        dt: float | None = None,
        time_stride: int = 1,
        solver_device: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            n_train=n_train, n_test=n_test, resolution=resolution, test_resolutions=test_resolutions, **kwargs
        )
        if task not in TASKS:
            raise ValueError(f"task={task!r} is invalid; use one of {list(TASKS)}")
        for arg, value in (("t_in", t_in), ("t_out", t_out)):
            check_positive_int(arg, value)
        if not isinstance(solve_resolution, int) or solve_resolution < 8 or solve_resolution % 2:
            raise ValueError(f"solve_resolution={solve_resolution!r} is invalid; use an even integer >= 8, e.g. 64")
        if not viscosity >= 0 or not snapshot_interval > 0 or not grf_scale > 0:
            raise ValueError(
                f"viscosity={viscosity!r}, snapshot_interval={snapshot_interval!r}, grf_scale={grf_scale!r} are "
                f"invalid; use viscosity >= 0, snapshot_interval > 0 and grf_scale > 0"
            )
        if not grf_alpha > 1 or not grf_tau >= 0:
            raise ValueError(
                f"grf_alpha={grf_alpha!r}, grf_tau={grf_tau!r} do not give the initial vorticity a finite variance "
                f"in 2-D; use grf_alpha > 1 and grf_tau >= 0"
            )
        if dt is not None and not dt > 0:
            raise ValueError(f"dt={dt!r} is invalid; use a step > 0, or null for the automatic CFL step")
        self.task = task
        self.t_in, self.t_out = t_in, t_out
        check_positive_int("time_stride", time_stride)
        self.time_stride = time_stride
        self.pdebench = self.train_file is not None and is_pdebench(self.train_file)
        extra = len(PDEBENCH_EXTRA_CHANNELS) if self.pdebench else 0
        self.in_channels = (t_in if task == "history" else 1) + extra
        self.out_channels = t_out if task == "history" else 1
        self.solve_resolution = solve_resolution
        self.viscosity = float(viscosity)
        self.forcing_amplitude = float(forcing_amplitude)
        self.snapshot_interval = float(snapshot_interval)
        self.grf = {"scale": float(grf_scale), "tau": float(grf_tau), "alpha": float(grf_alpha)}
        self.dt = dt
        self.solver_device = solver_device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.check_generated_resolutions(solve_resolution)

    @property
    def n_snapshots(self) -> int:
        """Snapshots per trajectory that either task uses: ``t_in + t_out``."""
        return self.t_in + self.t_out

    # ================================================================== snapshots -> samples of the task
    def task_fields(self, snapshots: Tensor, source: str) -> tuple[Tensor, Tensor]:
        """Trajectories ``(N, T, s, s)`` of the snapshots ``t = 1..T`` (``T >= t_in + t_out``) -> ``(x, y)``."""
        if not isinstance(snapshots, Tensor) or snapshots.ndim != 4:
            shape = tuple(snapshots.shape) if isinstance(snapshots, Tensor) else type(snapshots).__name__
            raise ValueError(f"{source}: the snapshots are {shape}; expected (N, T, s, s)")
        if snapshots.shape[1] < self.n_snapshots:
            raise ValueError(
                f"{source} has {snapshots.shape[1]} snapshots per trajectory but t_in + t_out = {self.n_snapshots} "
                f"are needed; lower t_in/t_out"
            )
        w = snapshots[:, : self.n_snapshots]
        if self.task == "history":
            return w[:, : self.t_in], w[:, self.t_in:]
        s = w.shape[-2:]
        return w[:, :-1].reshape(-1, 1, *s), w[:, 1:].reshape(-1, 1, *s)

    # ================================================================== generation
    def generator_settings(self) -> dict[str, int | float | str | bool]:
        return {
            "solve_resolution": self.solve_resolution,
            "viscosity": self.viscosity,
            "forcing": f"{self.forcing_amplitude:g}*(sin+cos)(2pi(x+y))",
            "n_snapshots": self.n_snapshots,
            "snapshot_interval": self.snapshot_interval,
            **{f"grf_{k}": v for k, v in self.grf.items()},
            "grf_zero_mean": True,
            "dt": "auto" if self.dt is None else float(self.dt),
            "scheme": "fourier-2/3-etdrk4",
        }

    def generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        """``{s: (w0 (B, 1, s, s), snapshots (B, t_in + t_out, s, s))}``: whole trajectories, for either task."""
        with solver_threads(self.solver_device):  # the sampling too: idle threads of a pool also cost
            return self._generate(rngs, resolutions)

    def _generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        n = self.solve_resolution
        w0 = torch.cat([
            sample_grf_periodic(
                1, n, 2, torch.Generator().manual_seed(int(rng.integers(2**63))), **self.grf, zero_mean=True
            )
            for rng in rngs
        ])
        forcing = fno_forcing(n, self.forcing_amplitude) if self.forcing_amplitude else None
        traj = solve_navier_stokes(
            w0.to(self.solver_device), self.viscosity, forcing=forcing, n_snapshots=self.n_snapshots,
            interval=self.snapshot_interval, dt=self.dt,
        ).cpu().float()
        out = {}
        for s in resolutions:
            k = n // s
            w = traj[..., ::k, ::k]
            out[s] = (w[:, :1].contiguous(), w[:, 1:].contiguous())
        return out

    # ================================================================== files
    def subsamples_files(self, path: Path) -> bool:
        return True  # periodic grids, x_j = j / s

    def from_cache(self, x: Tensor, y: Tensor, source: str) -> tuple[Tensor, Tensor]:
        return self.task_fields(y, source)  # the cache holds whole trajectories (y = the snapshots)

    def _mat(self, path: Path) -> bool:
        return Path(path).suffix.lower() == ".mat"

    @property
    def sample_unit(self) -> str:
        trajectories = self.train_file and (self._mat(Path(self.train_file)) or self.pdebench)
        return "trajectories" if trajectories else "samples"

    def sample_count(self, path: Path) -> int:
        if is_pdebench(path) or not self._mat(path):
            return super().sample_count(path)  # PDEBench (PDEBenchFiles) or .pt
        shape = mat_shape(path, "u", "Navier-Stokes data file")
        if len(shape) != 4 or shape[1] != shape[2]:
            raise ValueError(
                f"Navier-Stokes data file {path}: 'u' is {shape}; expected (N, s, s, T), the vorticity snapshots "
                f"t = 1..T"
            )
        return shape[0]

    def read_samples(self, path: Path, rows: slice, resolutions: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """``.mat``: the task's pairs of the trajectories ``rows`` (v7.3 reads only those); ``.pt``: the pairs."""
        if is_pdebench(path):
            return self._read_pdebench(path, rows, resolutions)
        if not self._mat(path):
            return super().read_samples(path, rows, resolutions)
        u = torch.from_numpy(load_mat(path, ["u"], "Navier-Stokes data file", samples=rows)["u"])
        return self.task_fields(u.permute(0, 3, 1, 2), f"Navier-Stokes data file {path}")

    def _pdebench_arrays(self, f, path: Path):
        source = f"Navier-Stokes data file {path}"
        velocity = dataset(f, "velocity", "(N, T, X, Y, 2)", 5, source, _PDEBENCH_LAYOUT)
        particles = dataset(f, "particles", "(N, T, X, Y, 1)", 5, source, _PDEBENCH_LAYOUT)
        force = dataset(f, "force", "(N, X, Y, 2)", 4, source, _PDEBENCH_LAYOUT)
        n, _, nx, ny, components = velocity.shape
        if components != 2 or nx != ny:
            raise ValueError(f"{source}: 'velocity' is {velocity.shape}; expected (N, T, s, s, 2) ({_PDEBENCH_LAYOUT})")
        if particles.shape != (*velocity.shape[:4], 1) or force.shape != (n, nx, ny, 2):
            raise ValueError(
                f"{source}: 'particles' {particles.shape} and 'force' {force.shape} do not match 'velocity' "
                f"{velocity.shape}; expected (N, T, X, Y, 1) and (N, X, Y, 2) ({_PDEBENCH_LAYOUT})"
            )
        return velocity, particles, force

    def _pdebench_samples(self, f, path: Path):
        return self._pdebench_arrays(f, path)[0]

    def _read_pdebench(self, path: Path, rows: slice, resolutions: Sequence[int] | None) -> tuple[Tensor, Tensor]:
        """The task's pairs of the trajectories ``rows``: vorticity from the velocity on the full grid, one
        trajectory at a time, then every k-th point; the density at the last input snapshot and the force."""
        source = f"Navier-Stokes data file {path}"
        with open_h5(path, "Navier-Stokes data file") as f:
            velocity, particles, force = self._pdebench_arrays(f, path)
            frames = list(range(0, self.n_snapshots * self.time_stride, self.time_stride))
            if frames[-1] >= velocity.shape[1]:
                raise ValueError(
                    f"{source} stores {velocity.shape[1]} frames but t_in + t_out = {self.n_snapshots} snapshots "
                    f"every time_stride={self.time_stride} frames need {frames[-1] + 1}; lower t_in/t_out or "
                    f"time_stride"
                )
            k = grid_stride(velocity.shape[2], resolutions, source)
            every_k = (slice(None, None, k), slice(None, None, k))
            w = read_rows(velocity, rows, (frames,), transform=lambda v: vorticity(v)[:, ::k, ::k])
            density = read_rows(particles, rows, (frames, *every_k, 0))
            forcing = read_rows(force, rows, every_k)
        w, density = torch.from_numpy(w), torch.from_numpy(density)
        forcing = torch.from_numpy(forcing).permute(0, 3, 1, 2)  # (n, 2, s, s): f_x, f_y
        if self.task == "history":
            x = torch.cat([w[:, : self.t_in], density[:, self.t_in - 1 : self.t_in], forcing], dim=1)
            return x, w[:, self.t_in : self.n_snapshots]
        pairs = [
            torch.cat([w[:, j : j + 1], density[:, j : j + 1], forcing], dim=1) for j in range(self.n_snapshots - 1)
        ]
        x = torch.stack(pairs, dim=1).flatten(0, 1)  # trajectory-major, as for the other sources
        return x, w[:, 1 : self.n_snapshots].reshape(-1, 1, *w.shape[-2:])

    def read_file(self, path: Path) -> tuple[Tensor, Tensor]:
        """A ``.mat`` (FNO) file's trajectories as the task's ``(x, y)``, or a ``.pt`` (neuraloperator) file's pairs."""
        if self._mat(path):
            return self.read_samples(path, slice(0, self.sample_count(path)))
        source = f"Navier-Stokes data file {path}"
        d = load_pt(path, "Navier-Stokes data file")
        check_keys(d, ["x", "y"], source)
        pair = []
        for key, t, channels in (("x", d["x"], self.in_channels), ("y", d["y"], self.out_channels)):
            if not isinstance(t, Tensor) or t.ndim not in (3, 4):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{source}: '{key}' is {shape}; expected (N, s, s) or (N, C, s, s)")
            t = t.unsqueeze(1) if t.ndim == 3 else t
            if t.shape[1] != channels:
                raise ValueError(
                    f"{source}: '{key}' has {t.shape[1]} channel(s) but task={self.task} (t_in={self.t_in}, "
                    f"t_out={self.t_out}) needs {channels}; single snapshots suit task=one_step"
                )
            pair.append(t)
        return pair[0], pair[1]
