"""Navier-Stokes: the solver's physics (sign conventions, exact solutions, invariants of the inviscid unforced flow,
4th-order time convergence), the 2-D periodic GRF, the datamodule (tasks, cache, public formats) and its configs."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from datamodules.grf_periodic import grf_eigenvalues, sample_grf_periodic
from datamodules.navier_stokes import NavierStokesDataModule
from datamodules.solvers.navier_stokes import (
    energy,
    enstrophy,
    fno_forcing,
    solve_navier_stokes,
    velocity,
    vorticity_tendency,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """Small FFTs in a loop: on a busy 2-core machine a second intra-op thread makes them ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _xy(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float64) / n
    return torch.meshgrid(x, x, indexing="ij")


def _w0(n_samples: int, n: int, seed: int = 0, scale: float = 686.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sample_grf_periodic(n_samples, n, 2, g, scale=scale, tau=7.0, alpha=2.5)


# ---------------------------------------------------------------------- the solver's physics
def test_tendency_matches_a_hand_computed_advection():
    # w = cos 2pi x + cos 4pi y: psi = cos(2pi x) / 4pi^2 + cos(4pi y) / 16pi^2, u = psi_y = -sin(4pi y) / 4pi,
    # v = -psi_x = sin(2pi x) / 2pi, so u w_x + v w_y = -1.5 sin(2pi x) sin(4pi y): pins the signs of u = curl psi
    X, Y = _xy(32)
    w = torch.cos(2 * math.pi * X) + torch.cos(4 * math.pi * Y)
    expected = 1.5 * torch.sin(2 * math.pi * X) * torch.sin(4 * math.pi * Y)
    torch.testing.assert_close(vorticity_tendency(w, 0.0), expected, rtol=0, atol=1e-12)


def test_velocity_is_divergence_free_and_its_curl_is_the_vorticity():
    w = _w0(2, 32)
    u, v = velocity(w)
    k = 2 * math.pi * torch.fft.fftfreq(32, 1 / 32, dtype=torch.float64)
    dx = lambda f: torch.fft.ifft(1j * k[:, None] * torch.fft.fft(f, dim=-2), dim=-2).real  # noqa: E731
    dy = lambda f: torch.fft.ifft(1j * k[None, :] * torch.fft.fft(f, dim=-1), dim=-1).real  # noqa: E731
    assert (dx(u) + dy(v)).abs().max() < 1e-12
    torch.testing.assert_close(dx(v) - dy(u), w, rtol=0, atol=1e-10)


def test_a_single_shell_decays_exactly_and_the_forced_response_is_exact():
    X, Y = _xy(32)
    nu = 0.01
    # modes with |k| = 1 only: u . grad w = 0, so w(t) = w0 exp(-nu |2 pi k|^2 t)
    w0 = torch.sin(2 * math.pi * X) + torch.cos(2 * math.pi * Y) + 0.5 * torch.cos(2 * math.pi * X)
    w = solve_navier_stokes(w0, nu, n_snapshots=2)
    torch.testing.assert_close(w[-1], w0 * math.exp(-nu * 4 * math.pi**2 * 2), rtol=0, atol=1e-12)
    # from rest, the FNO forcing (the shell |k|^2 = 2) builds w = f (1 - exp(-lam t)) / lam, lam = 8 pi^2 nu
    f = fno_forcing(32)
    lam = 8 * math.pi**2 * nu
    w = solve_navier_stokes(torch.zeros(32, 32), nu, forcing=f, n_snapshots=3)
    torch.testing.assert_close(w[-1], f * (1 - math.exp(-lam * 3)) / lam, rtol=0, atol=1e-12)


def test_inviscid_unforced_flow_keeps_energy_and_enstrophy_to_the_integrators_order():
    w0 = _w0(2, 32, scale=686.0 * 25)  # a vigorous flow: the vorticity changes by ~60% over t = 1
    drifts = []
    for m in (20, 40, 80):
        w = solve_navier_stokes(w0, 0.0, n_snapshots=1, dt=1.0 / m)
        assert ((w[:, -1] - w[:, 0]).norm() / w[:, 0].norm()) > 0.3
        drifts.append([((q(w[:, -1]) - q(w[:, 0])) / q(w[:, 0])).abs().max().item() for q in (energy, enstrophy)])
    drifts = np.array(drifts)
    orders = np.log2(drifts[:-1] / drifts[1:])
    assert drifts[-1].max() < 1e-7, drifts
    assert (orders > 3.8).all(), orders  # RK4 (ETDRK4 with L = 0) dissipates at O(dt^5) per unit time


def test_time_step_refinement_converges_at_fourth_order():
    w0 = _w0(2, 32, scale=686.0 * 25)
    f = fno_forcing(32)
    ref = solve_navier_stokes(w0, 1e-3, forcing=f, n_snapshots=1, dt=1 / 640)[:, -1]
    errors = [(solve_navier_stokes(w0, 1e-3, forcing=f, n_snapshots=1, dt=1 / m)[:, -1] - ref).abs().max().item()
              for m in (20, 40, 80)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(3.7 < p < 4.4 for p in orders), (errors, orders)


def test_automatic_step_is_accurate_and_a_sample_does_not_depend_on_its_batch():
    w0 = _w0(3, 32, seed=2)
    w0[2] *= 4.0  # a faster flow gets more steps; the others must not follow it
    f = fno_forcing(32)
    auto = solve_navier_stokes(w0, 1e-3, forcing=f, n_snapshots=5)
    ref = solve_navier_stokes(w0, 1e-3, forcing=f, n_snapshots=5, dt=0.005)
    rel = ((auto - ref).norm(dim=(-2, -1)) / ref.norm(dim=(-2, -1))).amax(1)
    assert (rel[:2] < 1e-6).all() and rel[2] < 1e-4, rel  # the fast flow's steps are CFL-limited
    alone = solve_navier_stokes(w0[:1], 1e-3, forcing=f, n_snapshots=5)
    torch.testing.assert_close(auto[:1], alone, rtol=0, atol=1e-12)


def test_solver_rejects_bad_arguments():
    with pytest.raises(ValueError, match="even number n >= 8"):
        solve_navier_stokes(torch.zeros(2, 7, 7), 1e-3)
    with pytest.raises(ValueError, match=r"forcing has shape \(16, 16\), expected \(32, 32\)"):
        solve_navier_stokes(torch.zeros(2, 32, 32), 1e-3, forcing=fno_forcing(16))
    with pytest.raises(RuntimeError, match="blew up"):
        solve_navier_stokes(_w0(1, 32, scale=686.0 * 1e4), 0.0, n_snapshots=5, dt=0.5)


def test_periodic_grf_2d_has_zero_mean_and_the_prescribed_spectrum():
    n, samples = 16, 3000
    g = _w0(samples, n, seed=4, scale=1.0)
    coeff = torch.fft.fft2(g, norm="forward")
    var = (coeff.abs() ** 2).mean(0)
    lam = grf_eigenvalues(n, 2, scale=1.0, tau=7.0, alpha=2.5, zero_mean=True)
    assert g.mean(dim=(-2, -1)).abs().max() < 1e-15
    low = [(i, j) for i in range(-2, 3) for j in range(-2, 3) if (i, j) != (0, 0)]
    ratios = torch.tensor([var[i, j] / lam[i, j] for i, j in low])
    assert (ratios - 1).abs().max() < 0.12, ratios  # relative standard error sqrt(1/3000) ~ 1.8%


# ---------------------------------------------------------------------- the datamodule
SMALL = dict(t_in=3, t_out=2, n_train=10, n_test=3, resolution=16, test_resolutions=[16, 32], solve_resolution=32,
             batch_size=2)


def _ready(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def small_ns(tmp_path):
    def make(**overrides) -> NavierStokesDataModule:
        return NavierStokesDataModule(**{**SMALL, "data_dir": str(tmp_path / "data"), **overrides})

    return make


def test_defaults_and_channels_are_known_after_init():
    dm = NavierStokesDataModule()
    assert (dm.task, dm.viscosity, dm.resolution, dm.t_in, dm.t_out, dm.n_train, dm.n_test) == (
        "history", 1e-3, 64, 10, 10, 1000, 200
    )
    assert (dm.in_channels, dm.out_channels, dm.n_dims) == (10, 10, 2)
    assert (NavierStokesDataModule(task="one_step").in_channels, NavierStokesDataModule(t_out=40).out_channels) == (
        1, 40
    )


def test_both_tasks_share_one_cache_of_whole_trajectories(small_ns, monkeypatch):
    hist = _ready(small_ns())
    x, y = hist._splits["train"].x, hist._splits["train"].y
    assert x.shape == (9, 3, 16, 16) and y.shape == (9, 2, 16, 16)
    t16, t32 = hist._tests
    assert hist.test_names == ["res16", "res32"] and torch.equal(t16.y, t32.y[..., ::2, ::2])

    one = small_ns(task="one_step")
    monkeypatch.setattr(one, "generate", lambda *a: pytest.fail("regenerated cached data"))
    _ready(one)
    ox = torch.cat([one._splits["train"].x, one._splits["val"].x])
    oy = torch.cat([one._splits["train"].y, one._splits["val"].y])
    assert ox.shape == oy.shape == (10 * 4, 1, 16, 16)  # 4 consecutive pairs per trajectory of 5 snapshots
    snaps = torch.cat([x, y], dim=1)  # trajectory 0..8: w(1..5)
    torch.testing.assert_close(ox[:4, 0], snaps[0, :4])
    torch.testing.assert_close(oy[:4, 0], snaps[0, 1:])


def test_generated_snapshots_are_navier_stokes_solutions(small_ns):
    dm = _ready(small_ns(n_train=2, batch_size=1, resolution=32, test_resolutions=[32]))
    x, y = dm._splits["train"].x.double(), dm._splits["train"].y.double()
    # w(3) -> w(4), w(5) again with the solver, from the stored (float32) snapshot
    again = solve_navier_stokes(x[:, -1], 1e-3, forcing=fno_forcing(32), n_snapshots=2)[:, 1:]
    torch.testing.assert_close(again, y, rtol=0, atol=1e-5)
    assert x.mean(dim=(-2, -1)).abs().max() < 1e-6  # zero-mean vorticity


def _write_mat_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, arrays stored column-major (axes reversed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in arrays.items():
            f[k] = np.ascontiguousarray(v.T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


def _fno_u(n=8, s=16, times=6) -> np.ndarray:
    """``u[n, i, j, t]`` that encodes its own indices, so orientation and ordering errors show."""
    n_, i, j, t = np.meshgrid(np.arange(n), np.arange(s), np.arange(s), np.arange(times), indexing="ij")
    return (1000.0 * n_ + 100.0 * t + i + 0.01 * j).astype(np.float32)


@pytest.mark.parametrize("version", ["v5", "v7.3"])
def test_fno_mat_files_keep_the_orientation_and_take_the_last_trajectories_for_testing(tmp_path, version):
    u = _fno_u()
    path = tmp_path / "ns.mat"
    if version == "v5":
        scipy.io.savemat(path, {"a": u[..., 0], "u": u, "t": np.arange(6)})
    else:
        _write_mat_v73(path, {"a": u[..., 0], "u": u})
    dm = NavierStokesDataModule(
        t_in=2, t_out=3, train_file=str(path), test_files=[str(path)], n_train=5, n_test=3, resolution=8,
        test_resolutions=[8, 16], batch_size=2,
    )
    dm.setup("fit")
    x = torch.cat([dm._splits["train"].x, dm._splits["val"].x])
    y = dm._splits["val"].y
    torch.testing.assert_close(x, torch.from_numpy(u[:5, ::2, ::2, :2]).permute(0, 3, 1, 2))
    torch.testing.assert_close(y, torch.from_numpy(u[4:5, ::2, ::2, 2:5]).permute(0, 3, 1, 2))
    test16 = dm._tests[1]
    torch.testing.assert_close(test16.y, torch.from_numpy(u[5:, :, :, 2:5]).permute(0, 3, 1, 2))
    one = NavierStokesDataModule(task="one_step", t_in=2, t_out=3, train_file=str(path), test_files=[str(path)],
                                 n_train=5, n_test=3, resolution=16, batch_size=2)
    one.setup("fit")
    assert len(one._tests[0].x) == 3 * 4  # 4 pairs in each of the last 3 trajectories
    torch.testing.assert_close(one._tests[0].y[0, 0], torch.from_numpy(u[5, :, :, 1]))
    with pytest.raises(ValueError, match="has only 8 trajectories, so they would overlap"):
        NavierStokesDataModule(t_in=2, t_out=3, train_file=str(path), test_files=[str(path)], n_train=6, n_test=3,
                               resolution=8, batch_size=2).setup("fit")


def test_neuraloperator_pt_pairs_load_for_the_one_step_task(tmp_path, write_pt):
    g = torch.Generator().manual_seed(0)
    train = write_pt("nsforcing_train_32.pt", {"x": torch.randn(10, 32, 32, generator=g),
                                                "y": torch.randn(10, 32, 32, generator=g)})
    test = write_pt("nsforcing_test_32.pt", {"x": torch.randn(4, 32, 32, generator=g),
                                              "y": torch.randn(4, 32, 32, generator=g)})
    args = dict(train_file=train, test_files=[test], n_train=10, n_test=4, resolution=16, batch_size=2)
    dm = NavierStokesDataModule(task="one_step", **args)
    dm.setup("fit")
    raw = torch.load(test, weights_only=True)
    torch.testing.assert_close(dm._tests[0].y[:, 0], raw["y"][:, ::2, ::2])
    with pytest.raises(ValueError, match=r"'x' has 1 channel\(s\) but task=history .* needs 10"):
        NavierStokesDataModule(task="history", **args).setup("fit")


# ---------------------------------------------------------------------- bad input: clear errors before training
@pytest.mark.parametrize(
    "arrays, kwargs, message",
    [
        ({"w": _fno_u()}, {}, r"no key\(s\) \['u'\]; found \['w'\]"),
        ({"u": _fno_u()[..., 0]}, {}, r"'u' is \(8, 16, 16\); expected \(N, s, s, T\)"),
        ({"u": _fno_u(times=4)}, {}, r"4 snapshots per trajectory but t_in \+ t_out = 5"),
        ({"u": _fno_u()}, {"n_train": 20}, r"has 8 trajectories but n_train=20 asks for more"),
        ({"u": _fno_u(s=12)}, {}, r"resolution 8 cannot be subsampled from the 12 grid points.*divisor of 12"),
        ({"u": np.where(_fno_u() == 100.0, np.nan, _fno_u())}, {}, r"'x' contains 1 NaN/Inf values"),
    ],
    ids=["keys", "shape", "snapshots", "count", "resolution", "nan"],
)
def test_bad_mat_files_fail_clearly_at_setup(tmp_path, arrays, kwargs, message):
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, arrays)
    ok = tmp_path / "ok.mat"
    scipy.io.savemat(ok, {"u": _fno_u()})
    args = dict(t_in=2, t_out=3, train_file=str(path), test_files=[str(ok)], n_train=6, n_test=2, resolution=8,
                batch_size=2)
    with pytest.raises(ValueError, match=message):
        NavierStokesDataModule(**{**args, **kwargs}).setup("fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(resolution=48), r"resolution 48 cannot be subsampled from solve_resolution=64"),
        (dict(test_resolutions=[64, 128]), r"resolution 128 cannot be subsampled"),
        (dict(task="rollout"), r"task='rollout' is invalid"),
        (dict(t_in=0), r"t_in=0 is invalid"),
        (dict(viscosity=-1e-3), r"viscosity=-0.001"),
        (dict(grf_alpha=1.0), r"finite variance"),
        (dict(solve_resolution=63), r"solve_resolution=63 is invalid"),
    ],
)
def test_invalid_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NavierStokesDataModule(**kwargs)


# ---------------------------------------------------------------------- configs and the CLI
CONFIGS = sorted(p for p in (REPO / "configs").rglob("navier_stokes*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_parses_into_a_periodic_2d_model_with_linked_channels(config, tmp_path):
    from app.cli import cli_main

    cli = cli_main(["-c", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    dm = cli.datamodule
    assert isinstance(dm, NavierStokesDataModule)
    assert (cli.model.model.in_channels, cli.model.model.out_channels) == (dm.in_channels, dm.out_channels)
    assert len(cli.model.model.n_modes) == 2 and cli.model.val_metrics["h1"].periodic


def test_tiny_fit_through_the_cli(tmp_path):
    from app.cli import cli_main

    cli = cli_main([
        "fit", "-c", str(REPO / "configs/experiments/navier_stokes_tensor_galore.yaml"),
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--model.model.init_args.n_modes=[4,4]", "--model.model.init_args.hidden_channels=8",
        "--model.model.init_args.n_layers=2",
        f"--data.init_args.data_dir={tmp_path / 'data'}", "--data.init_args.task=one_step",
        "--data.init_args.t_in=2", "--data.init_args.t_out=2", "--data.init_args.n_train=8",
        "--data.init_args.n_test=2", "--data.init_args.resolution=16", "--data.init_args.test_resolutions=[16,32]",
        "--data.init_args.solve_resolution=32", "--data.init_args.batch_size=4",
    ])
    assert cli.trainer.global_step == 3 and cli.model.model.in_channels == 1
    metrics = cli.trainer.callback_metrics
    for name in ("res16", "res32"):
        assert 0 < float(metrics[f"test/l2_{name}"]) < 10
