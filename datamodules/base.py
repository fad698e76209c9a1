"""PDEDataModule: what every PDE dataset shares (loading, checks, splits, normalisation, loaders, caching).

A subclass only says how to produce its tensors: ``load_train()`` and ``load_tests()`` return fields shaped
``(N, channels, *spatial)`` (from public files or from the generated cache), and optionally ``generate()`` writes
that cache in ``prepare_data``. Everything else is here:

* **checks before training**: counts, shapes, dtypes, NaN/Inf, batch size vs data size; each error names the
  file or split, the value and the fix;
* **splits**: the last ``val_fraction`` of the training samples is the validation set (model selection never
  sees a test set); every test set (e.g. one per resolution) gets its own dataloader and name (``test_names``);
* **normalisation**: per-channel mean/std of ``x`` fitted on the training split only (resolution-independent),
  applied to every split; ``y`` stays in physical units and its train statistics ``y_mean``/``y_std`` are offered
  to the LightningModule (which predicts normalised outputs and decodes them). All four are saved in checkpoints
  through ``state_dict``;
* **reproducible shuffling**: the training order is a function of ``(seed, epoch)``, so a resumed run sees the
  same batches as an uninterrupted one.

Batches are dicts ``{"x": (B, in_channels, *spatial), "y": (B, out_channels, *spatial)}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

__all__ = ["PDEDataModule", "FieldDataset", "EpochShuffleSampler", "load_pt", "save_pt_atomic", "channel_stats"]


class FieldDataset(Dataset):
    """Paired input/output fields held in memory."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``(seed, epoch)`` only; Lightning calls ``set_epoch``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def load_pt(path: str | os.PathLike, what: str = "data file") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path (relative paths start at {Path.cwd()})")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); re-download or regenerate it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt archives
        raise ValueError(
            f"{what} {path} could not be read ({type(err).__name__}: {err}); the file is corrupt, truncated or "
            f"not a torch .pt file: re-download or regenerate it"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def save_pt_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def channel_stats(t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``(N, C, *spatial)`` fields (complex: complex mean, real std of |t - mean|)."""
    dims = [0] + list(range(2, t.ndim))
    mean = t.mean(dim=dims)
    shape = (1, -1) + (1,) * (t.ndim - 2)
    centred = t - mean.view(shape)
    var = (centred.abs() ** 2).mean(dim=dims) if t.is_complex() else (centred**2).mean(dim=dims)
    std = var.sqrt().clamp_min(1e-12)
    return mean, std


class PDEDataModule(LightningDataModule):
    """Base class of the PDE datasets (see the module docstring).

    Args:
        data_dir: folder for generated data (a cache keyed by the generation parameters).
        batch_size: training batch size.
        test_batch_size: batch size for validation, test and predict (default: ``batch_size``).
        num_workers: DataLoader worker processes (0 = load in the main process; the data is in memory).
        val_fraction: fraction of the training samples held out (the last ones) for validation.
        seed: seed of data generation and of the training order.
        normalize: normalise inputs with the training split's per-channel mean and std.
    """

    #: spatial dimensions of the fields; subclasses set it (or compute it in ``__init__``)
    n_dims: int = 2

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        test_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "batch_size" else 0):
                raise ValueError(f"{name}={value!r} is invalid; use an int >= {1 if name == 'batch_size' else 0}")
        if test_batch_size is not None and test_batch_size < 1:
            raise ValueError(f"test_batch_size={test_batch_size!r} is invalid; use an int >= 1 or leave it unset")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} is invalid; use a fraction in (0, 1), e.g. 0.1")
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.normalize = normalize
        self.x_mean: Tensor | None = None
        self.x_std: Tensor | None = None
        self.y_mean: Tensor | None = None
        self.y_std: Tensor | None = None
        self.test_names: list[str] = []
        self.resolutions: list[tuple[int, ...]] = []
        self._train: FieldDataset | None = None
        self._val: FieldDataset | None = None
        self._tests: list[FieldDataset] = []

    # ------------------------------------------------------------------ what subclasses provide
    @property
    def in_channels(self) -> int:
        return 1

    @property
    def out_channels(self) -> int:
        return 1

    @property
    def complex_data(self) -> bool:
        return False

    def load_train(self) -> tuple[Tensor, Tensor, str]:
        """Training fields ``(x, y, source)``, each ``(N, C, *spatial)``; ``source`` names them in errors."""
        raise NotImplementedError

    def load_tests(self) -> list[tuple[str, Tensor, Tensor, str]]:
        """Test sets ``(name, x, y, source)``, one per test dataloader."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    def check_fields(self, x: Tensor, y: Tensor, source: str) -> tuple[Tensor, Tensor]:
        """Validate a pair of field tensors and return them as float32 (complex64 for complex data)."""
        for name, t, channels in (("x", x, self.in_channels), ("y", y, self.out_channels)):
            if not isinstance(t, Tensor):
                raise ValueError(f"{source}: '{name}' is a {type(t).__name__}, expected a tensor")
            if t.ndim != self.n_dims + 2:
                raise ValueError(
                    f"{source}: '{name}' has shape {tuple(t.shape)}; expected (N, {channels}, "
                    f"{', '.join(['s'] * self.n_dims)}) for {self.n_dims}-D {type(self).__name__} data"
                )
            if t.shape[1] != channels:
                raise ValueError(f"{source}: '{name}' has {t.shape[1]} channels, expected {channels}")
            if not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
                raise ValueError(f"{source}: '{name}' has dtype {t.dtype}; expected a float, complex or bool tensor")
            if t.is_complex() and not self.complex_data:
                raise ValueError(f"{source}: '{name}' is complex but {type(self).__name__} expects real fields")
        if len(x) != len(y):
            raise ValueError(f"{source}: x has {len(x)} samples but y has {len(y)}; they must be paired one to one")
        if len(x) == 0:
            raise ValueError(f"{source}: no samples")
        if x.shape[2:] != y.shape[2:]:
            raise ValueError(f"{source}: x grid {tuple(x.shape[2:])} differs from y grid {tuple(y.shape[2:])}")
        dtype = torch.complex64 if self.complex_data else torch.float32
        x, y = x.to(dtype), y.to(dtype)
        for name, t in (("x", x), ("y", y)):
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                first = int(bad.flatten(1).any(1).nonzero()[0])
                raise ValueError(
                    f"{source}: '{name}' contains {int(bad.sum())} NaN/Inf values (first in sample {first}); "
                    f"clean or regenerate the data"
                )
        return x, y

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        x, y, source = self.load_train()
        x, y = self.check_fields(x, y, source)
        n_val = max(1, round(self.val_fraction * len(x)))
        if len(x) - n_val < 1:
            raise ValueError(f"{source}: {len(x)} samples leave none for training after holding out {n_val}")
        x_tr, y_tr, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
        if self.batch_size > len(x_tr):
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the {len(x_tr)} training samples of {source} "
                f"(after holding out {n_val} for validation); use a batch_size <= {len(x_tr)} or more data"
            )
        if self.normalize:
            self.x_mean, self.x_std = channel_stats(x_tr)
        else:
            self.x_mean = torch.zeros(self.in_channels, dtype=x.dtype)
            self.x_std = torch.ones(self.in_channels)
        self.y_mean, self.y_std = channel_stats(y_tr)
        self._train = FieldDataset(self.encode_x(x_tr), y_tr)
        self._val = FieldDataset(self.encode_x(x_val), y_val)
        self.resolutions = [tuple(x.shape[2:])]
        self._tests, self.test_names = [], []
        for name, xt, yt, src in self.load_tests():
            xt, yt = self.check_fields(xt, yt, src)
            self._tests.append(FieldDataset(self.encode_x(xt), yt))
            self.test_names.append(name)
            self.resolutions.append(tuple(xt.shape[2:]))
        log.info(
            "%s: %d train / %d val samples at %s; test sets %s",
            type(self).__name__, len(x_tr), n_val, tuple(x.shape[2:]), dict(zip(self.test_names, map(len, self._tests),
                                                                              strict=True)),
        )

    def encode_x(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.x_mean.view(shape)) / self.x_std.view(shape)

    def decode_x(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return x * self.x_std.view(shape).to(x.device) + self.x_mean.view(shape).to(x.device)

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(ds), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _require(self, what: Any, stage: str) -> Any:
        if what is None or what == []:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run; call setup('{stage}') first")
        return what

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require(self._train, "fit"), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self._val, "fit"), self.test_batch_size)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(ds, self.test_batch_size) for ds in self._require(self._tests, "test")]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require(self._tests, "predict")[0], self.test_batch_size)

    # ------------------------------------------------------------------ checkpointed statistics
    def state_dict(self) -> dict[str, Tensor]:
        return {
            k: getattr(self, k).clone()
            for k in ("x_mean", "x_std", "y_mean", "y_std")
            if getattr(self, k) is not None
        }

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        for k, v in state_dict.items():
            if k in ("x_mean", "x_std", "y_mean", "y_std"):
                setattr(self, k, v)


def as_fields(t: Tensor, n_dims: int) -> Tensor:
    """Add the channel axis to single-channel data stored as ``(N, *spatial)``."""
    return t.unsqueeze(1) if t.ndim == n_dims + 1 else t


def check_keys(obj: dict, keys: Sequence[str], source: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{source} has no key(s) {missing}; found {sorted(obj)}; expected a dict with {list(keys)}")
