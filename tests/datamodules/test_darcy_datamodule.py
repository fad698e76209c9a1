"""DarcyDataModule: generation and caching, neuraloperator's format, normalisation, and the bad-input catalogue."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import DarcyDataModule

SMALL = dict(n_train=20, n_test=4, resolution=9, test_resolutions=[9, 17], solve_resolution=17, batch_size=4)


def _write(path: Path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def _pair(n=12, s=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand(n, s, s, generator=g) > 0.5, "y": torch.rand(n, s, s, generator=g)}


def test_generation_is_cached_deterministic_and_multi_resolution(tmp_path):
    dm = DarcyDataModule(data_dir=str(tmp_path / "a"), **SMALL)
    dm.prepare_data()
    files = sorted((tmp_path / "a").rglob("*.pt"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    dm.prepare_data()  # cached: nothing is regenerated
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    dm.setup("fit")
    assert dm.test_names == ["res9", "res17"] and dm.resolutions == [(9, 9), (9, 9), (17, 17)]
    # the coarse test set is the fine one subsampled: the same samples at two resolutions
    t9, t17 = dm._tests
    torch.testing.assert_close(t9.y, t17.y[..., ::2, ::2])
    other = DarcyDataModule(data_dir=str(tmp_path / "b"), **SMALL)
    other.prepare_data()
    other.setup("fit")
    torch.testing.assert_close(other._train.y, dm._train.y)
    reseeded = DarcyDataModule(data_dir=str(tmp_path / "c"), seed=1, **SMALL)
    reseeded.prepare_data()
    reseeded.setup("fit")
    assert not torch.allclose(reseeded._train.y, dm._train.y)
    # coefficients take the two FNO values; pressures are positive inside
    assert set(torch.unique(dm._train.x * dm.x_std + dm.x_mean).round().tolist()) <= {3.0, 12.0}
    assert (dm._train.y[..., 1:-1, 1:-1] > 0).all()


def test_batches_and_linked_properties(tmp_path):
    dm = DarcyDataModule(data_dir=str(tmp_path), **SMALL)
    assert (dm.in_channels, dm.out_channels, dm.n_dims, dm.complex_data) == (1, 1, 2, False)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (4, 1, 9, 9) and batch["y"].shape == (4, 1, 9, 9)
    assert batch["x"].dtype == torch.float32
    assert len(dm.test_dataloader()) == 2


def test_training_order_depends_only_on_seed_and_epoch(tmp_path):
    dm = DarcyDataModule(data_dir=str(tmp_path), **SMALL)
    dm.prepare_data()
    dm.setup("fit")
    def order(epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)
    assert order(3) == order(3) and order(0) != order(1)


def test_normalisation_is_fitted_on_the_training_split_only(tmp_path):
    train = _pair(20, 8, 0)
    train["x"] = train["x"].float()
    train["x"][-2:] += 100.0  # the held-out validation samples (last 10%) must not move the statistics
    test = _pair(5, 8, 1)
    test["x"] = test["x"].float() * 50
    dm = DarcyDataModule(
        train_file=_write(tmp_path / "tr.pt", train), test_files=[_write(tmp_path / "te.pt", test)],
        n_train=20, n_test=5, batch_size=4,
    )
    dm.setup("fit")
    x_tr = train["x"][:18]
    torch.testing.assert_close(dm.x_mean, x_tr.mean().view(1))
    torch.testing.assert_close(dm.y_mean, train["y"][:18].mean().view(1))
    torch.testing.assert_close(dm.x_std, x_tr.std(unbiased=False).view(1))
    state = dm.state_dict()
    fresh = DarcyDataModule(train_file=str(tmp_path / "tr.pt"), n_train=20, batch_size=4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.x_mean, dm.x_mean)


def test_neuraloperator_darcy_file_loads_and_trains_one_epoch(neuralop_darcy_dir, tiny_fno, cpu_trainer_kwargs):
    raw = torch.load(neuralop_darcy_dir / "darcy_train_16.pt", weights_only=True)
    assert raw["x"].dtype == torch.bool and raw["x"].shape == (1000, 16, 16) and raw["y"].dtype == torch.float32
    dm = DarcyDataModule(
        train_file=str(neuralop_darcy_dir / "darcy_train_16.pt"),
        test_files=[str(neuralop_darcy_dir / "darcy_test_16.pt")],
        n_train=1000, n_test=50, batch_size=32,
    )
    from app.module import OperatorModule

    module = OperatorModule(tiny_fno)
    trainer = Trainer(max_epochs=1, **cpu_trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 29  # 900 training samples (100 held out for validation) / 32, rounded up
    (res,) = trainer.test(module, datamodule=dm, verbose=False)
    assert 0 < res["test/l2_res16"] < 1.0


# ---------------------------------------------------------------------- bad input: clear errors, before training
def _dm(tmp_path, train, test=None, **kw):
    args = dict(n_train=12, n_test=4, batch_size=4)
    args.update(kw)
    test_files = [test] if test else [_write(tmp_path / "ok_test.pt", _pair(4))]
    return DarcyDataModule(train_file=train, test_files=test_files, **args)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt does not exist"):
        _dm(tmp_path, str(tmp_path / "nope.pt")).setup("fit")


def test_wrong_keys(tmp_path):
    path = _write(tmp_path / "k.pt", {"a": torch.zeros(3, 8, 8), "u": torch.zeros(3, 8, 8)})
    with pytest.raises(ValueError, match=r"no key\(s\) \['x', 'y'\]; found \['a', 'u'\]"):
        _dm(tmp_path, path).setup("fit")


def test_count_mismatch(tmp_path):
    d = _pair(12)
    d["y"] = d["y"][:10]
    with pytest.raises(ValueError, match="x has 12 samples but y has 10"):
        _dm(tmp_path, _write(tmp_path / "m.pt", d)).setup("fit")


def test_nan_in_data(tmp_path):
    d = _pair(12)
    d["y"][5, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"'y' contains 1 NaN/Inf values \(first in sample 5\)"):
        _dm(tmp_path, _write(tmp_path / "n.pt", d)).setup("fit")


def test_wrong_dimensions(tmp_path):
    d = {"x": torch.zeros(12, 8), "y": torch.zeros(12, 8)}
    with pytest.raises(ValueError, match=r"has shape \(12, 8\); expected \(N, 1, s, s\)"):
        _dm(tmp_path, _write(tmp_path / "d.pt", d)).setup("fit")


def test_wrong_dtype(tmp_path):
    d = {"x": torch.zeros(12, 8, 8, dtype=torch.int64), "y": torch.zeros(12, 8, 8)}
    with pytest.raises(ValueError, match="dtype torch.int64"):
        _dm(tmp_path, _write(tmp_path / "t.pt", d)).setup("fit")


def test_more_samples_asked_than_the_file_has(tmp_path):
    with pytest.raises(ValueError, match="has 12 samples but 50 were asked for"):
        _dm(tmp_path, _write(tmp_path / "s.pt", _pair(12)), n_train=50).setup("fit")


def test_batch_size_larger_than_the_training_set(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the 11 training samples"):
        _dm(tmp_path, _write(tmp_path / "b.pt", _pair(12)), batch_size=64).setup("fit")


def test_empty_truncated_and_corrupt_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        _dm(tmp_path, str(empty)).setup("fit")
    good = Path(_write(tmp_path / "good.pt", _pair(12)))
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt, truncated"):
        _dm(tmp_path, str(truncated)).setup("fit")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt, truncated"):
        _dm(tmp_path, str(garbage)).setup("fit")


def test_resolution_that_does_not_subsample_the_solver_grid():
    with pytest.raises(ValueError, match=r"resolution 32 cannot be subsampled from solve_resolution=129"):
        DarcyDataModule(resolution=32)


def test_user_files_are_never_modified(tmp_path):
    path = Path(_write(tmp_path / "u.pt", _pair(12)))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    dm = _dm(tmp_path, str(path))
    dm.prepare_data()
    dm.setup("fit")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
