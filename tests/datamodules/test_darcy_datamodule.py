"""DarcyDataModule: generated data, neuraloperator's files, and the bad-input catalogue (errors before training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import DarcyDataModule


def _ready(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_defaults_fit_the_default_job():
    dm = DarcyDataModule()
    assert (dm.resolution, dm.test_resolutions, dm.solve_resolution) == (33, [33, 65], 129)
    assert (dm.n_train, dm.n_test, dm.batch_size, dm.train_file, dm.test_files) == (1000, 100, 32, None, None)


def test_generated_data_is_cached_and_deterministic(small_darcy, tmp_path, monkeypatch):
    dm = _ready(small_darcy())
    files = sorted((tmp_path / "data" / "darcy").glob("*.pt"))
    stems = [f.name.rsplit("_", 1)[0] for f in files]  # the last part is the digest of the solver settings
    assert stems == ["test_res17_n4_seed0", "test_res9_n4_seed0", "train_res9_n20_seed0"]
    stamps = [f.stat().st_mtime_ns for f in files]

    again = small_darcy()
    monkeypatch.setattr(again, "generate", lambda *a: pytest.fail("regenerated cached data"))
    _ready(again)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    torch.testing.assert_close(again._splits["train"].y, dm._splits["train"].y)

    elsewhere = _ready(small_darcy(data_dir=str(tmp_path / "elsewhere")))  # generated again: identical tensors
    for a, b in zip([*dm._splits.values(), *dm._tests], [*elsewhere._splits.values(), *elsewhere._tests], strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    reseeded = _ready(small_darcy(seed=1))
    assert not torch.equal(reseeded._splits["train"].x, dm._splits["train"].x)


def test_generated_samples_are_darcy_solutions(small_darcy):
    dm = _ready(small_darcy())
    for fields in (dm._splits["train"], *dm._tests):
        assert set(fields.x.unique().tolist()) == {3.0, 12.0}  # psi(g): the two FNO permeabilities
        u = fields.y[:, 0]
        assert (u[:, 1:-1, 1:-1] > 0).all()  # f = 1 > 0: positive pressure inside ...
        assert u[:, 0].abs().max() == u[:, -1].abs().max() == u[:, :, 0].abs().max() == u[:, :, -1].abs().max() == 0
    # same distribution at every resolution: the 9x9 test set is the 17x17 one subsampled
    t9, t17 = dm._tests
    assert torch.equal(t9.x, t17.x[..., ::2, ::2]) and torch.equal(t9.y, t17.y[..., ::2, ::2])
    assert dm.test_names == ["res9", "res17"] and dm.resolutions == [(9, 9), (9, 9), (17, 17)]


def test_batches_are_dicts_of_channel_first_float_fields(small_darcy):
    dm = _ready(small_darcy())
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "y"}
    assert batch["x"].shape == batch["y"].shape == (4, 1, 9, 9)
    assert batch["x"].dtype == batch["y"].dtype == torch.float32
    assert [next(iter(loader))["x"].shape[-1] for loader in dm.test_dataloader()] == [9, 17]


def test_a_resolution_that_does_not_subsample_the_solver_grid_is_refused():
    with pytest.raises(ValueError, match=r"resolution 32 cannot be subsampled from solve_resolution=129.*17, 33, 65"):
        DarcyDataModule(resolution=32)
    with pytest.raises(ValueError, match=r"resolution 257 cannot be subsampled from solve_resolution=129"):
        DarcyDataModule(test_resolutions=[33, 257])


def test_neuraloperator_darcy_files_load_and_train_one_epoch(neuralop_darcy_dir, tiny_fno, cpu_trainer_kwargs):
    from app.module import OperatorModule

    raw = torch.load(neuralop_darcy_dir / "darcy_train_16.pt", weights_only=True)
    assert raw["x"].dtype == torch.bool and raw["x"].shape == (1000, 16, 16) and raw["y"].dtype == torch.float32
    dm = DarcyDataModule(
        train_file=str(neuralop_darcy_dir / "darcy_train_16.pt"),
        test_files=[str(neuralop_darcy_dir / "darcy_test_16.pt")],
        n_train=200,  # the first 200 samples: a quick epoch
        n_test=50,
        batch_size=32,
    )
    dm.setup("fit")
    train = dm._splits["train"]
    assert train.x.shape == (180, 1, 16, 16) and train.x.dtype == torch.float32
    torch.testing.assert_close(train.x[:, 0], raw["x"][:180].float())
    torch.testing.assert_close(train.y[:, 0], raw["y"][:180])
    torch.testing.assert_close(dm.x_mean, raw["x"][:180].float().mean().view(1))
    assert dm.test_names == ["res16"]

    trainer = Trainer(max_epochs=1, **cpu_trainer_kwargs)
    trainer.fit(OperatorModule(tiny_fno), datamodule=dm)
    assert trainer.global_step == 6  # ceil(180 / 32)
    (res,) = trainer.test(trainer.lightning_module, datamodule=dm, verbose=False)
    assert 0 < res["test/l2_res16"] < 1.5


def test_user_files_are_read_but_never_written(tmp_path, write_pt, darcy_pair):
    path = Path(write_pt("mine.pt", darcy_pair(12)))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    # one file for both: the test set is its last 4 samples, disjoint from the first 8 (training)
    dm = DarcyDataModule(train_file=str(path), test_files=[str(path)], n_train=8, n_test=4, batch_size=4,
                         data_dir=str(tmp_path / "cache"))
    _ready(dm)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert not (tmp_path / "cache").exists()  # nothing to generate


def test_files_come_in_pairs(tmp_path, write_pt, darcy_pair):
    # a training file with generated test sets would test on another distribution: refused
    with pytest.raises(ValueError, match="train_file is set but test_files is not; give both"):
        DarcyDataModule(train_file=write_pt("tr.pt", darcy_pair(12)))
    with pytest.raises(ValueError, match="test_files is set but train_file is not"):
        DarcyDataModule(test_files=[write_pt("te.pt", darcy_pair(4))])


# ---------------------------------------------------------------------- bad input: each stops setup, names the fix
def _setup(tmp_path, write_pt, darcy_pair, train, **kw):
    """A datamodule on the training file ``train`` (a path or an object to save) and a valid test file."""
    if not isinstance(train, str):
        train = write_pt("train.pt", train)
    args = dict(n_train=12, n_test=4, batch_size=4, test_files=[write_pt("ok_test.pt", darcy_pair(4))])
    DarcyDataModule(train_file=train, **{**args, **kw}).setup("fit")


def test_missing_file(tmp_path, write_pt, darcy_pair):
    with pytest.raises(FileNotFoundError, match=r"Darcy data file .*nope\.pt does not exist; check the path"):
        _setup(tmp_path, write_pt, darcy_pair, str(tmp_path / "nope.pt"))


def test_wrong_keys(tmp_path, write_pt, darcy_pair):
    with pytest.raises(ValueError, match=r"train\.pt has no key\(s\) \['x', 'y'\]; found \['a', 'u'\]"):
        _setup(tmp_path, write_pt, darcy_pair, {"a": torch.zeros(3, 8, 8), "u": torch.zeros(3, 8, 8)})


def test_count_mismatch(tmp_path, write_pt, darcy_pair):
    d = darcy_pair(12)
    d["y"] = d["y"][:10]
    with pytest.raises(ValueError, match=r"train\.pt: x has 12 samples but y has 10"):
        _setup(tmp_path, write_pt, darcy_pair, d)


@pytest.mark.parametrize("bad, count", [(float("nan"), 1), (float("inf"), 1)])
def test_nan_or_inf_in_data(tmp_path, write_pt, darcy_pair, bad, count):
    d = darcy_pair(12)
    d["y"][5, 2, 2] = bad
    with pytest.raises(ValueError, match=rf"train\.pt: 'y' contains {count} NaN/Inf values \(first in sample 5\)"):
        _setup(tmp_path, write_pt, darcy_pair, d)


def test_wrong_number_of_dimensions(tmp_path, write_pt, darcy_pair):
    with pytest.raises(ValueError, match=r"'x' is \(12, 8\); expected \(N, s, s\) in neuraloperator's format"):
        _setup(tmp_path, write_pt, darcy_pair, {"x": torch.zeros(12, 8), "y": torch.zeros(12, 8)})
    with pytest.raises(ValueError, match=r"'y' has shape \(12, 3, 8, 8\); expected \(N, 1, s, s\)"):
        _setup(tmp_path, write_pt, darcy_pair, {"x": torch.zeros(12, 8, 8), "y": torch.zeros(12, 3, 8, 8)})


def test_grids_of_x_and_y_differ(tmp_path, write_pt, darcy_pair):
    with pytest.raises(ValueError, match=r"'x' is on a \(8, 8\) grid but 'y' on \(9, 9\)"):
        _setup(tmp_path, write_pt, darcy_pair, {"x": torch.zeros(12, 8, 8), "y": torch.zeros(12, 9, 9)})


def test_wrong_dtype(tmp_path, write_pt, darcy_pair):
    with pytest.raises(ValueError, match=r"'x' has dtype torch.int64; expected a float or bool tensor"):
        ints = {"x": torch.zeros(12, 8, 8, dtype=torch.int64), "y": torch.zeros(12, 8, 8)}
        _setup(tmp_path, write_pt, darcy_pair, ints)
    with pytest.raises(ValueError, match=r"'y' is complex"):
        _setup(tmp_path, write_pt, darcy_pair, {"x": torch.zeros(12, 8, 8), "y": torch.zeros(12, 8, 8) * 1j})


def test_more_samples_asked_than_the_file_holds(tmp_path, write_pt, darcy_pair):
    with pytest.raises(ValueError, match=r"train\.pt has 12 samples but n_train=50 asks for more; set n_train to at"):
        _setup(tmp_path, write_pt, darcy_pair, darcy_pair(12), n_train=50)
    with pytest.raises(ValueError, match=r"ok_test\.pt has 4 samples but n_test=9 asks for more"):
        _setup(tmp_path, write_pt, darcy_pair, darcy_pair(12), n_test=9)


def test_batch_size_larger_than_the_training_set(tmp_path, write_pt, darcy_pair):
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the 11 training samples"):
        _setup(tmp_path, write_pt, darcy_pair, darcy_pair(12), batch_size=64)


def test_empty_truncated_corrupt_and_foreign_files(tmp_path, write_pt, darcy_pair):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt is empty \(0 bytes\)"):
        _setup(tmp_path, write_pt, darcy_pair, str(empty))
    good = Path(write_pt("good.pt", darcy_pair(12)))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file" * 10)
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match=rf"{path.name} could not be read .*corrupt, truncated or not a torch"):
            _setup(tmp_path, write_pt, darcy_pair, str(path))
    with pytest.raises(ValueError, match=r"holds a Tensor; expected a dict of tensors"):
        _setup(tmp_path, write_pt, darcy_pair, write_pt("tensor.pt", torch.zeros(3)))


def test_statistics_travel_in_the_lightning_checkpoint(small_darcy, tiny_fno, cpu_trainer_kwargs, tmp_path):
    from app.module import OperatorModule

    dm = small_darcy()
    trainer = Trainer(max_epochs=1, **{**cpu_trainer_kwargs, "enable_checkpointing": True})
    trainer.fit(OperatorModule(tiny_fno), datamodule=dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    state = torch.load(ckpt, weights_only=True)["DarcyDataModule"]  # plain tensors: loads with weights_only
    for k in ("x_mean", "x_std", "y_mean", "y_std"):
        torch.testing.assert_close(state[k], getattr(dm, k))
    # testing from the checkpoint with a datamodule of other data restores the training statistics
    other = small_darcy(seed=5)
    tester = Trainer(**{**cpu_trainer_kwargs, "enable_checkpointing": True})
    tester.test(OperatorModule(tiny_fno), datamodule=other, ckpt_path=ckpt, verbose=False)
    torch.testing.assert_close(other.x_mean, dm.x_mean)
    torch.testing.assert_close(other.y_std, dm.y_std)


def test_a_foreign_file_error_never_suggests_unsafe_loading(tmp_path, write_pt, darcy_pair):
    import pickle

    foreign = tmp_path / "foreign.pt"  # a pickle torch refuses under weights_only=True ("... will likely succeed")
    foreign.write_bytes(
        pickle.dumps({"x": pickle.PickleError("not a tensor")})
    )
    with pytest.raises(ValueError) as info:
        _setup(tmp_path, write_pt, darcy_pair, str(foreign))
    assert "could not be read" in str(info.value)
    assert "weights_only=False" not in str(info.value) and "likely succeed" not in str(info.value)
