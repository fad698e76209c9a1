"""The Well (polymathic-ai.org/the_well): a local Well dataset read with the ``the-well`` package's ``WellDataset``.

A Well dataset is a directory ``<well_dir>/data/{train,valid,test}/*.hdf5`` (as ``the-well-download`` writes it;
``well_dir`` is e.g. ``datasets/turbulent_radiative_layer_2D``). Each item of ``WellDataset`` is a time window
of one trajectory: ``input_fields`` (T_in, *spatial, C) and ``output_fields`` (T_out, *spatial, C), the
fields flattened by tensor component (``velocity`` -> ``velocity_x``, ``velocity_y``).

Mapping to FNO channels: ``x`` holds, for each of the ``n_steps_input`` input steps in time order, the chosen
``input_fields`` in the order given, then the chosen time-independent ``constant_fields``; ``y`` holds, for each
of the ``n_steps_output`` output steps, the chosen ``output_fields``. So ``in_channels = n_steps_input *
len(input_fields) + len(constant_fields)`` and ``out_channels = n_steps_output * len(output_fields)``, known from
the arguments before any data is read.

Samples: ``n_train`` windows spread evenly over the ``train`` split (every trajectory contributes, rather than
the first few trajectories giving all their overlapping windows), the last ``val_fraction`` of them for
validation (the base class's rule); ``n_test`` windows spread evenly over the ``test`` split. They are read one
window at a time (``WellDataset`` reads each item lazily from its HDF5 file) and kept in memory; ``stride``
keeps every k-th grid point. The data is used in physical units: the base class normalises ``x`` with the
training split's statistics (The Well's own normalisation is off).

Offline: this module never downloads. ``WellDataset`` is given the local directory (``path``), and a missing
directory or split stops ``setup`` with the command that downloads it once elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.base import Fields, PDEDataModule, TestSet, check_positive_int, grid_name

log = logging.getLogger(__name__)

__all__ = ["WellDataModule"]


def _names(arg: str, value: Sequence[str] | None, allow_empty: bool = False) -> list[str]:
    names = [] if value is None else [str(v) for v in value]
    if (not names and not allow_empty) or isinstance(value, str) or len(set(names)) != len(names):
        raise ValueError(f"{arg}={value!r} is invalid; give a list of distinct field names, e.g. [density, pressure]")
    return names


class WellDataModule(PDEDataModule):
    """A Well dataset from a local directory; batches ``x`` (B, in_channels, *spatial), ``y`` (B, out_channels,
    *spatial) (module docstring for the channel layout).

    Args:
        well_dir: the dataset's directory (holding ``data/train`` and ``data/test``).
        input_fields: time-varying fields of the input, by their flattened names (e.g. ``velocity_x``).
        output_fields: time-varying fields of the output; default the input fields.
        constant_fields: time-independent fields appended to the input once (e.g. a mask); default none.
        n_steps_input: input time steps per window.
        n_steps_output: output time steps per window.
        dt_stride: stored steps between consecutive steps of a window.
        stride: keep every ``stride``-th grid point of each spatial axis.
        n_dims: spatial dimensions of the dataset (2 or 3); checked against the files.
        n_train: training windows (validation included).
        n_test: test windows.
        **kwargs: the arguments of ``PDEDataModule`` (batch_size, test_batch_size, num_workers, val_fraction,
            seed, normalize); its file arguments must stay null, and ``resolution``/``test_resolutions`` are
            unused (the data keeps the dataset's grid, every ``stride``-th point).
    """

    name = "well"

    def __init__(
        self,
        well_dir: str,
        input_fields: Sequence[str],
        output_fields: Sequence[str] | None = None,
        constant_fields: Sequence[str] | None = None,
        n_steps_input: int = 1,
        n_steps_output: int = 1,
        dt_stride: int = 1,
        stride: int = 1,
        n_dims: int = 2,
        n_train: int = 1000,
        n_test: int = 200,
        **kwargs,
    ) -> None:
        for arg in ("train_file", "test_files"):
            if kwargs.get(arg) is not None:
                raise ValueError(f"{arg} does not apply to WellDataModule: the data comes from well_dir")
        super().__init__(n_train=n_train, n_test=n_test, **kwargs)
        for arg, value in (("n_steps_input", n_steps_input), ("n_steps_output", n_steps_output),
                           ("dt_stride", dt_stride), ("stride", stride)):
            check_positive_int(arg, value)
        if n_dims not in (1, 2, 3):
            raise ValueError(f"n_dims={n_dims!r} is invalid; The Well's datasets are 2-D or 3-D")
        self.well_dir = Path(well_dir)
        self.input_fields = _names("input_fields", input_fields)
        self.output_fields = _names("output_fields", output_fields) if output_fields is not None else self.input_fields
        self.constant_fields = _names("constant_fields", constant_fields, allow_empty=True)
        self.n_steps_input, self.n_steps_output = n_steps_input, n_steps_output
        self.dt_stride, self.stride = dt_stride, stride
        self.n_dims = n_dims
        self.in_channels = n_steps_input * len(self.input_fields) + len(self.constant_fields)
        self.out_channels = n_steps_output * len(self.output_fields)

    # ================================================================== The Well
    def _split_dir(self, split: str) -> Path:
        return self.well_dir / "data" / split

    def _check_split(self, split: str) -> None:
        where = self._split_dir(split)
        if not self.well_dir.is_dir():
            raise FileNotFoundError(
                f"The Well dataset directory {self.well_dir} does not exist (relative paths start at {Path.cwd()}); "
                f"this module never downloads: fetch the dataset once where there is network access, e.g. "
                f"`the-well-download --base-path <dir> --dataset <name>`, and set well_dir to <dir>/datasets/<name>"
            )
        if not where.is_dir() or not (sorted(where.glob("*.hdf5")) + sorted(where.glob("*.h5"))):
            raise FileNotFoundError(
                f"{where} holds no HDF5 files; a Well dataset directory has data/train and data/test with .hdf5 "
                f"files (check well_dir, or download the '{split}' split)"
            )

    def _dataset(self, split: str):
        try:
            from the_well.data import WellDataset
        except ImportError as err:
            raise ImportError(
                f"WellDataModule needs the `the-well` package ({err}); install it with `pip install the-well` "
                f"(or this project's extra: `pip install -e .[well]`)"
            ) from None
        self._check_split(split)
        try:
            return WellDataset(
                path=str(self.well_dir), well_split_name=split, n_steps_input=self.n_steps_input,
                n_steps_output=self.n_steps_output, min_dt_stride=self.dt_stride, max_dt_stride=self.dt_stride,
                use_normalization=False, return_grid=False, boundary_return_type=None,
            )
        except (AssertionError, KeyError, OSError) as err:  # the package asserts on layouts it cannot read
            raise ValueError(
                f"The Well dataset {self._split_dir(split)} could not be read by the-well ({type(err).__name__}: "
                f"{err}); check that it is a complete Well dataset, with windows of n_steps_input + n_steps_output "
                f"= {self.n_steps_input + self.n_steps_output} steps every dt_stride={self.dt_stride}"
            ) from None

    def _columns(self, ds, source: str) -> tuple[list[int], list[int], list[int]]:
        """Positions of the chosen fields among the dataset's flattened (and constant) fields."""
        meta = ds.metadata
        if meta.n_spatial_dims != self.n_dims:
            raise ValueError(f"{source} is {meta.n_spatial_dims}-D but n_dims={self.n_dims}; set n_dims to match")
        varying = [n for order in sorted(meta.field_names) for n in meta.field_names[order]]
        constant = [n for order in sorted(meta.constant_field_names) for n in meta.constant_field_names[order]]

        def pick(arg: str, wanted: list[str], available: list[str]) -> list[int]:
            missing = [n for n in wanted if n not in available]
            if missing:
                raise ValueError(f"{source} ({meta.dataset_name}) has no {arg} {missing}; it has {available}")
            return [available.index(n) for n in wanted]

        return (pick("time-varying field(s)", self.input_fields, varying),
                pick("time-varying field(s)", self.output_fields, varying),
                pick("constant field(s)", self.constant_fields, constant))

    def _read(self, split: str, n: int, arg: str) -> Fields:
        ds = self._dataset(split)
        source = f"The Well dataset {self._split_dir(split)}"
        if n > len(ds):
            raise ValueError(
                f"{source} has {len(ds)} windows of {self.n_steps_input} + {self.n_steps_output} steps but {arg}={n} "
                f"asks for more; set {arg} to at most {len(ds)}"
            )
        cols_in, cols_out, cols_const = self._columns(ds, source)
        index = np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int))  # n distinct windows when n <= len
        every_k = (slice(None, None, self.stride),) * self.n_dims
        xs, ys = [], []
        for i in index.tolist():
            item = ds[i]
            x = item["input_fields"][..., cols_in]  # (T_in, *spatial, C_in)
            x = x.movedim(-1, 1).flatten(0, 1)  # (T_in * C_in, *spatial): step-major
            if cols_const:
                x = torch.cat([x, item["constant_fields"][..., cols_const].movedim(-1, 0)])
            y = item["output_fields"][..., cols_out].movedim(-1, 1).flatten(0, 1)
            xs.append(x[(slice(None), *every_k)])
            ys.append(y[(slice(None), *every_k)])
        return Fields(torch.stack(xs).float(), torch.stack(ys).float(), source)

    # ================================================================== what setup reads
    def prepare_data(self) -> None:
        """Nothing to generate or download; a missing directory is reported here, before anything else runs."""
        for split in ("train", "test"):
            self._check_split(split)

    def load_train(self) -> Fields:
        return self._read("train", self.n_train, "n_train")

    def load_tests(self) -> list[TestSet]:
        x, y, source = self._read("test", self.n_test, "n_test")
        return [TestSet(grid_name(tuple(x.shape[2:])), x, y, source)]

    def generated_resolutions(self) -> list[int]:
        return []
