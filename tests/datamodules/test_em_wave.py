"""EM wave: the split-step NLSE solver is a real solver (exact limits, an independent integrator, second order),
and EMWaveDataModule generates, caches, reads its plain .pt format, refuses bad files and trains through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datamodules.em_wave import (
    GAMMA_PER_W_MM,
    EMWaveDataModule,
    draw_parameters,
    input_pulses,
    phase_mismatch,
)
from datamodules.solvers.nlse import angular_frequencies, propagate, split_step, time_grid

REPO = Path(__file__).resolve().parents[2]

# A tiny generated problem: 16 + 4 pulses on a 64-point solver grid of 512 fs, trained at 32 and tested at 32, 64.
TINY = dict(
    n_train=16, n_test=4, resolution=32, test_resolutions=[32, 64], solve_resolution=64, t_window_fs=512.0,
    batch_size=4, solver_device="cpu",
)


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: intra-op threads only add overhead (and are very slow on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pulses(n=128, t_window=400.0, batch=3, seed=0):
    """A batch of chirped sech/Gaussian pulses of a few W peak power on ``n`` points."""
    g = torch.Generator().manual_seed(seed)
    t = time_grid(n, t_window)
    return t, input_pulses(
        t,
        energy_fj=100 + 900 * torch.rand(batch, generator=g, dtype=torch.float64),
        fwhm_fs=30 + 20 * torch.rand(batch, generator=g, dtype=torch.float64),
        chirp=4 * torch.rand(batch, generator=g, dtype=torch.float64) - 2,
        shape=torch.arange(batch) % 2,
        phase=2 * math.pi * torch.rand(batch, generator=g, dtype=torch.float64),
    )


STRONG = dict(beta2=-50.0, gamma=0.05, kappa=0.3)  # every term matters over a few mm (nonlinear phase ~ 5 rad)


# ---------------------------------------------------------------------- solver: exact limits
def test_without_nonlinearity_and_coupling_the_output_is_the_exact_dispersive_solution():
    _, a0 = _pulses()
    length = torch.tensor([2.0, 7.5, 15.0], dtype=torch.float64)
    out = split_step(a0, 400.0, length, 3, beta2=-50.0, gamma=0.0, kappa=0.0, dk=torch.tensor([-9.0, 0.0, 4.0]))
    w = angular_frequencies(128, 400.0)
    exact = torch.fft.ifft(torch.fft.fft(a0) * torch.exp(0.5j * -50.0 * w**2 * length[:, None]))
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-12)
    assert not torch.allclose(out.abs(), a0.abs(), atol=1e-3)  # the pulses did change


def test_pure_self_phase_modulation_keeps_the_modulus_pointwise_and_adds_phase_gamma_power_z():
    _, a0 = _pulses()
    length = torch.tensor([2.0, 7.5, 15.0], dtype=torch.float64)
    out = split_step(a0, 400.0, length, 2, beta2=0.0, gamma=0.05, kappa=0.0, dk=torch.tensor([3.0, -1.0, 0.0]))
    torch.testing.assert_close(out.abs(), a0.abs(), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, a0 * torch.exp(1j * 0.05 * a0.abs() ** 2 * length[:, None]), rtol=0, atol=1e-12)


def test_energy_is_conserved_without_parametric_coupling_whatever_the_step():
    _, a0 = _pulses()
    energy = (a0.abs() ** 2).sum(-1)
    for n_steps in (1, 7, 64):
        out = split_step(a0, 400.0, 10.0, n_steps, beta2=-50.0, gamma=0.05, kappa=0.0, dk=5.0)
        torch.testing.assert_close((out.abs() ** 2).sum(-1), energy, rtol=1e-12, atol=0)


def test_phase_matched_coupling_amplifies_one_quadrature_and_damps_the_other():
    _, a0 = _pulses()
    kappa, length = 0.2, 6.0
    out = split_step(a0, 400.0, length, 1, beta2=0.0, gamma=0.0, kappa=kappa, dk=0.0)
    exact = math.cosh(kappa * length) * a0 + 1j * math.sinh(kappa * length) * a0.conj()
    torch.testing.assert_close(out, exact, rtol=0, atol=1e-12)
    # the quadrature at phase pi/4 grows by exp(kappa L), the one at -pi/4 shrinks by exp(-kappa L)
    grow, damp = torch.tensor(0.25j * math.pi).exp(), torch.tensor(-0.25j * math.pi).exp()
    torch.testing.assert_close(split_step(grow.view(1, 1).expand(1, 8).clone(), 1.0, length, 1, beta2=0.0, gamma=0.0,
                                          kappa=kappa)[0, 0], grow * math.exp(kappa * length))
    torch.testing.assert_close(split_step(damp.view(1, 1).expand(1, 8).clone(), 1.0, length, 1, beta2=0.0, gamma=0.0,
                                          kappa=kappa)[0, 0], damp * math.exp(-kappa * length))


# ---------------------------------------------------------------------- solver: the full equation
def test_full_equation_matches_an_independent_ode_integrator_in_the_lab_frame():
    from scipy.integrate import solve_ivp

    n, t_window, length, dk = 64, 300.0, 3.0, 1.7
    _, a0 = _pulses(n, t_window, batch=1)
    a0 = a0[0].numpy()
    w = angular_frequencies(n, t_window).numpy()
    p = STRONG

    def rhs(z, v):  # method of lines, no rotating frame, no splitting
        a = v[:n] + 1j * v[n:]
        da = (
            -0.5j * p["beta2"] * np.fft.ifft(-(w**2) * np.fft.fft(a))
            + 1j * p["gamma"] * np.abs(a) ** 2 * a
            + 1j * p["kappa"] * np.conj(a) * np.exp(1j * dk * z)
        )
        return np.concatenate([da.real, da.imag])

    sol = solve_ivp(rhs, (0, length), np.concatenate([a0.real, a0.imag]), method="DOP853", rtol=1e-11, atol=1e-11)
    reference = sol.y[:n, -1] + 1j * sol.y[n:, -1]
    assert np.abs(reference - a0).max() > 0.1 * np.abs(a0).max()  # a nontrivial propagation
    ours = propagate(torch.from_numpy(a0), t_window, length, dk=dk, rtol=1e-7, **p).field.numpy()
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-6


def test_strang_splitting_converges_at_second_order():
    _, a0 = _pulses(64, 300.0, batch=2)
    kw = dict(dk=torch.tensor([1.7, -0.4]), **STRONG)
    reference = split_step(a0, 300.0, 3.0, 8192, **kw)
    errors = [float((split_step(a0, 300.0, 3.0, n, **kw) - reference).norm()) for n in (32, 64, 128, 256)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(3)]
    assert all(1.9 < p < 2.1 for p in orders), (errors, orders)


def test_step_doubling_meets_its_tolerance_and_spends_steps_where_needed():
    _, a0 = _pulses(64, 300.0, batch=2)
    a0 = a0 * torch.tensor([[0.05], [1.0]], dtype=torch.float64)  # a weak and a strong pulse
    result = propagate(a0, 300.0, 3.0, dk=0.5, rtol=1e-6, **STRONG)
    reference = split_step(a0, 300.0, 3.0, 8192, dk=0.5, **STRONG)
    error = (result.field - reference).norm(dim=-1) / reference.norm(dim=-1)
    assert (error < 1e-6).all() and (result.rel_change <= 1e-6).all()
    assert result.n_steps[0] < result.n_steps[1]  # the weak pulse converged with fewer steps
    with pytest.raises(RuntimeError, match="did not converge"):
        propagate(a0, 300.0, 3.0, dk=0.5, rtol=1e-12, max_steps=64, **STRONG)


def test_solver_keeps_the_input_dtype_and_refuses_real_input():
    _, a0 = _pulses(32, 300.0, batch=2)
    out = split_step(a0.to(torch.complex64), 300.0, 2.0, 4, dk=1.0, **STRONG)
    assert out.dtype == torch.complex64 and out.shape == (2, 32)
    torch.testing.assert_close(out, split_step(a0, 300.0, 2.0, 4, dk=1.0, **STRONG).to(torch.complex64),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="complex"):
        split_step(a0.real, 300.0, 2.0, 4, **STRONG)


@pytest.mark.gpu
def test_solver_runs_on_the_device_of_its_inputs():
    _, a0 = _pulses(64, 300.0, batch=2)
    out = propagate(a0.cuda(), 300.0, torch.tensor([2.0, 3.0]).cuda(), dk=torch.tensor([0.5, 1.0]).cuda(), **STRONG)
    assert out.field.is_cuda
    cpu = propagate(a0, 300.0, torch.tensor([2.0, 3.0]), dk=torch.tensor([0.5, 1.0]), **STRONG)
    torch.testing.assert_close(out.field.cpu(), cpu.field, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- physical inputs
def test_poling_period_mismatch_sets_the_phase_mismatch():
    assert float(phase_mismatch(0.0)) == 0.0
    # longer period -> smaller grating vector -> positive residual mismatch, ~ 2 pi dLambda / Lambda0^2
    small = float(phase_mismatch(1.0, 5.1))
    assert small == pytest.approx(2 * math.pi * 1e-6 / (5.1e-3) ** 2, rel=1e-3)
    assert float(phase_mismatch(50.0)) > 0 > float(phase_mismatch(-50.0))
    assert float(phase_mismatch(50.0)) == pytest.approx(2 * math.pi / 5.1e-3 - 2 * math.pi / 5.15e-3)


def test_input_pulses_carry_the_requested_energy_and_duration():
    t = time_grid(4096, 1024.0)
    a = input_pulses(t, torch.tensor([7.0, 3000.0]), torch.tensor([40.0, 120.0]), torch.tensor([1.5, -2.0]),
                     torch.tensor([0, 1]))
    dt = float(t[1] - t[0])
    torch.testing.assert_close((a.abs() ** 2).sum(-1) * dt, torch.tensor([7.0, 3000.0], dtype=torch.float64))
    for row, fwhm in zip(a.abs() ** 2, (40.0, 120.0), strict=True):
        above = t[row >= row.max() / 2]
        assert float(above[-1] - above[0]) == pytest.approx(fwhm, abs=2 * dt)


def test_parameters_are_drawn_within_their_ranges_log_uniform_in_energy():
    rngs = [np.random.default_rng([0, 0, i]) for i in range(2000)]
    p = draw_parameters(rngs)
    assert 2 <= float(p["length_mm"].min()) and float(p["length_mm"].max()) <= 15
    assert -50 <= float(p["mismatch_nm"].min()) and float(p["mismatch_nm"].max()) <= 50
    log_e = torch.log10(p["energy_fj"])
    assert math.log10(5) <= float(log_e.min()) and float(log_e.max()) <= math.log10(5000)
    assert float(log_e.median()) == pytest.approx(math.log10(math.sqrt(5 * 5000)), abs=0.1)  # log-uniform
    assert set(p["shape"].tolist()) == {0.0, 1.0} and float(p["phase"].abs().max()) == 0.0


# ---------------------------------------------------------------------- the datamodule
def test_channels_are_known_before_any_data_and_defaults_are_the_papers(tmp_path):
    dm = EMWaveDataModule(data_dir=str(tmp_path / "never"))
    assert (dm.in_channels, dm.out_channels, dm.n_dims, dm.complex_data) == (4, 1, 1, True)
    assert (dm.n_train, dm.n_test, dm.resolution, dm.solve_resolution) == (800, 200, 256, 1024)
    assert dm.solver["gamma"] == pytest.approx(5.41e-4, rel=1e-2) == GAMMA_PER_W_MM
    assert not (tmp_path / "never").exists()


def test_generated_data_is_cached_deterministic_multi_resolution_and_solves_the_equation(tmp_path):
    dm = EMWaveDataModule(data_dir=str(tmp_path / "a"), **TINY)
    dm.prepare_data()
    files = sorted((tmp_path / "a").rglob("*.pt"))
    assert len(files) == 3  # train at 32, test at 32 and 64
    mtimes = [f.stat().st_mtime_ns for f in files]
    dm.prepare_data()
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # cached: nothing regenerated
    dm.setup("fit")
    assert dm.test_names == ["res32", "res64"] and dm.resolutions == [(32,), (32,), (64,)]
    t32, t64 = dm._tests
    torch.testing.assert_close(t32.y, t64.y[..., ::2])  # the same pulses at two resolutions
    assert dm.x_mean.is_complex() and dm.y_mean.is_complex() and not dm.y_std.is_complex()
    # scalar channels: constant along t, real, within their ranges
    x = t64.x
    assert torch.equal(x[:, 1:], x[:, 1:, :1].expand_as(x[:, 1:])) and float(x[:, 1:].imag.abs().max()) == 0
    length, mismatch, log_e = (x[:, c, 0].real.double() for c in (1, 2, 3))
    assert ((2 <= length) & (length <= 15)).all() and (mismatch.abs() <= 50).all()
    # each stored output is the solver's output for the parameters in its input channels
    out = propagate(x[:, 0].to(torch.complex128), 512.0, length, dk=phase_mismatch(mismatch), beta2=dm.solver["beta2"],
                    gamma=dm.solver["gamma"], kappa=dm.solver["kappa"], rtol=1e-8)
    torch.testing.assert_close(out.field.to(torch.complex64), t64.y[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((x[:, 0].abs() ** 2).sum(-1).double() * 8.0, 10**log_e, rtol=1e-4, atol=0)
    # same seed, another folder: identical; another seed: different
    again = EMWaveDataModule(data_dir=str(tmp_path / "b"), **TINY)
    again.prepare_data()
    again.setup("fit")
    torch.testing.assert_close(again._splits["train"].y, dm._splits["train"].y, rtol=0, atol=0)
    other = EMWaveDataModule(data_dir=str(tmp_path / "a"), **{**TINY, "seed": 1})
    other.prepare_data()
    other.setup("fit")
    assert not torch.allclose(other._splits["train"].y, dm._splits["train"].y)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 4, 32) and batch["y"].shape == (4, 1, 32) and batch["x"].dtype == torch.complex64


def test_physics_settings_key_the_cache(tmp_path):
    base = EMWaveDataModule(data_dir=str(tmp_path), **TINY)
    for change in ({"kappa": 0.2}, {"beta2": -20.0}, {"energy_fj": (1.0, 10.0)}, {"pulse_shapes": ["sech"]},
                   {"random_phase": True}, {"rtol": 1e-6}):
        other = EMWaveDataModule(data_dir=str(tmp_path), **{**TINY, **change})
        assert other.cache_path("train", 32, 16) != base.cache_path("train", 32, 16), change
    same_device = EMWaveDataModule(data_dir=str(tmp_path), **{**TINY, "solver_device": "meta"})
    assert same_device.cache_path("train", 32, 16) == base.cache_path("train", 32, 16)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"resolution": 24}, r"resolution 24 cannot be subsampled from solve_resolution=64"),
        ({"test_resolutions": [32, 128]}, r"resolution 128 cannot be subsampled"),
        ({"length_mm": (15.0, 2.0)}, r"length_mm=\[15.0, 2.0\] is invalid"),
        ({"energy_fj": (0.0, 10.0)}, r"energy_fj=.* low > 0"),
        ({"pulse_shapes": ["square"]}, r"pulse_shapes=\['square'\] is invalid"),
        ({"mismatch_nm": (-6000.0, 0.0)}, r"non-positive poling period"),
        ({"rtol": 0.0}, r"rtol=0.0 is invalid"),
    ],
)
def test_invalid_settings_are_refused_at_construction(change, match):
    with pytest.raises(ValueError, match=match):
        EMWaveDataModule(**{**TINY, **change})


# ---------------------------------------------------------------------- the plain .pt format
def _public(n=10, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    a0 = torch.randn(n, s, dtype=torch.complex64, generator=g)
    scalars = torch.rand(n, 3, 1, generator=g).expand(n, 3, s).to(torch.complex64)
    return {"x": torch.cat([a0[:, None], scalars], dim=1), "y": torch.randn(n, 1, s, dtype=torch.complex64,
                                                                           generator=g)}


def _from_files(tmp_path, train, test=None, **kw):
    paths = []
    for name, obj in (("train.pt", train), ("test.pt", test if test is not None else _public(4, 32, seed=1))):
        torch.save(obj, tmp_path / name)
        paths.append(str(tmp_path / name))
    args = dict(n_train=10, n_test=4, batch_size=3, data_dir=str(tmp_path / "cache"))
    return EMWaveDataModule(train_file=paths[0], test_files=[paths[1]], **{**args, **kw})


def test_plain_files_load_at_their_own_grid(tmp_path):
    d = _public()
    d["y"] = d["y"][:, 0]  # (N, s) is accepted for the single output channel
    dm = _from_files(tmp_path, d)
    dm.prepare_data()
    dm.setup("fit")
    assert not (tmp_path / "cache").exists()  # nothing generated
    assert dm.resolutions == [(16,), (32,)] and dm.test_names == ["res32"]  # training grid, then each test grid
    torch.testing.assert_close(dm._splits["train"].y[:, 0], d["y"][:9])


def test_a_generated_cache_file_is_itself_a_valid_data_file(tmp_path):
    gen = EMWaveDataModule(data_dir=str(tmp_path), **TINY)
    gen.prepare_data()
    gen.setup("fit")
    train, test = gen.cache_path("train", 32, 16), gen.cache_path("test", 64, 4)
    dm = EMWaveDataModule(train_file=str(train), test_files=[str(test)], n_train=16, n_test=4, batch_size=4)
    dm.setup("fit")
    torch.testing.assert_close(dm._splits["train"].y, gen._splits["train"].y, rtol=0, atol=0)
    torch.testing.assert_close(dm._tests[0].x, gen._tests[1].x, rtol=0, atol=0)


def _bad(what):
    d = _public()
    if what == "keys":
        d = {"a": d["x"], "u": d["y"]}
    elif what == "real_x":
        d["x"] = d["x"].real
    elif what == "real_y":
        d["y"] = d["y"].abs()
    elif what == "channels":
        d["x"] = d["x"][:, :1]
    elif what == "varying_scalar":
        d["x"][:, 2, 5] += 1.0
    elif what == "nan":
        d["y"][3, 0, 7] = complex("nan")
    elif what == "count":
        d["y"] = d["y"][:8]
    elif what == "grid":
        d["y"] = d["y"][..., :8]
    elif what == "too_few":
        d = {k: v[:6] for k, v in d.items()}
    return d


@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("keys", r"no key\(s\) \['x', 'y'\]; found \['a', 'u'\]"),
        ("real_x", r"'x' has dtype torch.float32, but EM-wave fields are complex"),
        ("real_y", r"'y' has dtype torch.float32, but EM-wave fields are complex"),
        ("channels", r"'x' is \(10, 1, 16\); expected \(N, 4, s\) with channels \[A\(0,t\), length \(mm\)"),
        ("varying_scalar", r"channel\(s\) \['mismatch'\] vary along t"),
        ("nan", r"'y' contains 1 NaN/Inf values \(first in sample 3\)"),
        ("count", r"x has 10 samples but y has 8"),
        ("grid", r"'x' is on a \(16,\) grid but 'y' on \(8,\)"),
        ("too_few", r"has 6 samples but n_train=10 asks for more"),
    ],
)
def test_bad_files_fail_clearly_before_training(tmp_path, what, match):
    with pytest.raises(ValueError, match=match):
        _from_files(tmp_path, _bad(what)).setup("fit")


# ---------------------------------------------------------------------- configs and the command line
def test_em_config_builds_a_complex_fno_on_the_em_data(tmp_path):
    from app.cli import cli_main

    config = str(REPO / "configs/experiments/em.yaml")
    cli = cli_main(["-c", config, f"--trainer.default_root_dir={tmp_path}"], run=False)
    dm, fno = cli.datamodule, cli.model.model
    assert type(dm).__name__ == "EMWaveDataModule" and dm.solve_resolution % dm.resolution == 0
    assert (fno.in_channels, fno.out_channels, fno.complex_data) == (4, 1, True)
    assert cli.model.val_metrics["h1"].periodic


def test_paper_config_has_the_papers_architecture():
    cfg = yaml.safe_load((REPO / "configs/paper/em.yaml").read_text())
    fno = cfg["model"]["model"]["init_args"]
    assert (fno["n_layers"], fno["n_modes"], fno["hidden_channels"]) == (8, [128], 128)
    data = cfg["data"]["init_args"]
    assert cfg["data"]["class_path"] == "datamodules.em_wave.EMWaveDataModule"
    assert (data["n_train"], data["n_test"]) == (800, 200) and data["resolution"] >= 128
    assert data["solve_resolution"] % data["resolution"] == 0 and cfg["model"]["h1_periodic"] is True


def test_tiny_complex_fno_fits_through_the_cli_and_reports_finite_l2_and_h1(tmp_path):
    from app.cli import cli_main

    args = [
        "fit", "-c", str(REPO / "configs/experiments/em.yaml"),
        "--seed_everything=0",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.model.init_args.n_modes=[8]",
        "--model.model.init_args.hidden_channels=8",
        "--model.model.init_args.n_layers=2",
        f"--data.init_args.data_dir={tmp_path / 'data'}",
        *(f"--data.init_args.{k}={v}" for k, v in TINY.items() if k != "test_resolutions"),
        "--data.init_args.test_resolutions=[32, 64]",
    ]
    cli = cli_main(args)
    assert cli.trainer.global_step == 4  # 16 pulses - 2 held out = 14, in batches of 4
    metrics = cli.trainer.callback_metrics
    for name in ("res32", "res64"):
        for norm in ("l2", "h1"):
            value = float(metrics[f"test/{norm}_{name}"])
            assert math.isfinite(value) and 0 < value < 10, (name, norm, value)
