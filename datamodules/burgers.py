"""Burgers' equation (1-D, periodic): initial condition ``u0`` -> the solution at ``t_final`` or its trajectory.

    u_t + u u_x = nu u_xx on [0, 1) periodic,  t in (0, t_final],  nu = 0.01 by default (the FNO set: 0.1).

Tasks (``task``):

* ``"final"``: ``u0 -> u(., t_final)``, one channel in and out (the benchmark of the FNO and Tensor-GaLore papers);
* ``"trajectory"``: ``u0 -> u`` at the ``T + 1`` equally spaced times ``0, t_final / T, ..., t_final``
  (``T = trajectory_steps``; neuraloperator's Burgers format, whose first output channel is ``u0`` itself), so
  ``out_channels = T + 1``.

Two sources (``PDEDataModule`` does the caching, checks, splits and normalisation):

* **files** (``train_file`` and ``test_files``), told apart by their suffix:

  - neuraloperator's ``.pt``: a dict with ``x`` (N, s) initial conditions, ``y`` (N, T + 1, s) the trajectory
    (``(N, s)`` is read as the final time) and optionally ``visc`` (a warning if it differs from ``viscosity``);
  - the FNO paper's ``.mat`` (e.g. ``burgers_data_R10.mat``; MATLAB v5 or v7.3): ``a`` (N, s) and ``u`` (N, s),
    final task only.

  - PDEBench's HDF5 (``.hdf5``/``.h5``, e.g. ``1D_Burgers_Sols_Nu0.001.hdf5``; ``datamodules.pdebench``):
    ``tensor`` (N, T, X) the solutions ``u(t_i, x)`` (t from 0 to 2 on 201 times in PDEBench), read lazily: only
    the samples, the times and the grid points used. ``x`` is ``u(t_0)``; task ``final``: ``y`` is the last
    time; task ``trajectory``: ``y`` is ``u`` at ``time_indices`` (default: ``trajectory_steps + 1`` equally
    spaced times from ``t_0`` to the last, so ``trajectory_steps`` must divide ``T - 1``). Without test files,
    PDEBench's split: the first 10% of the file is the test set, the training samples are taken after it.

  Files are subsampled to ``resolution`` (training) and to each of ``test_resolutions`` (every test file), which
  must divide the file's grid (e.g. 8192 -> 1024). A file gives its first ``n_train`` / ``n_test`` samples, except
  a test file that is also the training file (the FNO ``.mat`` holds both): it gives its *last* ``n_test``, and
  they must not overlap the training samples.
* **generated** (no files): ``u0 ~ N(0, grf_scale (-Delta + grf_tau^2 I)^-grf_alpha)`` with zero mean
  (``datamodules.grf_periodic``; the defaults are the FNO paper's formula ``625 (-Delta + 25 I)^-2``), solved by
  ``datamodules.solvers.burgers`` (pseudo-spectral with 2/3 dealiasing, ETDRK4) on ``solve_resolution`` points and
  subsampled to every resolution, so test sets at several resolutions hold the same samples. The stored ``x`` is
  ``u0`` projected onto the solver's dealiased modes, exactly what was evolved.
"""

from __future__ import annotations

import logging
import re
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
from datamodules.public_formats import load_mat
from datamodules.solvers.burgers import solve_burgers
from datamodules.solvers.spectral import solver_threads

log = logging.getLogger(__name__)

__all__ = ["BurgersDataModule"]

TASKS = ("final", "trajectory")
_PDEBENCH_LAYOUT = "1-D Burgers layout: 'tensor' (N, T, X) = u(t, x), 'x-coordinate' (X), 't-coordinate'"


class BurgersDataModule(PDEBenchFiles, PDEDataModule):
    """Burgers' equation, 1-D periodic; batches ``x`` (B, 1, s) and ``y`` (B, 1 or T + 1, s).

    Defaults: 1000 training (900 train / 100 validation) and 200 test samples at 128 points, solved on 1024;
    about 15 s of generation on a 2-core CPU (~80 samples/s), cached afterwards.

    Args:
        task: ``"final"`` (``u0 -> u(t_final)``) or ``"trajectory"`` (``u0 -> u`` at ``trajectory_steps + 1``
            equally spaced times from 0 to ``t_final``).
        trajectory_steps: ``T``, the time intervals of the trajectory task (``out_channels = T + 1``).
        time_indices: PDEBench files, task ``trajectory``: the stored time indices that form ``y`` (e.g.
            ``[0, 50, 100, 150, 200]``); ``out_channels = len(time_indices)``. None: ``trajectory_steps + 1``
            equally spaced ones.
        n_train: training samples (validation included): the first of the file, or how many to generate.
        n_test: samples per test set.
        resolution: grid points of the training set (``x_j = j / s``); must divide ``solve_resolution`` or, for
            files, the file's grid.
        test_resolutions: grids of the test sets, the same samples at each; default ``[resolution]``.
        solve_resolution: grid the solver runs on (even, >= 8).
        viscosity: ``nu > 0``.
        t_final: final time.
        grf_scale: factor of the initial condition's covariance ``scale (-Delta + tau^2 I)^-alpha``.
        grf_tau: its ``tau``.
        grf_alpha: its ``alpha`` (> 1/2).
        dt: solver time step for every sample; None chooses one per sample from the CFL condition
            (``datamodules.solvers.burgers``).
        solver_device: device that generates the data; default a GPU when there is one, else the CPU (not part
            of the cache key: the solve is in float64 and stored in float32, so devices agree).
        **kwargs: the arguments of ``PDEDataModule`` (train_file, test_files, data_dir, batch_size,
            test_batch_size, num_workers, val_fraction, seed, normalize).
    """

    name = "burgers"
    file_kind = "Burgers data file"
    n_dims = 1
    in_channels = 1
    out_channels = 1
    generate_chunk = 64

    def __init__(
        self,
        task: Literal["final", "trajectory"] = "final",
        trajectory_steps: int = 10,
        time_indices: Sequence[int] | None = None,
        n_train: int = 1000,
        n_test: int = 200,
        resolution: int = 128,
        test_resolutions: Sequence[int] | None = None,
        solve_resolution: int = 1024,
        viscosity: float = 0.01,
        t_final: float = 1.0,
        grf_scale: float = 625.0,
        grf_tau: float = 5.0,
        grf_alpha: float = 2.0,
        dt: float | None = None,
        solver_device: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            n_train=n_train, n_test=n_test, resolution=resolution, test_resolutions=test_resolutions, **kwargs
        )
        if task not in TASKS:
            raise ValueError(f"task={task!r} is invalid; use one of {list(TASKS)}")
        check_positive_int("trajectory_steps", trajectory_steps)
        if not isinstance(solve_resolution, int) or solve_resolution < 8 or solve_resolution % 2:
            raise ValueError(f"solve_resolution={solve_resolution!r} is invalid; use an even integer >= 8, e.g. 1024")
        for arg, value in (("viscosity", viscosity), ("t_final", t_final), ("grf_scale", grf_scale)):
            if not value > 0:
                raise ValueError(f"{arg}={value!r} is invalid; it must be > 0")
        if not grf_alpha > 0.5 or not grf_tau >= 0:
            raise ValueError(
                f"grf_alpha={grf_alpha!r}, grf_tau={grf_tau!r} do not give the initial condition a finite variance; "
                f"use grf_alpha > 0.5 and grf_tau >= 0"
            )
        if dt is not None and not dt > 0:
            raise ValueError(f"dt={dt!r} is invalid; use a step > 0, or null for the automatic CFL step")
        self.task = task
        if time_indices is not None:
            time_indices = [int(t) for t in time_indices]
            if task != "trajectory" or self.train_file is None or not is_pdebench(self.train_file):
                raise ValueError(
                    f"time_indices={time_indices} applies to task=trajectory on PDEBench .hdf5 files only; remove it, "
                    f"or use trajectory_steps"
                )
            if not time_indices or any(t < 0 for t in time_indices) or len(set(time_indices)) != len(time_indices):
                raise ValueError(f"time_indices={time_indices} is invalid; give distinct stored time indices >= 0")
        self.time_indices = time_indices
        self.trajectory_steps = trajectory_steps
        self.out_channels = 1 if task == "final" else len(time_indices or range(trajectory_steps + 1))
        self.solve_resolution = solve_resolution
        self.viscosity, self.t_final = float(viscosity), float(t_final)
        self.grf = {"scale": float(grf_scale), "tau": float(grf_tau), "alpha": float(grf_alpha)}
        self.dt = dt
        self.solver_device = solver_device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.check_generated_resolutions(solve_resolution)

    @property
    def n_intervals(self) -> int:
        """Time intervals of the generated trajectories (1 for the final task)."""
        return 1 if self.task == "final" else self.trajectory_steps

    # ================================================================== generation
    def generator_settings(self) -> dict[str, int | float | str | bool]:
        return {
            "solve_resolution": self.solve_resolution,
            "viscosity": self.viscosity,
            "t_final": self.t_final,
            "n_intervals": self.n_intervals,
            **{f"grf_{k}": v for k, v in self.grf.items()},
            "grf_zero_mean": True,
            "dt": "auto" if self.dt is None else float(self.dt),
            "scheme": "fourier-2/3-etdrk4",
        }

    def generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        with solver_threads(self.solver_device):  # the sampling too: idle threads of a pool also cost
            return self._generate(rngs, resolutions)

    def _generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        u0 = torch.cat([
            sample_grf_periodic(
                1, self.solve_resolution, 1, torch.Generator().manual_seed(int(rng.integers(2**63))),
                **self.grf, zero_mean=True,
            )
            for rng in rngs
        ])
        traj = solve_burgers(
            u0.to(self.solver_device), self.viscosity, t_final=self.t_final, n_intervals=self.n_intervals,
            dt=self.dt,
        ).cpu().float()
        out = {}
        for s in resolutions:
            k = self.solve_resolution // s
            y = traj[:, -1:, ::k] if self.task == "final" else traj[:, :, ::k]
            out[s] = (traj[:, :1, ::k].contiguous(), y.contiguous())
        return out

    # ================================================================== files
    def subsamples_files(self, path: Path) -> bool:
        return True  # periodic grids, x_j = j / s

    def read_samples(self, path: Path, rows: slice, resolutions: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """PDEBench: ``u(t_0)`` and the task's times of the samples ``rows``, read at the grid ``resolutions`` need."""
        if not is_pdebench(path):
            return super().read_samples(path, rows, resolutions)
        source = f"Burgers data file {path}"
        with open_h5(path, "Burgers data file") as f:
            ds = self._pdebench_tensor(f, path)
            times = self._pdebench_times(ds.shape[1], source)
            stored = sorted({0, *times})  # an HDF5 selection takes increasing indices
            k = grid_stride(ds.shape[2], resolutions, source)
            u = torch.from_numpy(read_rows(ds, rows, (stored, slice(None, None, k))))
        position = {t: i for i, t in enumerate(stored)}
        return u[:, :1], u[:, [position[t] for t in times]]

    def _pdebench_tensor(self, f, path: Path):
        source = f"Burgers data file {path}"
        ds = dataset(f, "tensor", "(N, T, X)", 3, source, _PDEBENCH_LAYOUT)
        if "x-coordinate" in f and f["x-coordinate"].shape[-1] != ds.shape[2]:
            raise ValueError(
                f"{source}: 'x-coordinate' has {f['x-coordinate'].shape[-1]} points but 'tensor' {ds.shape} has "
                f"{ds.shape[2]}; the file does not follow PDEBench's layout {_PDEBENCH_LAYOUT}"
            )
        nu = re.search(r"_Nu([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)", Path(path).stem)
        if nu and not np.isclose(float(nu.group(1)), self.viscosity, rtol=1e-6, atol=0.0):
            log.warning("%s is named for nu=%s but viscosity=%g: the file is used as it is", source, nu.group(1),
                        self.viscosity)
        return ds

    _pdebench_samples = _pdebench_tensor

    def _pdebench_times(self, n_times: int, source: str) -> list[int]:
        """The stored time indices that form ``y``."""
        if self.task == "final":
            return [n_times - 1]
        if self.time_indices is not None:
            outside = [t for t in self.time_indices if t >= n_times]
            if outside:
                raise ValueError(
                    f"{source} stores {n_times} times (indices 0..{n_times - 1}) but time_indices holds {outside}"
                )
            return list(self.time_indices)
        if (n_times - 1) % self.trajectory_steps:
            raise ValueError(
                f"{source} stores {n_times} times, which trajectory_steps={self.trajectory_steps} does not split into "
                f"equal steps; use a divisor of {n_times - 1} (e.g. 10 for 201 times), or give time_indices"
            )
        step = (n_times - 1) // self.trajectory_steps
        return list(range(0, n_times, step))

    def read_file(self, path: Path) -> tuple[Tensor, Tensor]:
        """A ``.pt`` (neuraloperator) or ``.mat`` (FNO) file as ``(x (N, 1, s), y (N, out_channels, s))``."""
        source = f"Burgers data file {path}"
        if Path(path).suffix.lower() == ".mat":
            if self.task != "final":
                raise ValueError(
                    f"{source} holds only the final time (a, u), but task=trajectory needs trajectories: use "
                    f"neuraloperator's .pt format, or task=final"
                )
            d = load_mat(path, ["a", "u"], "Burgers data file")
            x, y = torch.from_numpy(d["a"]), torch.from_numpy(d["u"])
        else:
            d = load_pt(path, "Burgers data file")
            check_keys(d, ["x", "y"], source)
            x, y = d["x"], d["y"]
            if "visc" in d:
                visc = float(torch.as_tensor(d["visc"]).flatten()[0])
                if not np.isclose(visc, self.viscosity, rtol=1e-6, atol=0.0):
                    log.warning("%s has visc=%g but viscosity=%g: the file is used as it is", source, visc,
                                self.viscosity)
        for key, t, shapes in (("x", x, "(N, s)"), ("y", y, "(N, T + 1, s) or (N, s)")):
            if not isinstance(t, Tensor) or t.ndim not in ((2,) if key == "x" else (2, 3)):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{source}: '{key}' is {shape}; expected {shapes}")
        if self.task == "final":
            return x.unsqueeze(1), (y[:, -1] if y.ndim == 3 else y).unsqueeze(1)
        times = 1 if y.ndim == 2 else y.shape[1]
        if times != self.out_channels:
            fix = f"set trajectory_steps={times - 1}" if times > 1 else "it holds one time only: use task=final"
            raise ValueError(
                f"{source}: 'y' has {times} time(s) but task=trajectory with trajectory_steps="
                f"{self.trajectory_steps} needs {self.out_channels}; {fix}"
            )
        return x.unsqueeze(1), y
