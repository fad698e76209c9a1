"""PDEBench's HDF5 layouts (Burgers, Darcy, incompressible NS), written here with h5py: values that encode their
own indices, so selection, orientation and split errors show; wrong layouts fail with clear messages."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules import BurgersDataModule, DarcyDataModule, NavierStokesDataModule
from datamodules.navier_stokes import vorticity
from datamodules.pdebench import read_rows


def _write(path: Path, arrays: dict[str, np.ndarray]) -> str:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v, chunks=True)  # chunked, as PDEBench writes them
    return str(path)


# ---------------------------------------------------------------------- Burgers: tensor (N, T, X)
def _burgers(n=20, times=11, s=64) -> np.ndarray:
    n_, t, x = np.meshgrid(np.arange(n), np.arange(times), np.arange(s), indexing="ij")
    return (1000.0 * (n_ + 1) + 10.0 * t + 0.01 * x + 1).astype(np.float32)


def _burgers_file(tmp_path, name="1D_Burgers_Sols_Nu0.01.hdf5", **kw) -> tuple[str, np.ndarray]:
    u = _burgers(**kw)
    arrays = {"tensor": u, "x-coordinate": np.linspace(0, 1, u.shape[2], endpoint=False, dtype=np.float32),
              "t-coordinate": np.linspace(0, 2, u.shape[1] + 1, dtype=np.float32)}
    return _write(tmp_path / name, arrays), u


def test_burgers_final_task_uses_pdebench_split_and_subsamples(tmp_path):
    path, u = _burgers_file(tmp_path)
    dm = BurgersDataModule(train_file=path, n_train=10, n_test=2, resolution=32, test_resolutions=[32, 64],
                           batch_size=2)
    dm.setup("fit")
    # PDEBench tests on the first int(0.1 N) = 2 samples and trains on the rest: training starts at sample 2
    train_x = torch.cat([dm._splits["train"].x, dm._splits["val"].x])
    train_y = torch.cat([dm._splits["train"].y, dm._splits["val"].y])
    torch.testing.assert_close(train_x[:, 0], torch.from_numpy(u[2:12, 0, ::2]))
    torch.testing.assert_close(train_y[:, 0], torch.from_numpy(u[2:12, -1, ::2]))
    assert dm.test_names == ["res32", "res64"]
    torch.testing.assert_close(dm._tests[1].y[:, 0], torch.from_numpy(u[:2, -1]))
    torch.testing.assert_close(dm._tests[0].x[:, 0], torch.from_numpy(u[:2, 0, ::2]))
    with pytest.raises(ValueError, match=r"test split \(the first 10%\) holds 2, but n_test=3 asks for more"):
        BurgersDataModule(train_file=path, n_train=10, n_test=3, resolution=32, batch_size=2).setup("fit")
    with pytest.raises(ValueError, match=r"has 18 samples after the 2 of its format's test split but n_train=19"):
        BurgersDataModule(train_file=path, n_train=19, n_test=2, resolution=32, batch_size=2).setup("fit")


def test_burgers_trajectory_task_takes_equal_steps_or_the_chosen_time_indices(tmp_path):
    path, u = _burgers_file(tmp_path)
    test, u_test = _burgers_file(tmp_path, name="test.h5", n=4)
    args = dict(task="trajectory", train_file=path, test_files=[test], n_train=10, n_test=4, resolution=64,
                batch_size=2)
    dm = BurgersDataModule(trajectory_steps=5, **args)
    assert dm.out_channels == 6
    dm.setup("fit")
    torch.testing.assert_close(dm._splits["train"].y, torch.from_numpy(u[:9, ::2]))  # times 0, 2, ..., 10
    torch.testing.assert_close(dm._tests[0].y, torch.from_numpy(u_test[:, ::2]))  # the given test file, first 4
    chosen = BurgersDataModule(time_indices=[10, 3, 0], **args)
    assert chosen.out_channels == 3
    chosen.setup("fit")
    torch.testing.assert_close(chosen._splits["train"].y, torch.from_numpy(u[:9][:, [10, 3, 0]]))
    with pytest.raises(ValueError, match=r"stores 11 times, which trajectory_steps=3 does not split"):
        BurgersDataModule(trajectory_steps=3, **args).setup("fit")
    with pytest.raises(ValueError, match=r"time_indices holds \[11\]"):
        BurgersDataModule(time_indices=[0, 11], **args).setup("fit")
    with pytest.raises(ValueError, match=r"time_indices=\[0, 1\] applies to task=trajectory on PDEBench"):
        BurgersDataModule(time_indices=[0, 1])


def test_burgers_file_named_for_another_viscosity_warns(tmp_path, caplog):
    path, _ = _burgers_file(tmp_path, name="1D_Burgers_Sols_Nu0.001.hdf5")
    BurgersDataModule(train_file=path, n_train=10, n_test=2, resolution=32, viscosity=0.01,
                      batch_size=2).setup("fit")
    assert "named for nu=0.001 but viscosity=0.01" in caplog.text


# ---------------------------------------------------------------------- Darcy: nu (N, X, Y), tensor (N, 1, X, Y)
def _darcy(n=20, s=16) -> tuple[np.ndarray, np.ndarray]:
    n_, i, j = np.meshgrid(np.arange(n), np.arange(s), np.arange(s), indexing="ij")
    nu = (1.0 + n_ + 0.01 * i + 0.0001 * j).astype(np.float32)
    return nu, (2 * nu[:, None] + 1).astype(np.float32)


def test_darcy_reads_nu_to_tensor_subsampled_at_every_test_resolution(tmp_path):
    nu, u = _darcy()
    path = _write(tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5", {"nu": nu, "tensor": u})
    dm = DarcyDataModule(train_file=path, n_train=12, n_test=2, resolution=8, test_resolutions=[8, 16],
                         batch_size=2)
    dm.setup("fit")
    train_x = torch.cat([dm._splits["train"].x, dm._splits["val"].x])
    torch.testing.assert_close(train_x[:, 0], torch.from_numpy(nu[2:14, ::2, ::2]))  # (i, j) order kept
    torch.testing.assert_close(dm._splits["val"].y[:, 0], torch.from_numpy(u[13:14, 0, ::2, ::2]))
    assert [t.x.shape[-1] for t in dm._tests] == [8, 16]
    torch.testing.assert_close(dm._tests[1].y, torch.from_numpy(u[:2]))
    with pytest.raises(ValueError, match=r"resolution 6 cannot be subsampled from the 16 grid points.*\[2, 4, 8, 16\]"):
        DarcyDataModule(train_file=path, n_train=12, n_test=2, resolution=6, batch_size=2).setup("fit")


# ---------------------------------------------------------------------- NS: velocity, particles, force
def _ns(n=10, times=6, s=16) -> dict[str, np.ndarray]:
    """Velocity v_x = -a y^2, v_y = b x^2 (so w = 2 b x + 2 a y, exact for second-order differences), with a, b
    per sample and frame; density and force encode their indices."""
    n_, t, i, j = np.meshgrid(np.arange(n), np.arange(times), np.arange(s), np.arange(s), indexing="ij")
    a, b = 0.01 * (n_ + 1), 0.001 * (t + 1)
    velocity = np.stack([-a * j**2, b * i**2], axis=-1).astype(np.float32)
    particles = (100.0 * n_ + 10 * t + 0.1 * i + 0.001 * j + 1)[..., None].astype(np.float32)
    force = np.stack([1.0 + n_[:, 0] + 0.01 * i[:, 0], -1.0 - n_[:, 0] - 0.01 * j[:, 0]], axis=-1)
    return {"velocity": velocity, "particles": particles, "force": force.astype(np.float32),
            "t": np.tile(np.arange(times, dtype=np.float32), (n, 1))}


def test_vorticity_is_the_curl_of_the_velocity():
    arrays = _ns(n=2)
    w = vorticity(arrays["velocity"].astype(np.float64))
    _, t, i, j = np.meshgrid(np.arange(2), np.arange(6), np.arange(16), np.arange(16), indexing="ij")
    n_ = np.arange(2)[:, None, None, None]
    np.testing.assert_allclose(w, 2 * 0.001 * (t + 1) * i + 2 * 0.01 * (n_ + 1) * j, atol=1e-5)  # float32 data


def test_navier_stokes_sees_vorticity_from_velocity_plus_density_and_force(tmp_path):
    arrays = _ns()
    path = _write(tmp_path / "ns_incom_inhom_2d_512-0.h5", arrays)
    w = torch.from_numpy(vorticity(arrays["velocity"]))  # (N, T, s, s)
    test = _write(tmp_path / "ns_test.h5", _ns(n=3))
    dm = NavierStokesDataModule(t_in=2, t_out=3, train_file=path, test_files=[test], n_train=8, n_test=3,
                                resolution=8, test_resolutions=[8, 16], batch_size=2)
    assert dm.in_channels == 2 + 3 and dm.out_channels == 3
    dm.setup("fit")
    x = torch.cat([dm._splits["train"].x, dm._splits["val"].x])
    torch.testing.assert_close(x[:, :2], w[:8, :2, ::2, ::2])
    torch.testing.assert_close(x[:, 2], torch.from_numpy(arrays["particles"][:8, 1, ::2, ::2, 0]))
    torch.testing.assert_close(x[:, 3:], torch.from_numpy(arrays["force"][:8, ::2, ::2]).permute(0, 3, 1, 2))
    torch.testing.assert_close(dm._splits["val"].y, w[7:8, 2:5, ::2, ::2])
    assert [t.x.shape[-1] for t in dm._tests] == [8, 16]
    one = NavierStokesDataModule(task="one_step", t_in=2, t_out=3, train_file=path, test_files=[test], n_train=8,
                                 n_test=3, resolution=16, batch_size=2)
    assert one.in_channels == 4
    one.setup("fit")
    assert len(one._tests[0].x) == 3 * 4  # four consecutive pairs in each of 3 trajectories
    torch.testing.assert_close(one._splits["train"].y[5, 0], w[1, 2])  # trajectory 1, pair 1 -> 2
    torch.testing.assert_close(one._splits["train"].x[5, 1], torch.from_numpy(arrays["particles"][1, 1, ..., 0]))
    with pytest.raises(ValueError, match=r"stores 6 frames but t_in \+ t_out = 5 snapshots every time_stride=2"):
        NavierStokesDataModule(t_in=2, t_out=3, time_stride=2, train_file=path, test_files=[test], n_train=8,
                               n_test=3, resolution=8, batch_size=2).setup("fit")
    with pytest.raises(ValueError, match=r"has 10 trajectories but n_train=11 asks for more"):
        NavierStokesDataModule(t_in=2, t_out=3, train_file=path, test_files=[test], n_train=11, n_test=3,
                               resolution=8, batch_size=2).setup("fit")


# ---------------------------------------------------------------------- wrong layouts: clear errors at setup
@pytest.mark.parametrize(
    "cls, arrays, message",
    [
        (BurgersDataModule, {"u": _burgers()}, r"has no key\(s\) \['tensor'\]; found \['u'\]; expected PDEBench's "
                                                r"1-D Burgers layout"),
        (BurgersDataModule, {"tensor": _burgers()[:, 0]}, r"'tensor' is \(20, 64\); expected \(N, T, X\)"),
        (BurgersDataModule, {"tensor": _burgers(), "x-coordinate": np.zeros(32)}, r"'x-coordinate' has 32 points"),
        (BurgersDataModule, {"tensor": np.where(_burgers() == 1001.0, np.nan, _burgers())},
         r"'x' contains 1 NaN/Inf values \(first in sample 0\)"),
        (DarcyDataModule, {"nu": _darcy()[0], "tensor": _darcy()[1][:, 0]}, r"'tensor' is \(20, 16, 16\); expected "
                                                                             r"\(N, 1, X, Y\)"),
        (DarcyDataModule, {"nu": _darcy()[0], "tensor": _darcy()[1][:10]}, r"'tensor' is \(10, 1, 16, 16\) but 'nu'"),
        (DarcyDataModule, {"x": _darcy()[0], "y": _darcy()[1]}, r"has no key\(s\) \['nu'\]; found \['x', 'y'\]"),
        (NavierStokesDataModule, {k: v for k, v in _ns().items() if k != "force"}, r"no key\(s\) \['force'\]"),
        (NavierStokesDataModule, {**_ns(), "velocity": _ns()["velocity"][..., :1]},
         r"'velocity' is \(10, 6, 16, 16, 1\); expected \(N, T, s, s, 2\)"),
    ],
    ids=["burgers-keys", "burgers-ndim", "burgers-coords", "burgers-nan", "darcy-ndim", "darcy-count", "darcy-keys",
         "ns-keys", "ns-components"],
)
def test_wrong_layouts_fail_clearly_at_setup(tmp_path, cls, arrays, message):
    path = _write(tmp_path / "bad.hdf5", arrays)
    kwargs = dict(t_in=2, t_out=3) if cls is NavierStokesDataModule else {}
    with pytest.raises(ValueError, match=message):
        cls(train_file=path, n_train=8, n_test=1, resolution=8, batch_size=2, **kwargs).setup("fit")


def test_files_that_are_not_hdf5_or_absent_fail_clearly(tmp_path):
    garbage = tmp_path / "random.hdf5"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"random\.hdf5 is not an HDF5 file"):
        BurgersDataModule(train_file=str(garbage), n_train=8, n_test=1, resolution=8, batch_size=2).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"missing\.h5 does not exist"):
        DarcyDataModule(train_file=str(tmp_path / "missing.h5"), n_train=8, n_test=1, resolution=8,
                        batch_size=2).setup("fit")


def test_reads_one_sample_at_a_time_and_only_the_selection():
    """``read_rows`` asks the dataset for one sample's hyperslab per read, never for more."""

    class Recording:
        shape = (100, 7, 64)

        def __init__(self) -> None:
            self.requests: list[tuple] = []

        def __getitem__(self, index):
            self.requests.append(index)
            return np.zeros((2, 16), dtype=np.float32)

    ds = Recording()
    out = read_rows(ds, slice(90, 93), ([0, 6], slice(None, None, 4)))
    assert out.shape == (3, 2, 16)
    assert ds.requests == [(i, [0, 6], slice(None, None, 4)) for i in (90, 91, 92)]
