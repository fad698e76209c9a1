"""Darcy flow: permeability ``a`` -> pressure ``u`` with ``-div(a grad u) = 1`` on (0, 1)^2, ``u = 0`` on the boundary.

Two sources (see ``PDEDataModule`` for caching, checks, splits and normalisation):

* **files** in neuraloperator's ``.pt`` format: a dict with ``x`` (N, s, s) permeability (bool in its small
  16x16 set) and ``y`` (N, s, s) pressure;
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
from datamodules.solvers.darcy import solve_darcy

__all__ = ["DarcyDataModule", "A_HIGH", "A_LOW"]

A_HIGH, A_LOW = 12.0, 3.0  # psi(g): permeability where g >= 0 and where g < 0


class DarcyDataModule(PDEDataModule):
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
