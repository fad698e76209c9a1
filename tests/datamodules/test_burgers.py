"""Burgers: the solver's physics (Cole-Hopf, mean, energy, 4th-order time convergence), the periodic GRF, the
datamodule (generation, cache, tasks, public formats) and its configs through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from scipy.special import ive

from datamodules.burgers import BurgersDataModule
from datamodules.grf_periodic import grf_eigenvalues, sample_grf_periodic
from datamodules.solvers.burgers import solve_burgers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """Small FFTs in a loop: on a busy 2-core machine a second intra-op thread makes them ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grid(n: int) -> np.ndarray:
    return np.arange(n) / n


def _grf(n_samples: int, n: int, seed: int = 0, **kw) -> torch.Tensor:
    kw = {"scale": 625.0, "tau": 5.0, "alpha": 2.0, **kw}
    return sample_grf_periodic(n_samples, n, 1, torch.Generator().manual_seed(seed), **kw)


def cole_hopf_sine(x: np.ndarray, t: float, nu: float, amplitude: float = 1.0, n_terms: int = 200) -> np.ndarray:
    """Exact solution for ``u0 = A sin(2 pi x)``: ``u = -2 nu phi_x / phi``, ``phi`` solving the heat equation
    from ``phi0 = exp(-a (1 - cos 2 pi x))``, ``a = A / (4 pi nu)``; its Fourier series has Bessel coefficients
    (``ive``: scaled by ``e^-a``, which cancels in the ratio)."""
    a = amplitude / (4 * math.pi * nu)
    k = np.arange(1, n_terms + 1)[:, None]
    c = 2 * ive(k, a) * np.exp(-nu * (2 * math.pi * k) ** 2 * t)
    phi = ive(0, a) + (c * np.cos(2 * math.pi * k * x)).sum(0)
    phi_x = (-2 * math.pi * k * c * np.sin(2 * math.pi * k * x)).sum(0)
    return -2 * nu * phi_x / phi


# ---------------------------------------------------------------------- the solver's physics
@pytest.mark.parametrize("nu, n", [(0.05, 256), (0.01, 1024)])
def test_solution_matches_cole_hopf(nu, n):
    x = _grid(n)
    u = solve_burgers(torch.tensor(np.sin(2 * np.pi * x)), nu, t_final=1.0, n_intervals=4)
    for j, t in enumerate((0.25, 0.5, 0.75, 1.0), start=1):
        assert np.abs(u[j].numpy() - cole_hopf_sine(x, t, nu)).max() < 2e-7, t


def test_mean_is_conserved_and_energy_never_grows():
    u0 = _grf(4, 256) + torch.tensor([0.0, 0.3, -0.7, 1.5])[:, None]  # nonzero means move the profiles
    u = solve_burgers(u0, 0.01, t_final=1.0, n_intervals=50)
    mean = u.mean(-1)
    torch.testing.assert_close(mean, mean[:, :1].expand_as(mean), rtol=0, atol=1e-13)
    energy = 0.5 * (u**2).mean(-1)
    assert (energy[:, 1:] <= energy[:, :-1]).all()
    assert (energy[:, -1] < 0.9 * energy[:, 0]).all()  # viscosity does dissipate


def test_time_step_refinement_converges_at_fourth_order():
    # advection-dominated (nu = 0.01, the default): ETDRK4's classical order 4. With strong diffusion and a weak
    # nonlinearity (e.g. nu = 0.1) its errors are far smaller but show Cox-Matthews' known stiff order reduction.
    u0 = _grf(2, 256)
    ref = solve_burgers(u0, 0.01, t_final=0.5, dt=0.5 / 2560)[:, -1]
    errors = [(solve_burgers(u0, 0.01, t_final=0.5, dt=0.5 / m)[:, -1] - ref).abs().max().item() for m in (40, 80, 160)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(3.7 < p < 4.3 for p in orders), (errors, orders)


def test_automatic_step_is_accurate_at_the_defaults():
    u0 = _grf(2, 1024, seed=3)
    ref = solve_burgers(u0, 0.01, dt=1e-4)[:, -1]
    auto = solve_burgers(u0, 0.01)[:, -1]
    assert ((auto - ref).abs().max() / ref.abs().max()).item() < 1e-6


def test_a_sample_does_not_depend_on_its_batch():
    u0 = _grf(3, 256, seed=1)
    u0[2] *= 3.0  # a faster sample gets more steps; the others must not follow it
    batch = solve_burgers(u0, 0.01)
    alone = solve_burgers(u0[:1], 0.01)
    torch.testing.assert_close(batch[:1], alone, rtol=0, atol=1e-12)


def test_solution_stays_in_the_dealiased_band_and_follows_the_input_device():
    u0 = _grf(2, 64).float()
    u = solve_burgers(u0, 0.01, n_intervals=2)
    assert u.dtype == torch.float64 and u.device == u0.device and u.shape == (2, 3, 64)
    spectrum = torch.fft.rfft(u, dim=-1).abs()
    assert spectrum[..., 22:].max() < 1e-12  # the 2/3 rule keeps |k| <= (64 - 1) // 3 = 21


def test_solver_rejects_bad_arguments():
    with pytest.raises(ValueError, match="even number n >= 8"):
        solve_burgers(torch.zeros(2, 63), 0.01)
    with pytest.raises(ValueError, match="viscosity >= 0"):
        solve_burgers(torch.zeros(2, 64), -1.0)
    with pytest.raises(RuntimeError, match="blew up.*smaller dt"):
        solve_burgers(10 * _grf(1, 256), 1e-3, dt=0.05)


def test_periodic_grf_has_the_prescribed_spectrum():
    n, samples = 32, 4000
    g = _grf(samples, n, seed=5, zero_mean=False)
    coeff = torch.fft.fft(g, dim=-1, norm="forward")  # g = sum_k c_k e^{2 pi i k x}
    var = (coeff.abs() ** 2).mean(0)
    lam = grf_eigenvalues(n, 1, scale=625.0, tau=5.0, alpha=2.0, zero_mean=False)
    ratio = var[:8] / lam[:8]  # the modes that carry the variance; E|c_k|^2 = lambda_k
    assert (ratio - 1).abs().max() < 0.1, ratio  # relative standard error ~ sqrt(1/n) = 1.6%
    assert var[n // 2] < 1e-30  # no Nyquist mode
    assert _grf(3, n, zero_mean=True).mean(-1).abs().max() < 1e-14


# ---------------------------------------------------------------------- the datamodule
SMALL = dict(n_train=20, n_test=4, resolution=32, test_resolutions=[32, 64], solve_resolution=128, batch_size=4)


def _ready(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def small_burgers(tmp_path):
    def make(**overrides) -> BurgersDataModule:
        return BurgersDataModule(**{**SMALL, "data_dir": str(tmp_path / "data"), **overrides})

    return make


def test_defaults_are_the_papers_setting():
    dm = BurgersDataModule()
    assert (dm.task, dm.viscosity, dm.resolution, dm.solve_resolution, dm.n_train, dm.n_test) == (
        "final", 0.01, 128, 1024, 1000, 200
    )
    assert (dm.in_channels, dm.out_channels, dm.n_dims, dm.complex_data) == (1, 1, 1, False)


def test_generated_data_is_cached_deterministic_and_the_same_at_every_resolution(small_burgers, tmp_path, monkeypatch):
    dm = _ready(small_burgers())
    x, y = dm._splits["train"].x, dm._splits["train"].y
    assert x.shape == y.shape == (18, 1, 32) and x.dtype == torch.float32
    t32, t64 = dm._tests
    # zero-mean initial conditions, and the mean is conserved (on 64 points no kept mode aliases onto k = 0)
    assert t64.x.mean(-1).abs().max() < 1e-6 and t64.y.mean(-1).abs().max() < 1e-6
    assert dm.test_names == ["res32", "res64"] and torch.equal(t32.y, t64.y[..., ::2])

    again = small_burgers()
    monkeypatch.setattr(again, "generate", lambda *a: pytest.fail("regenerated cached data"))
    torch.testing.assert_close(_ready(again)._splits["train"].y, y)
    elsewhere = _ready(small_burgers(data_dir=str(tmp_path / "elsewhere")))
    assert torch.equal(elsewhere._splits["train"].y, y)
    assert not torch.equal(_ready(small_burgers(viscosity=0.05))._splits["train"].y, y)  # in the cache key


def test_generated_pairs_are_initial_conditions_and_their_burgers_solutions(small_burgers):
    dm = _ready(small_burgers(n_train=4, resolution=64, test_resolutions=[64], solve_resolution=64, batch_size=2))
    x, y = (t[:, 0].double() for t in dm._splits["train"][:2])  # physical units (encoded in the loaders)
    torch.testing.assert_close(solve_burgers(x, 0.01)[:, -1], y, rtol=0, atol=1e-5)
    assert (y.abs().amax(-1) <= x.abs().amax(-1) + 1e-6).all()  # maximum principle


def test_trajectory_task_has_t_plus_one_output_channels(small_burgers):
    dm = small_burgers(task="trajectory", trajectory_steps=4)
    assert dm.out_channels == 5  # known right after __init__, for the CLI's link into the model
    _ready(dm)
    x, y = dm._splits["train"].x, dm._splits["train"].y
    assert y.shape == (18, 5, 32)
    torch.testing.assert_close(x[:, 0], y[:, 0])  # the trajectory starts at u0
    final = _ready(small_burgers())
    torch.testing.assert_close(y[:, -1], final._splits["train"].y[:, 0], rtol=0, atol=1e-5)


def _write_mat_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, arrays stored column-major (axes reversed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in arrays.items():
            f[k] = np.ascontiguousarray(v.T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


def _trajectories(n=12, times=5, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, times, s, generator=g)
    return y[:, 0].clone(), y


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_fno_mat_files_load_subsampled_and_the_test_samples_are_the_last(tmp_path, version):
    x, y = _trajectories(n=12, times=1)
    a, u = x.numpy(), y[:, 0].numpy() * 2
    path = tmp_path / "burgers.mat"
    if version == "v5":
        scipy.io.savemat(path, {"a": a, "u": u})
    else:
        _write_mat_v73(path, {"a": a, "u": u})
    dm = BurgersDataModule(
        train_file=str(path), test_files=[str(path)], n_train=8, n_test=3, resolution=32, test_resolutions=[32, 64],
        batch_size=2,
    )
    dm.setup("fit")
    train = torch.cat([dm._splits["train"].y, dm._splits["val"].y])
    torch.testing.assert_close(train[:, 0], torch.from_numpy(u[:8, ::2]))
    torch.testing.assert_close(dm._tests[1].y[:, 0], torch.from_numpy(u[-3:]))  # the last 3 at full resolution
    assert dm.test_names == ["res32", "res64"]
    with pytest.raises(ValueError, match="only 12 samples, so they would overlap"):
        BurgersDataModule(train_file=str(path), test_files=[str(path)], n_train=10, n_test=3, resolution=32,
                          batch_size=2).setup("fit")


def test_neuraloperator_pt_files_give_either_task(tmp_path, write_pt, caplog):
    x, y = _trajectories(n=12, times=5, s=16)
    train = write_pt("train.pt", {"x": x, "y": y, "visc": torch.tensor([[0.1]])})
    test = write_pt("test.pt", {"x": x[:4], "y": y[:4]})
    files = dict(train_file=train, test_files=[test], n_train=12, n_test=4, resolution=16, batch_size=2)
    final = BurgersDataModule(**files)
    final.setup("fit")
    assert "visc=0.1 but viscosity=0.01" in caplog.text
    torch.testing.assert_close(final._splits["train"].y[:, 0], y[:11, -1])  # 11 train + 1 validation
    traj = BurgersDataModule(task="trajectory", trajectory_steps=4, **files)
    traj.setup("fit")
    torch.testing.assert_close(traj._tests[0].y, y[:4])
    with pytest.raises(ValueError, match=r"'y' has 5 time\(s\).*set trajectory_steps=4"):
        BurgersDataModule(task="trajectory", trajectory_steps=10, **files).setup("fit")


# ---------------------------------------------------------------------- bad input: clear errors before training
def _files(tmp_path, write_pt, train_obj, **kw):
    test = write_pt("ok_test.pt", {"x": torch.zeros(4, 16), "y": torch.zeros(4, 16)})
    args = dict(train_file=write_pt("bad.pt", train_obj), test_files=[test], n_train=12, n_test=4, resolution=16,
                batch_size=2)
    return BurgersDataModule(**{**args, **kw})


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"a": torch.zeros(12, 16), "u": torch.zeros(12, 16)}, r"no key\(s\) \['x', 'y'\]; found \['a', 'u'\]"),
        ({"x": torch.zeros(12, 1, 1, 16), "y": torch.zeros(12, 16)}, r"'x' is \(12, 1, 1, 16\); expected \(N, s\)"),
        ({"x": torch.zeros(12, 16), "y": torch.zeros(10, 16)}, "x has 12 samples but y has 10"),
        ({"x": torch.zeros(12, 16, dtype=torch.int64), "y": torch.zeros(12, 16)}, "dtype torch.int64"),
        ({"x": torch.zeros(12, 16), "y": torch.full((12, 16), float("nan"))}, r"'y' contains 192 NaN/Inf"),
        ({"x": torch.zeros(12, 24), "y": torch.zeros(12, 24)}, r"16 cannot .* the 24 grid points.*of 24"),
        ({"x": torch.zeros(6, 16), "y": torch.zeros(6, 16)}, r"has 6 samples but n_train=12 asks for more"),
    ],
    ids=["keys", "shape", "count", "dtype", "nan", "resolution", "too-few"],
)
def test_bad_files_fail_clearly_at_setup(tmp_path, write_pt, obj, message):
    with pytest.raises(ValueError, match=message):
        _files(tmp_path, write_pt, obj).setup("fit")


def test_bad_mat_files_fail_clearly(tmp_path, write_pt):
    path = tmp_path / "k.mat"
    scipy.io.savemat(path, {"input": np.zeros((4, 16)), "output": np.zeros((4, 16))})
    args = dict(test_files=[str(path)], n_train=4, n_test=2, resolution=16, batch_size=2)
    with pytest.raises(ValueError, match=r"no key\(s\) \['a', 'u'\]; found \['input', 'output'\]"):
        BurgersDataModule(train_file=str(path), **args).setup("fit")
    scipy.io.savemat(path, {"a": np.zeros((4, 16)), "u": np.zeros((4, 16))})
    with pytest.raises(ValueError, match="holds only the final time"):
        BurgersDataModule(task="trajectory", train_file=str(path), **args).setup("fit")
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file at all " * 20)
    with pytest.raises(ValueError, match="garbage.mat"):
        BurgersDataModule(train_file=str(garbage), **args).setup("fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(resolution=100), r"resolution 100 cannot be subsampled from solve_resolution=1024"),
        (dict(test_resolutions=[128, 2048]), r"resolution 2048 cannot be subsampled"),
        (dict(solve_resolution=1001), r"solve_resolution=1001 is invalid"),
        (dict(task="final_time"), r"task='final_time' is invalid"),
        (dict(trajectory_steps=0), r"trajectory_steps=0 is invalid"),
        (dict(viscosity=0.0), r"viscosity=0.0 is invalid"),
        (dict(grf_alpha=0.5), r"finite variance"),
        (dict(dt=-1e-3), r"dt=-0.001 is invalid"),
    ],
)
def test_invalid_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BurgersDataModule(**kwargs)


# ---------------------------------------------------------------------- configs and the CLI
CONFIGS = sorted(p for p in (REPO / "configs").rglob("burgers*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_parses_into_a_periodic_1d_burgers_model(config, tmp_path):
    from app.cli import cli_main

    cli = cli_main(["-c", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.datamodule, BurgersDataModule)
    assert cli.model.model.out_channels == cli.datamodule.out_channels
    if "data" not in config.parts:  # a data config is composed with a model config of the user's choice
        assert len(cli.model.model.n_modes) == 1
    assert cli.model.val_metrics["h1"].periodic


def test_tiny_fit_through_the_cli(tmp_path):
    from app.cli import cli_main

    cli = cli_main([
        "fit", "-c", str(REPO / "configs/experiments/burgers_tensor_galore.yaml"),
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--model.model.init_args.n_modes=[8]", "--model.model.init_args.hidden_channels=8",
        "--model.model.init_args.n_layers=2",
        f"--data.init_args.data_dir={tmp_path / 'data'}", "--data.init_args.n_train=24", "--data.init_args.n_test=6",
        "--data.init_args.resolution=32", "--data.init_args.test_resolutions=[32,64]",
        "--data.init_args.solve_resolution=128", "--data.init_args.batch_size=8",
    ])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 3
    for name in ("res32", "res64"):
        assert 0 < float(metrics[f"test/l2_{name}"]) < 10
