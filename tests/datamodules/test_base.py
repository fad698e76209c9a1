"""PDEDataModule on a synthetic 1-D dataset: caching, splits, normalisation, checkpointed statistics, loaders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from datamodules import DarcyDataModule, PDEDataModule
from datamodules.base import EpochShuffleSampler, as_fields, channel_stats
from datamodules.io import load_pt, save_pt_atomic


class Toy(PDEDataModule):
    """x: white noise on 16 points, subsampled; y = 2 x + shift (or a complex multiple)."""

    name = "toy"
    n_dims = 1

    def __init__(self, shift: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shift = shift
        self.generated: list[int] = []  # sample count of every generate() call

    def generator_settings(self):
        return {"shift": self.shift}

    def generate(self, rngs, resolutions):
        self.generated.append(len(rngs))
        fine = torch.tensor(np.stack([rng.standard_normal(16) for rng in rngs]), dtype=torch.float32)[:, None]
        return {s: (fine[..., :: 16 // s], self._target(fine[..., :: 16 // s])) for s in resolutions}

    def _target(self, x):
        return 2 * x + self.shift

    def read_file(self, path: Path):
        d = load_pt(path)
        return as_fields(d["x"], 1), as_fields(d["y"], 1)


class ComplexToy(Toy):
    complex_data = True

    def _target(self, x):
        return (1 + 2j) * x.to(torch.complex64) + self.shift


def _toy(tmp_path, cls=Toy, **kw):
    args = dict(n_train=20, n_test=5, resolution=8, test_resolutions=[8, 16], batch_size=4, data_dir=str(tmp_path))
    return cls(**{**args, **kw})


def _ready(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _all(loader, key):
    return torch.cat([b[key] for b in loader])


def test_linked_properties_are_known_before_any_data(tmp_path):
    dm = DarcyDataModule(data_dir=str(tmp_path / "never_created"))
    assert (dm.in_channels, dm.out_channels, dm.n_dims, dm.complex_data) == (1, 1, 2, False)
    assert (ComplexToy.n_dims, ComplexToy(data_dir=str(tmp_path)).complex_data) == (1, True)
    assert not (tmp_path / "never_created").exists()  # __init__ reads and writes nothing


def test_cli_signature_of_a_subclass_includes_the_documented_base_arguments():
    parser = ArgumentParser()
    parser.add_class_arguments(DarcyDataModule, "data")
    help_text = io.StringIO()
    parser.print_help(help_text)
    text = " ".join(help_text.getvalue().split())  # undo the line wrapping
    for arg in ("train_file", "test_files", "n_train", "batch_size", "seed", "normalize", "solve_resolution"):
        assert f"--data.{arg}" in text
    assert "held out for validation" in text  # base docstrings reach --help
    assert parser.get_defaults().data.test_resolutions == (33, 65)


def test_normalisation_is_fitted_on_the_training_split_only(tmp_path, write_pt):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 8, generator=g)
    x[18:] += 100.0  # the last 10%, held out for validation, must not move the statistics
    train = write_pt("train.pt", {"x": x, "y": 3 * x - 1})
    test = write_pt("test.pt", {"x": 50 * torch.ones(5, 8), "y": torch.ones(5, 8)})
    dm = _toy(tmp_path, train_file=train, test_files=[test])
    dm.setup("fit")
    fit = x[:18]
    torch.testing.assert_close(dm.x_mean, fit.mean().view(1))
    torch.testing.assert_close(dm.x_std, fit.std(unbiased=False).view(1))
    torch.testing.assert_close(dm.y_mean, (3 * fit - 1).mean().view(1))
    torch.testing.assert_close(dm.y_std, (3 * fit - 1).std(unbiased=False).view(1))
    x_train = _all(dm.train_dataloader(), "x")
    assert abs(float(x_train.mean())) < 1e-5 and float(x_train.std(unbiased=False)) == pytest.approx(1, abs=1e-5)
    # y stays physical; validation and test inputs use the training statistics
    val = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(val["y"][:, 0], 3 * x[18:] - 1)
    torch.testing.assert_close(val["x"][:, 0], (x[18:] - dm.x_mean) / dm.x_std)
    torch.testing.assert_close(dm.decode_x(next(iter(dm.test_dataloader()))["x"]), 50 * torch.ones(4, 1, 8))


def test_complex_data_has_a_complex_mean_and_a_real_std(tmp_path):
    dm = _ready(_toy(tmp_path, ComplexToy))
    y = dm._splits["train"].y
    assert dm.y_mean.dtype == torch.complex64 and dm.y_std.dtype == torch.float32
    torch.testing.assert_close(dm.y_mean, y.mean().view(1))
    torch.testing.assert_close(dm.y_std, ((y - y.mean()).abs() ** 2).mean().sqrt().view(1))
    assert next(iter(dm.train_dataloader()))["y"].is_complex()


def test_channel_stats_per_channel_and_constant_channels():
    t = torch.stack([torch.arange(12.0).view(3, 4), torch.full((3, 4), 5.0)], dim=1)  # (3, 2, 4)
    mean, std = channel_stats(t)
    torch.testing.assert_close(mean, torch.tensor([5.5, 5.0]))
    torch.testing.assert_close(std, torch.tensor([torch.arange(12.0).std(unbiased=False).item(), 1.0]))


def test_normalize_false_leaves_inputs_and_outputs_alone(tmp_path):
    dm = _ready(_toy(tmp_path, normalize=False))
    assert float(dm.x_mean) == 0 and float(dm.x_std) == 1 and float(dm.y_mean) == 0 and float(dm.y_std) == 1
    torch.testing.assert_close(next(iter(dm.val_dataloader()))["x"], dm._splits["val"].x)


def test_statistics_round_trip_through_a_weights_only_checkpoint_and_win_over_refitting(tmp_path):
    dm = _ready(_toy(tmp_path / "a"))
    buffer = io.BytesIO()
    torch.save({"PDEDataModule": dm.state_dict()}, buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)["PDEDataModule"]
    assert set(state) == {"x_mean", "x_std", "y_mean", "y_std"}
    # another dataset (other seed, other shift): restored statistics are kept whatever the order of calls
    for restore_first in (True, False):
        other = _toy(tmp_path / "b", seed=3, shift=7.0)
        other.prepare_data()
        if restore_first:
            other.load_state_dict(state)
        other.setup("test")
        if not restore_first:  # Lightning's order: setup, then restore from the checkpoint
            other.load_state_dict(state)
        for k in state:
            torch.testing.assert_close(getattr(other, k), state[k])
        x = next(iter(other.test_dataloader()[0]))["x"]
        torch.testing.assert_close(x, (other._tests[0].x[:4] - state["x_mean"]) / state["x_std"])


def test_checkpoint_statistics_of_other_data_are_rejected(tmp_path):
    dm = _toy(tmp_path)
    state = {"x_mean": torch.zeros(3), "x_std": torch.ones(3), "y_mean": torch.zeros(1), "y_std": torch.ones(1)}
    with pytest.raises(ValueError, match=r"checkpoint x_mean has shape \(3,\) but Toy has 1 channel"):
        dm.load_state_dict(state)
    with pytest.raises(ValueError, match=r"no key\(s\) \['y_std'\]"):
        dm.load_state_dict({k: v for k, v in state.items() if k != "y_std"})


def test_validation_is_the_last_fraction_and_predict_is_the_first_test_set(tmp_path):
    dm = _ready(_toy(tmp_path, val_fraction=0.25))
    assert (len(dm._splits["train"].x), len(dm._splits["val"].x)) == (15, 5)
    assert sum(len(b["x"]) for b in dm.val_dataloader()) == 5
    assert dm.test_names == ["res8", "res16"] and dm.resolutions == [(8,), (8,), (16,)]
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    torch.testing.assert_close(_all(dm.predict_dataloader(), "y"), _all(loaders[0], "y"))
    single = _ready(_toy(tmp_path, test_resolutions=None))
    assert single.test_names == ["res8"] and not isinstance(single.test_dataloader(), list)


def test_training_order_depends_only_on_seed_and_epoch(tmp_path):
    dm = _ready(_toy(tmp_path))
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler) and loader.drop_last is False

    def order(sampler, epoch):
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(loader.sampler, 3)
    assert first == order(dm.train_dataloader().sampler, 3)  # a resumed run replays epoch 3 exactly
    assert sorted(first) == list(range(18)) and first != order(loader.sampler, 4)
    assert first != order(EpochShuffleSampler(18, seed=1), 3)
    assert sum(len(b["x"]) for b in loader) == 18  # 4 + 4 + 4 + 4 + 2: the last, short batch is kept


def test_generation_gives_each_sample_its_own_stream_and_reuses_larger_caches(tmp_path):
    big = _toy(tmp_path, n_train=40)
    big.prepare_data()
    assert big.generated == [8, 8, 8, 8, 8, 5]  # chunks of generate_chunk samples: 40 train, 5 test
    small = _toy(tmp_path, n_train=20)
    small.prepare_data()
    assert small.generated == []  # its 20 train samples are the first 20 of the cached 40
    small.setup("fit")
    big.setup("fit")
    torch.testing.assert_close(small._splits["train"].x, big._splits["train"].x[:18])
    # other chunking and a separate generation of each test resolution give the same samples
    Toy.generate_chunk = 3
    try:
        apart = _toy(tmp_path / "apart", n_train=20, test_resolutions=[16])
        _ready(apart)
    finally:
        Toy.generate_chunk = PDEDataModule.generate_chunk
    torch.testing.assert_close(apart._splits["train"].x, small._splits["train"].x)
    torch.testing.assert_close(apart._tests[0].x[..., ::2], small._tests[0].x)
    assert not torch.equal(small._splits["train"].x[:5], small._tests[0].x)  # train and test are independent


def test_prepare_data_twice_generates_once_and_the_cache_is_named_by_its_key(tmp_path):
    dm = _toy(tmp_path)
    dm.prepare_data()
    calls = len(dm.generated)
    files = sorted(p.name for p in (tmp_path / "toy").iterdir())
    dm.prepare_data()
    assert len(dm.generated) == calls
    assert [f.rsplit("_", 1)[0] for f in files] == ["test_res16_n5_seed0", "test_res8_n5_seed0", "train_res8_n20_seed0"]
    other = _toy(tmp_path, shift=2.0)  # another solver setting: another digest, so it is generated anew
    other.prepare_data()
    assert len(list((tmp_path / "toy").iterdir())) == 6


def test_a_cache_written_with_other_settings_is_refused(tmp_path):
    dm = _toy(tmp_path)
    dm.prepare_data()
    path = dm.cache_path("train", 8, 20)
    d = torch.load(path, weights_only=True)
    d["meta"]["settings"]["shift"] = 5.0
    torch.save(d, path)
    with pytest.raises(ValueError, match="written with other settings.*delete it to regenerate"):
        dm.setup("fit")


def test_setup_without_prepare_data_and_loaders_without_setup_say_what_to_do(tmp_path):
    dm = _toy(tmp_path)
    with pytest.raises(RuntimeError, match=r"setup\(\) has not run; call setup\('fit'\) first"):
        dm.train_dataloader()
    with pytest.raises(FileNotFoundError, match=r"call prepare_data\(\) first"):
        dm.setup("fit")


def test_batch_size_larger_than_the_training_split(tmp_path):
    dm = _toy(tmp_path, batch_size=19)
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"batch_size=19 is larger than the 18 training samples .*at most 18"):
        dm.setup("fit")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size=0 is invalid"),
        (dict(n_train=1), "n_train=1 is invalid"),
        (dict(val_fraction=1.0), "val_fraction=1.0 is invalid"),
        (dict(train_file="a.pt", test_files=[]), r"test_files=\[\] is invalid"),
        (dict(train_file="a.pt", test_files="b.pt"), "give a list of files"),
        (dict(test_resolutions=[8, 8]), "repeats a resolution"),
        (dict(seed=-1), "seed=-1 is invalid"),
        (dict(test_batch_size=0), "test_batch_size=0 is invalid"),
    ],
)
def test_invalid_arguments_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _toy(tmp_path, **kwargs)


def test_two_test_files_on_one_grid_get_distinct_names(tmp_path, write_pt):
    data = {"x": torch.rand(6, 8), "y": torch.rand(6, 8)}
    files = [write_pt("a.pt", data), write_pt("b.pt", data)]
    train = write_pt("train.pt", {"x": torch.rand(20, 8), "y": torch.rand(20, 8)})
    dm = _ready(_toy(tmp_path, train_file=train, test_files=files))
    assert dm.test_names == ["res8", "res8_2"]


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.pt"
    save_pt_atomic({"a": torch.ones(2)}, target)
    assert torch.load(target, weights_only=True)["a"].sum() == 2

    def crash(obj, f):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pt_atomic({"a": torch.zeros(2)}, target)
    assert torch.load(target, weights_only=True)["a"].sum() == 2  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]  # and no temporary file is left


@pytest.mark.parametrize(
    "bad, message",
    [
        ("zero_sample", r"bad\.pt: 'y' is zero everywhere in 1 sample\(s\) \(first: 7\)"),
        ("constant", r"bad\.pt: 'y' channel\(s\) \[0\] hold the same value \(3\) at every point of all 20 samples"),
    ],
)
def test_degenerate_targets_are_refused_at_setup_naming_the_file_and_sample(tmp_path, write_pt, bad, message):
    y = torch.rand(20, 8) + 0.5
    if bad == "zero_sample":
        y[7] = 0.0
    else:
        y[:] = 3.0
    train = write_pt("bad.pt", {"x": torch.rand(20, 8), "y": y})
    test = write_pt("ok.pt", {"x": torch.rand(6, 8), "y": torch.rand(6, 8) + 0.5})
    dm = _toy(tmp_path, train_file=train, test_files=[test])
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")
    # a zero test sample is refused too: the metric would divide by its norm
    y_test = torch.rand(6, 8)
    y_test[2] = 0.0
    zero_test = write_pt("zero_test.pt", {"x": torch.rand(6, 8), "y": y_test})
    good = write_pt("good.pt", {"x": torch.rand(20, 8), "y": torch.rand(20, 8) + 0.5})
    with pytest.raises(ValueError, match=r"zero_test\.pt: 'y' is zero everywhere in 1 sample\(s\) \(first: 2\)"):
        _toy(tmp_path, train_file=good, test_files=[zero_test]).setup("fit")
