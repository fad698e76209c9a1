"""Reading the public PDE dataset files: MATLAB ``.mat`` (v5 with scipy, v7.3 with h5py), sample selection and
periodic subsampling, with errors that name the file and the fix.

MATLAB v7.3 files are HDF5 files written in column-major order, so h5py sees every array with its axes reversed;
``load_mat`` reverses them back, so both versions give the shapes MATLAB shows (e.g. ``u`` as ``(N, s, s, T)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["load_mat", "mat_shape", "check_subsampling", "subsample_periodic"]


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path (relative paths start at {Path.cwd()})")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); re-download or regenerate it")


def _mat_version(path: Path) -> int:
    """1 for MATLAB v5/v6/v7 (and 0 for v4): scipy reads them; 2 for v7.3, an HDF5 file (h5py reads it)."""
    import h5py
    from scipy.io.matlab import matfile_version

    if h5py.is_hdf5(path):  # v7.3 (its 512-byte MATLAB header is an HDF5 user block), or plain HDF5
        return 2
    try:
        return matfile_version(str(path))[0]
    except Exception as err:  # scipy raises ValueError/TypeError/OSError on garbage
        raise ValueError(
            f"{path} is not a MATLAB .mat file ({type(err).__name__}: {err}); re-download it or check the path"
        ) from None


def mat_shape(path: str | os.PathLike, key: str, what: str = "data file") -> tuple[int, ...]:
    """The MATLAB shape of array ``key`` of a ``.mat`` file, without reading the data."""
    path = Path(path)
    _check_file(path, what)
    if _mat_version(path) == 2:
        import h5py

        with h5py.File(path, "r") as f:
            if key not in f:
                raise ValueError(f"{what} {path} has no key(s) {[key]}; found {sorted(f.keys())}")
            return tuple(reversed(f[key].shape))
    from scipy.io import whosmat

    try:
        shapes = {name: shape for name, shape, _ in whosmat(str(path))}
    except Exception as err:
        raise ValueError(
            f"{what} {path} could not be read ({type(err).__name__}: {err}); the file is corrupt or truncated"
        ) from None
    if key not in shapes:
        raise ValueError(f"{what} {path} has no key(s) {[key]}; found {sorted(shapes)}")
    return tuple(shapes[key])


def load_mat(
    path: str | os.PathLike, keys: Sequence[str], what: str = "data file", samples: slice | None = None
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a ``.mat`` file, optionally only ``samples`` along their first axis.

    v7.3 files are read lazily, so ``samples`` reads only that part of a large file.
    """
    path = Path(path)
    _check_file(path, what)
    samples = samples if samples is not None else slice(None)
    if _mat_version(path) == 2:  # v7.3: HDF5
        import h5py

        out = {}
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in keys if k not in f]
                if missing:
                    raise ValueError(f"{what} {path} has no key(s) {missing}; found {sorted(f.keys())}")
                for k in keys:
                    ds = f[k]
                    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiub":
                        raise ValueError(f"{what} {path}: '{k}' is not a numeric array (a MATLAB struct or cell?)")
                    n = ds.shape[-1]  # the first MATLAB axis is h5py's last
                    start, stop, step = samples.indices(n)
                    out[k] = np.ascontiguousarray(np.transpose(ds[..., start:stop:step]))
        except OSError as err:
            raise ValueError(f"{what} {path} could not be read ({err}); the file is corrupt or truncated") from None
        return out
    from scipy.io import loadmat

    try:
        d = loadmat(str(path), variable_names=list(keys))
    except Exception as err:  # truncated or corrupt v5 files raise several types
        raise ValueError(
            f"{what} {path} could not be read ({type(err).__name__}: {err}); the file is corrupt or truncated"
        ) from None
    missing = [k for k in keys if k not in d]
    if missing:
        found = sorted(k for k in loadmat(str(path)) if not k.startswith("__"))
        raise ValueError(f"{what} {path} has no key(s) {missing}; found {found}")
    out = {}
    for k in keys:
        a = d[k]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub":
            raise ValueError(f"{what} {path}: '{k}' is not a numeric array (a MATLAB struct or cell?)")
        out[k] = a[samples]
    return out


def check_subsampling(resolution: int, grid: int, origin: str) -> None:
    """Refuse a ``resolution`` that is not every k-th point of a periodic grid of ``grid`` points per axis.

    Every subsampled grid of the project, generated or read, goes through this one rule: ``x_j = j / s`` is a
    subset of ``x_i = i / grid`` exactly when ``s`` divides ``grid``. ``origin`` names the grid in the message
    (``solve_resolution=1024``, or a file).
    """
    if resolution > grid or grid % resolution:
        divisors = [d for d in range(2, grid + 1) if grid % d == 0 and d >= grid // 64]
        raise ValueError(
            f"resolution {resolution} cannot be subsampled from {origin}: a periodic grid of {grid} points per axis "
            f"subsamples (every k-th point) only to a divisor of {grid}; use one of {divisors}"
        )


def subsample_periodic(t: Tensor, resolution: int, n_dims: int, source: str) -> Tensor:
    """Every ``k``-th point of the last ``n_dims`` axes (periodic grids ``x_j = j / s``) to reach ``resolution``.

    The same rule serves cell-centred grids (PDEBench's Darcy): every k-th cell of each axis.
    """
    s = t.shape[-1]
    if any(d != s for d in t.shape[t.ndim - n_dims:]):
        raise ValueError(f"{source}: grid {tuple(t.shape[t.ndim - n_dims:])} is not square")
    check_subsampling(resolution, s, f"the {s} grid points per axis of {source}")
    k = s // resolution
    index = (Ellipsis,) + (slice(None, None, k),) * n_dims
    return t[index]
