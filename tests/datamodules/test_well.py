"""WellDataModule on a tiny dataset written here in The Well's HDF5 layout, read through the `the-well` package."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules import WellDataModule

pytest.importorskip("the_well", reason="the-well is not installed (pip install -e .[well])")

S_X, S_Y, STEPS = 8, 12, 6


def _field(traj: int, order_base: float, n_traj: int) -> np.ndarray:
    """(n_traj, STEPS, S_X, S_Y) values that encode trajectory, step and position."""
    n, t, i, j = np.meshgrid(np.arange(n_traj), np.arange(STEPS), np.arange(S_X), np.arange(S_Y), indexing="ij")
    return (order_base + 1000.0 * (n + traj) + 10.0 * t + 0.1 * i + 0.001 * j).astype(np.float32)


def _write_well_file(path: Path, n_traj: int = 2, first: int = 0) -> None:
    """One file of a 2-D Well dataset: t0 fields density, pressure; t1 field velocity; a constant t0 mask."""
    with h5py.File(path, "w") as f:
        f.attrs.update({"dataset_name": "tiny_flow", "grid_type": "cartesian", "n_spatial_dims": 2,
                        "n_trajectories": n_traj, "simulation_parameters": []})
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        for key, n in (("time", STEPS), ("x", S_X), ("y", S_Y)):
            dims.create_dataset(key, data=np.linspace(0, 1, n, dtype=np.float32))
            dims[key].attrs["sample_varying"] = False
        bcs = f.create_group("boundary_conditions")
        periodic = bcs.create_group("x_periodic")
        periodic.attrs.update({"associated_dims": ["x"], "associated_fields": [], "bc_type": "PERIODIC",
                               "sample_varying": False, "time_varying": False})
        periodic.create_dataset("mask", data=np.array([True] + [False] * (S_X - 2) + [True]))
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = []

        def put(group, name, data, time_varying):
            ds = group.create_dataset(name, data=data)
            ds.attrs.update({"dim_varying": [True, True], "sample_varying": True, "time_varying": time_varying})

        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["density", "pressure", "mask"]
        put(t0, "density", _field(first, 1.0, n_traj), True)
        put(t0, "pressure", _field(first, 2.0, n_traj), True)
        put(t0, "mask", _field(first, 3.0, n_traj)[:, 0], False)
        t1 = f.create_group("t1_fields")
        t1.attrs["field_names"] = ["velocity"]
        put(t1, "velocity", np.stack([_field(first, 4.0, n_traj), _field(first, 5.0, n_traj)], axis=-1), True)
        f.create_group("t2_fields").attrs["field_names"] = []


@pytest.fixture
def well_dir(tmp_path) -> Path:
    root = tmp_path / "datasets" / "tiny_flow"
    for split, n_traj, first in (("train", 3, 0), ("valid", 1, 10), ("test", 2, 20)):
        (root / "data" / split).mkdir(parents=True)
        _write_well_file(root / "data" / split / f"tiny_{split}.hdf5", n_traj, first)
    return root


def test_fields_and_time_windows_map_to_fno_channels(well_dir):
    dm = WellDataModule(well_dir=str(well_dir), input_fields=["velocity_y", "density"], output_fields=["pressure"],
                        constant_fields=["mask"], n_steps_input=2, n_steps_output=2, n_train=9, n_test=3,
                        batch_size=2)
    assert (dm.in_channels, dm.out_channels) == (2 * 2 + 1, 2)  # known before any data is read
    dm.prepare_data()
    dm.setup("fit")
    # 3 trajectories x 3 windows (6 steps, 2 + 2 per window) = 9 windows, all of them
    x = torch.cat([dm._splits["train"].x, dm._splits["val"].x])
    assert x.shape == (9, 5, S_X, S_Y)
    # window 4 = trajectory 1, start step 1: channels [v_y(t1), rho(t1), v_y(t2), rho(t2), mask]
    expected = [5.0 + 1000 + 10, 1.0 + 1000 + 10, 5.0 + 1000 + 20, 1.0 + 1000 + 20, 3.0 + 1000]
    torch.testing.assert_close(x[4, :, 0, 0], torch.tensor(expected))
    torch.testing.assert_close(x[4, 0, 3, 5], torch.tensor(5.0 + 1000 + 10 + 0.3 + 0.005))  # (x, y) order kept
    y = torch.cat([dm._splits["train"].y, dm._splits["val"].y])
    torch.testing.assert_close(y[4, :, 0, 0], torch.tensor([2.0 + 1000 + 30, 2.0 + 1000 + 40]))
    assert dm.test_names == ["res8x12"] and len(dm._tests[0].x) == 3
    assert float(dm._tests[0].x[0, 1, 0, 0]) == 1.0 + 20000  # the test split's first trajectory, step 0


def test_windows_are_spread_over_the_split_and_the_grid_strided(well_dir):
    dm = WellDataModule(well_dir=str(well_dir), input_fields=["density"], n_steps_input=1, n_steps_output=1,
                        n_train=3, n_test=2, stride=2, batch_size=1, val_fraction=0.34)
    dm.setup("fit")
    x = torch.cat([dm._splits["train"].x, dm._splits["val"].x])
    assert x.shape == (3, 1, S_X // 2, S_Y // 2)
    # 15 windows (3 trajectories x 5): indices 0, 7, 14 -> trajectory 0 step 0, trajectory 1 step 2, 2 step 4
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor([1.0, 1.0 + 1000 + 20, 1.0 + 2000 + 40]))
    torch.testing.assert_close(x[1, 0, 1, 1], torch.tensor(1.0 + 1000 + 20 + 0.2 + 0.002))


def test_missing_directory_fields_and_counts_fail_clearly(well_dir, tmp_path):
    absent = WellDataModule(well_dir=str(tmp_path / "nowhere"), input_fields=["density"], n_train=4, n_test=1,
                            batch_size=1)
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist .* never downloads"):
        absent.prepare_data()
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
        absent.setup("fit")
    with pytest.raises(ValueError, match=r"has no time-varying field\(s\) \['vorticity'\]; it has \['density', "
                                         r"'pressure', 'velocity_x', 'velocity_y'\]"):
        WellDataModule(well_dir=str(well_dir), input_fields=["vorticity"], n_train=4, n_test=1,
                       batch_size=1).setup("fit")
    with pytest.raises(ValueError, match=r"has 15 windows of 1 \+ 1 steps but n_train=16 asks for more"):
        WellDataModule(well_dir=str(well_dir), input_fields=["density"], n_train=16, n_test=1,
                       batch_size=1).setup("fit")
    with pytest.raises(ValueError, match=r"is 2-D but n_dims=3"):
        WellDataModule(well_dir=str(well_dir), input_fields=["density"], n_dims=3, n_train=4, n_test=1,
                       batch_size=1).setup("fit")
    with pytest.raises(ValueError, match=r"could not be read by the-well"):  # windows longer than a trajectory
        WellDataModule(well_dir=str(well_dir), input_fields=["density"], n_steps_input=4, n_steps_output=3,
                       n_train=2, n_test=1, batch_size=1).setup("fit")
    with pytest.raises(ValueError, match=r"train_file does not apply to WellDataModule"):
        WellDataModule(well_dir=str(well_dir), input_fields=["density"], train_file="x.hdf5")
