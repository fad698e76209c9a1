"""PDEBench's HDF5 files (github.com/pdebench/PDEBench), read lazily: only the samples, times and grid points used.

The layouts, as PDEBench's data generators write them and its loaders read them (``N`` samples, ``T`` times):

* 1-D Burgers ``1D_Burgers_Sols_Nu<nu>.hdf5``: ``tensor`` (N, T, X) = ``u(t, x)``, ``x-coordinate`` (X),
  ``t-coordinate``;
* 2-D Darcy flow ``2D_DarcyFlow_beta<beta>_Train.hdf5``: ``nu`` (N, X, Y) the coefficient (input), ``tensor``
  (N, 1, X, Y) the solution (output), ``x-coordinate`` (X), ``y-coordinate`` (Y);
* 2-D incompressible Navier-Stokes (inhomogeneous forcing) ``ns_incom_inhom_2d_512-<seed>.h5``: ``velocity``
  (N, T, X, Y, 2), ``particles`` (N, T, X, Y, 1) a passive density, ``force`` (N, X, Y, 2), ``t`` (N, T).

PDEBench's split: its loaders test on the *first* ``int(0.1 N)`` samples of a file and train on the rest
(``test_idx = int(num_samples_max * test_ratio)``, test = ``data[:test_idx]``), so that is the split used here
when no test files are given.

Every read opens the file, selects ``(sample, times, every k-th point)`` as an HDF5 hyperslab, and reads one
sample at a time, so memory holds the samples kept (at the grid they are kept on) plus one sample's selection:
a 100 GB file is never read whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np

from datamodules.public_formats import check_subsampling

__all__ = [
    "SUFFIXES", "TEST_FRACTION", "PDEBenchFiles", "is_pdebench", "open_h5", "dataset", "read_rows", "grid_stride"
]

SUFFIXES = (".h5", ".hdf5")
TEST_FRACTION = 0.1  # PDEBench's test_ratio: the first 10% of a file


def is_pdebench(path: str | os.PathLike) -> bool:
    """An HDF5 file by its suffix (``.h5``/``.hdf5``), the way ``.pt`` and ``.mat`` files are told apart."""
    return Path(path).suffix.lower() in SUFFIXES


@contextmanager
def open_h5(path: str | os.PathLike, what: str) -> Iterator:
    """The HDF5 file, read-only, with errors that name the file (missing, empty, not HDF5, unreadable)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path (relative paths start at {Path.cwd()})")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); re-download it")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{what} {path} is not an HDF5 file; PDEBench's .h5/.hdf5 files are (re-download it)")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{what} {path} could not be read ({err}); the file is corrupt or truncated") from None
    with f:
        yield f


class PDEBenchFiles:
    """What every ``PDEDataModule`` that also reads PDEBench's files says of them; list it before ``PDEDataModule``
    among the bases. A PDEBench file has its own split (its first ``TEST_FRACTION`` tests, so ``train_file`` alone
    is enough) and its sample count is read from one checked dataset, not by reading the file. The datamodule names
    its files (``file_kind``, for messages) and gives ``_pdebench_samples(f, path)``: that dataset of the open file,
    whose first axis counts the samples. Files of other formats go to the next base."""

    file_kind: ClassVar[str]

    def test_fraction(self, path: Path) -> float | None:
        return TEST_FRACTION if is_pdebench(path) else super().test_fraction(path)

    def sample_count(self, path: Path) -> int:
        if not is_pdebench(path):
            return super().sample_count(path)
        with open_h5(path, self.file_kind) as f:
            return self._pdebench_samples(f, path).shape[0]

    def _pdebench_samples(self, f, path: Path):
        raise NotImplementedError(f"{type(self).__name__} reads PDEBench files but gives no _pdebench_samples")


def dataset(f, key: str, shape: str, ndim: int, source: str, layout: str):
    """``f[key]``, checked to be a numeric array of ``ndim`` axes (``shape`` describes them in the message)."""
    import h5py

    if key not in f:
        raise ValueError(f"{source} has no key(s) {[key]}; found {sorted(f.keys())}; expected PDEBench's {layout}")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
        raise ValueError(f"{source}: '{key}' is not a numeric array; expected {shape} ({layout})")
    if ds.ndim != ndim:
        raise ValueError(f"{source}: '{key}' is {ds.shape}; expected {shape} ({layout})")
    return ds


def grid_stride(grid: int, resolutions: Sequence[int] | None, source: str) -> int:
    """The stride that reads a grid of ``grid`` points per axis at the finest grid that every one of
    ``resolutions`` subsamples (their least common multiple); 1 without resolutions. Each must divide ``grid``."""
    if not resolutions:
        return 1
    for s in resolutions:
        check_subsampling(s, grid, f"the {grid} grid points per axis of {source}")
    return grid // math.lcm(*resolutions)


def read_rows(
    ds, rows: slice, select: tuple, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """``transform(ds[i][select])`` for every sample ``i`` in ``rows``, stacked (float32), one sample per read.

    ``select`` indexes the axes after the sample axis (slices with steps, at most one increasing list of indices:
    HDF5 hyperslabs). Only the selection is read, and one sample at a time.
    """
    out = None
    start, stop, _ = rows.indices(ds.shape[0])
    for j, i in enumerate(range(start, stop)):
        part = np.asarray(ds[(i, *select)], dtype=np.float32)
        part = transform(part) if transform is not None else part
        if out is None:
            out = np.empty((stop - start, *part.shape), dtype=np.float32)
        out[j] = part
    return out if out is not None else np.empty((0,), dtype=np.float32)
