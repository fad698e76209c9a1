"""Darcy flow: permeability ``a`` -> pressure ``u`` with ``-div(a grad u) = 1``, ``u = 0`` on the boundary.

Two sources of data:

* **files** in neuraloperator's ``.pt`` format (``train_file``, ``test_files``): a dict with ``x`` (N, s, s)
  permeability (bool in neuraloperator's small set) and ``y`` (N, s, s) pressure;
* **generated** (no files given): ``a = 12`` where a Gaussian random field ``g ~ N(0, (-Laplacian + 9 I)^-2)``
  is >= 0 and ``3`` elsewhere (the FNO paper's setting; ``datamodules.grf``), and ``u`` from the second-order
  finite-difference solver (``datamodules.solvers.darcy``) on a ``solve_resolution`` grid, subsampled to each
  requested resolution. Grids count nodes including the boundary, so a resolution ``s`` needs
  ``(solve_resolution - 1) % (s - 1) == 0``. Test sets at several resolutions hold the *same* samples
  (zero-shot super-resolution). Generation runs in ``prepare_data`` and is cached under ``data_dir`` in the same
  ``.pt`` format, keyed by every parameter that changes the data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.base import PDEDataModule, as_fields, check_keys, load_pt, save_pt_atomic
from datamodules.grf import sample_grf_2d
from datamodules.solvers.darcy import solve_darcy

log = logging.getLogger(__name__)

__all__ = ["DarcyDataModule", "generate_darcy"]

A_HIGH, A_LOW = 12.0, 3.0


def generate_darcy(
    n_samples: int,
    solve_resolution: int,
    resolutions: list[int],
    rng: np.random.Generator,
    *,
    alpha: float = 2.0,
    tau: float = 3.0,
    progress: str | None = None,
) -> dict[int, dict[str, Tensor]]:
    """``{s: {"x": a (N, s, s), "y": u (N, s, s)}}`` for every resolution ``s``, from one fine solve per sample."""
    points = np.linspace(0.0, 1.0, solve_resolution)
    steps = {s: (solve_resolution - 1) // (s - 1) for s in resolutions}
    out = {s: {"x": torch.empty(n_samples, s, s), "y": torch.empty(n_samples, s, s)} for s in resolutions}
    chunk = 64
    with tqdm(total=n_samples, desc=progress or "Darcy", disable=progress is None, unit="sample") as bar:
        for start in range(0, n_samples, chunk):
            g = sample_grf_2d(min(chunk, n_samples - start), points, rng, alpha=alpha, tau=tau)
            for j, field in enumerate(g):
                a = np.where(field >= 0, A_HIGH, A_LOW)
                u = solve_darcy(a, 1.0)
                for s, k in steps.items():
                    out[s]["x"][start + j] = torch.from_numpy(a[::k, ::k])
                    out[s]["y"][start + j] = torch.from_numpy(u[::k, ::k])
                bar.update(1)
    return out


class DarcyDataModule(PDEDataModule):
    """Darcy flow, 2-D, one input channel (permeability) and one output channel (pressure).

    Args:
        train_file: neuraloperator-format ``.pt`` training file; None generates the data.
        test_files: neuraloperator-format ``.pt`` test files (one test dataloader each, e.g. several
            resolutions); None generates test sets at ``test_resolutions``. Files and generation can be mixed:
            files given for one split are used for it.
        n_train: number of training samples (the first ``n_train`` of a file; must not exceed it).
        n_test: number of samples per test set.
        resolution: generated training grid (nodes per side, boundary included).
        test_resolutions: generated test grids (the same samples at each resolution).
        solve_resolution: grid the solver runs on; every resolution must subsample it:
            ``(solve_resolution - 1) % (resolution - 1) == 0``.
        alpha: smoothness exponent of the Gaussian random field.
        tau: inverse length scale of the Gaussian random field.
        **kwargs: see ``PDEDataModule`` (data_dir, batch_size, test_batch_size, num_workers, val_fraction, seed,
            normalize).
    """

    n_dims = 2

    def __init__(
        self,
        train_file: str | None = None,
        test_files: list[str] | None = None,
        n_train: int = 1000,
        n_test: int = 100,
        resolution: int = 33,
        test_resolutions: list[int] | None = None,
        solve_resolution: int = 129,
        alpha: float = 2.0,
        tau: float = 3.0,
        data_dir: str = "data",
        batch_size: int = 32,
        test_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__(data_dir, batch_size, test_batch_size, num_workers, val_fraction, seed, normalize)
        if n_train < 2 or n_test < 1:
            raise ValueError(f"n_train={n_train} / n_test={n_test} are invalid; use n_train >= 2 and n_test >= 1")
        self.train_file = train_file
        self.test_files = list(test_files) if test_files else None
        self.n_train, self.n_test = n_train, n_test
        self.resolution = resolution
        self.test_resolutions = list(test_resolutions) if test_resolutions else [resolution]
        self.solve_resolution = solve_resolution
        self.alpha, self.tau = alpha, tau
        generated = ([resolution] if train_file is None else []) + (self.test_resolutions if not test_files else [])
        for s in generated:
            if s < 3 or s > solve_resolution or (solve_resolution - 1) % (s - 1):
                raise ValueError(
                    f"resolution {s} cannot be subsampled from solve_resolution={solve_resolution}: a grid of s "
                    f"nodes needs (solve_resolution - 1) % (s - 1) == 0 and 3 <= s <= solve_resolution; e.g. "
                    f"resolutions 17, 33, 65 with solve_resolution 129"
                )

    # ------------------------------------------------------------------ generation (cached)
    def _cache_path(self, split: str, n: int) -> Path:
        key = f"n{n}_solve{self.solve_resolution}_alpha{self.alpha:g}_tau{self.tau:g}_seed{self.seed}"
        return self.data_dir / "darcy" / f"{split}_{key}.pt"

    def _generated(self, split: str) -> tuple[int, list[int]]:
        if split == "train":
            return self.n_train, [self.resolution]
        return self.n_test, self.test_resolutions

    def prepare_data(self) -> None:
        for split, needed in (("train", self.train_file is None), ("test", not self.test_files)):
            if not needed:
                continue
            n, resolutions = self._generated(split)
            path = self._cache_path(split, n)
            if path.is_file():
                cached = load_pt(path, "cached Darcy data")
                if all(f"x_{s}" in cached for s in resolutions):
                    continue
                resolutions = sorted({*resolutions, *(int(k[2:]) for k in cached if k.startswith("x_"))})
            # independent, reproducible streams for the train and test splits
            stream = np.random.SeedSequence([self.seed, 0 if split == "train" else 1])
            log.info("generating %d Darcy %s samples on a %d^2 grid into %s", n, split, self.solve_resolution, path)
            data = generate_darcy(
                n, self.solve_resolution, resolutions, np.random.default_rng(stream),
                alpha=self.alpha, tau=self.tau, progress=f"Darcy {split}",
            )
            flat = {f"{k}_{s}": v for s, d in data.items() for k, v in d.items()}
            save_pt_atomic(flat, path)

    def _from_cache(self, split: str, s: int) -> tuple[Tensor, Tensor, str]:
        n, _ = self._generated(split)
        path = self._cache_path(split, n)
        if not path.is_file():
            raise FileNotFoundError(f"generated Darcy data {path} is missing; prepare_data() creates it")
        d = load_pt(path, "cached Darcy data")
        check_keys(d, [f"x_{s}", f"y_{s}"], f"cached Darcy data {path}")
        return as_fields(d[f"x_{s}"], 2), as_fields(d[f"y_{s}"], 2), str(path)

    # ------------------------------------------------------------------ neuraloperator's .pt format
    def _from_file(self, file: str, n: int) -> tuple[Tensor, Tensor, str]:
        d = load_pt(file, "Darcy data file")
        check_keys(d, ["x", "y"], f"Darcy data file {file}")
        x, y = as_fields(d["x"], 2), as_fields(d["y"], 2)
        if len(x) != len(y):
            raise ValueError(f"Darcy data file {file}: x has {len(x)} samples but y has {len(y)}")
        if n > len(x):
            raise ValueError(f"Darcy data file {file} has {len(x)} samples but {n} were asked for; lower n_train/n_test")
        return x[:n], y[:n], str(file)

    def load_train(self) -> tuple[Tensor, Tensor, str]:
        if self.train_file is not None:
            return self._from_file(self.train_file, self.n_train)
        return self._from_cache("train", self.resolution)

    def load_tests(self) -> list[tuple[str, Tensor, Tensor, str]]:
        if self.test_files:
            tests = [self._from_file(f, self.n_test) for f in self.test_files]
        else:
            tests = [self._from_cache("test", s) for s in self.test_resolutions]
        named, seen = [], set()
        for x, y, src in tests:
            name = f"res{x.shape[-1]}"
            while name in seen:  # two test files at one resolution
                name += "b"
            seen.add(name)
            named.append((name, x, y, src))
        return named
