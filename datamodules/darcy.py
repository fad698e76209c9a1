"""Darcy flow: permeability ``a`` -> pressure ``u`` with ``-div(a grad u) = 1`` on (0, 1)^2, ``u = 0`` on the boundary.

Two sources (see ``PDEDataModule`` for caching, checks, splits and normalisation):

* **files**, told apart by their suffix:

  - neuraloperator's ``.pt``: a dict with ``x`` (N, s, s) permeability (bool in its small 16x16 set) and ``y``
    (N, s, s) pressure, used on their own grid (one test set per file);
  - PDEBench's HDF5 (``.hdf5``/``.h5``, e.g. ``2D_DarcyFlow_beta1.0_Train.hdf5``; ``datamodules.pdebench``):
    ``nu`` (N, X, Y) the coefficient (input) and ``tensor`` (N, 1, X, Y) the solution (output) on a
    cell-centred 128x128 grid, read lazily and subsampled to ``resolution`` and each of ``test_resolutions``
    (every k-th cell, so they must divide the file's grid: 128, 64, 32, ...; PDEBench's equation is
    ``-div(nu grad u) = beta``, so its inputs differ from the generated ones below). Without test files,
    PDEBench's split: the first 10% of the file is the test set, the training samples are taken after it;
* **generated**: ``a = 12`` where a Gaussian random field ``g ~ N(0, (-Laplacian + 9 I)^-2)`` is >= 0 and ``3``
  elsewhere (the FNO paper's setting; ``datamodules.grf``), and ``u`` from the second-order finite-difference
  solver (``datamodules.solvers.darcy``). Both are computed on a ``solve_resolution`` grid and subsampled to each
  requested resolution, so every resolution sees the same samples from the same distribution.

Grids count nodes including the boundary (the FNO data's convention: 421 = 420 + 1), so a resolution ``s``
subsamples the solver grid by ``k`` when ``solve_resolution = (s - 1) k + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.base import Generated, PDEDataModule, as_fields
from datamodules.grf import sample_grf_2d
from datamodules.io import check_keys, load_pt
from datamodules.pdebench import PDEBenchFiles, dataset, grid_stride, is_pdebench, open_h5, read_rows
from datamodules.solvers.darcy import solve_darcy

__all__ = ["DarcyDataModule", "A_HIGH", "A_LOW"]

A_HIGH, A_LOW = 12.0, 3.0  # psi(g): permeability where g >= 0 and where g < 0
_PDEBENCH_LAYOUT = "2-D Darcy layout: 'nu' (N, X, Y) input, 'tensor' (N, 1, X, Y) output, x-/y-coordinate"


class DarcyDataModule(PDEBenchFiles, PDEDataModule):
    """Darcy flow in 2-D: one input channel (permeability), one output channel (pressure).

    Defaults: 1000 training samples on a 33x33 grid (900 train / 100 validation) and 100 test samples at 33x33
    and, zero-shot, 65x65, solved on 129x129; about 25 s of generation on a 2-core CPU, cached afterwards.

    Args:
        resolution: generated training grid, nodes per side including the boundary.
        test_resolutions: generated test grids (the same test samples at each).
        solve_resolution: grid the solver runs on; each resolution ``s`` must subsample it:
            ``(solve_resolution - 1) % (s - 1) == 0`` (e.g. 17, 33, 65 from 129).
        alpha: smoothness exponent of the Gaussian random field (FNO: 2).
        tau: inverse length scale of the Gaussian random field (FNO: 3).
        **kwargs: the arguments of ``PDEDataModule`` (train_file, test_files, n_train, n_test, data_dir,
            batch_size, test_batch_size, num_workers, val_fraction, seed, normalize).
    """

    name = "darcy"
    file_kind = "Darcy data file"
    n_dims = 2
    in_channels = 1
    out_channels = 1

    def __init__(
        self,
        resolution: int = 33,
        test_resolutions: Sequence[int] | None = (33, 65),
        solve_resolution: int = 129,
        alpha: float = 2.0,
        tau: float = 3.0,
        **kwargs,
    ) -> None:
        super().__init__(resolution=resolution, test_resolutions=test_resolutions, **kwargs)
        self.solve_resolution = solve_resolution
        self.alpha, self.tau = float(alpha), float(tau)
        for s in self.generated_resolutions():
            if s < 3 or s > solve_resolution or (solve_resolution - 1) % (s - 1):
                raise ValueError(
                    f"resolution {s} cannot be subsampled from solve_resolution={solve_resolution}: a grid of s nodes "
                    f"needs 3 <= s <= solve_resolution and (solve_resolution - 1) % (s - 1) == 0; e.g. resolutions "
                    f"17, 33, 65 with solve_resolution 129"
                )

    def generator_settings(self) -> dict[str, int | float | str]:
        return {
            "solve_resolution": self.solve_resolution,
            "alpha": self.alpha,
            "tau": self.tau,
            "a": f"{A_HIGH:g}/{A_LOW:g}",
            "f": 1.0,
            "scheme": "fd5-harmonic",
        }

    def generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        a = np.empty((len(rngs), self.solve_resolution, self.solve_resolution))
        u = np.empty_like(a)
        for i, rng in enumerate(rngs):
            g = sample_grf_2d(self.solve_resolution, rng, alpha=self.alpha, tau=self.tau)
            a[i] = np.where(g >= 0, A_HIGH, A_LOW)
            u[i] = solve_darcy(a[i], 1.0)
        out = {}
        for s in resolutions:
            k = (self.solve_resolution - 1) // (s - 1)
            out[s] = tuple(torch.from_numpy(v[:, None, ::k, ::k]).float() for v in (a, u))
        return out

    # ------------------------------------------------------------------ files
    def subsamples_files(self, path: Path) -> bool:
        return is_pdebench(path)

    def read_samples(self, path: Path, rows: slice, resolutions: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """PDEBench: ``nu`` -> ``tensor`` of the samples ``rows``, read at the grid ``resolutions`` need."""
        if not is_pdebench(path):
            return super().read_samples(path, rows, resolutions)
        with open_h5(path, "Darcy data file") as f:
            nu, u = self._pdebench_arrays(f, path)
            k = grid_stride(nu.shape[1], resolutions, f"Darcy data file {path}")
            every_k = (slice(None, None, k), slice(None, None, k))
            a = torch.from_numpy(read_rows(nu, rows, every_k))
            p = torch.from_numpy(read_rows(u, rows, (0, *every_k)))
        return a.unsqueeze(1), p.unsqueeze(1)

    def _pdebench_arrays(self, f, path: Path):
        source = f"Darcy data file {path}"
        nu = dataset(f, "nu", "(N, X, Y)", 3, source, _PDEBENCH_LAYOUT)
        u = dataset(f, "tensor", "(N, 1, X, Y)", 4, source, _PDEBENCH_LAYOUT)
        if u.shape[1] != 1 or u.shape[0] != nu.shape[0] or u.shape[2:] != nu.shape[1:]:
            raise ValueError(
                f"{source}: 'tensor' is {u.shape} but 'nu' is {nu.shape}; expected (N, 1, X, Y) and (N, X, Y) "
                f"({_PDEBENCH_LAYOUT})"
            )
        if nu.shape[1] != nu.shape[2]:
            raise ValueError(f"{source}: the grid {nu.shape[1:]} is not square; DarcyDataModule takes square grids")
        return nu, u

    def _pdebench_samples(self, f, path: Path):
        return self._pdebench_arrays(f, path)[0]

    def read_file(self, path: Path) -> tuple[Tensor, Tensor]:
        """neuraloperator's Darcy ``.pt``: ``{"x": (N, s, s), "y": (N, s, s)}`` (a channel axis of 1 is accepted)."""
        d = load_pt(path, "Darcy data file")
        check_keys(d, ["x", "y"], f"Darcy data file {path}")
        for key in ("x", "y"):
            t = d[key]
            if not isinstance(t, Tensor) or t.ndim not in (3, 4):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"Darcy data file {path}: '{key}' is {shape}; expected (N, s, s) in neuraloperator's format "
                    f"(or (N, 1, s, s))"
                )
        return as_fields(d["x"], 2), as_fields(d["y"], 2)
