"""PDEDataModule: everything the PDE datasets share; a subclass says only how to read and how to generate samples.

A dataset (``datamodules/darcy.py`` and later Burgers, Navier-Stokes, EM) subclasses ``PDEDataModule`` and provides

* class attributes ``name`` (cache folder), ``n_dims``, ``in_channels``, ``out_channels``, ``complex_data``
  (a subclass whose channel count depends on its arguments sets them in ``__init__``);
* ``read_file(path) -> (x, y)``: one file of its public format, as ``(N, C, *spatial)`` tensors (formats too large
  to read whole override ``sample_count(path)`` and ``read_samples(path, rows)`` instead, which read only the rows
  used); ``subsamples_files(path)``: whether a file is brought to ``resolution``/``test_resolutions`` by taking
  every k-th grid point (default: files are used on their own grid, one test set per file);
  ``test_fraction(path)``: the share of a file that its format reserves for testing (PDEBench: the first 10%),
  so that ``train_file`` alone is enough;
* ``generate(rngs, resolutions) -> {s: (x, y)}``: one sample per random generator, at every resolution asked
  for, with its solver; and ``generator_settings()``: every setting that changes the generated data.

(Data that these two cannot describe can instead override ``load_train()``, ``load_tests()`` and
``prepare_data``; ``setup`` only needs the first two.)

The base does the rest, the same way for every dataset:

* **sources**: ``train_file`` and ``test_files`` are read (the first ``n_train``/``n_test`` samples; a test file
  that is also the training file gives its *last* ``n_test``, which must not overlap the training samples; a
  format with its own test split gives ``n_test`` of its test rows and ``n_train`` of the rest); without
  them the data is generated in ``prepare_data`` and cached under ``data_dir/<name>/`` as
  ``<split>_res<s>_n<n>_seed<seed>_<settings digest>.pt`` (written atomically; a cache of more samples with the
  same key is reused). Sample ``i`` of a split draws from its own stream ``(seed, split, i)``, so the data does not
  depend on ``n``, on chunking or on which resolutions were generated together, and the test sets at several
  resolutions (``test_resolutions``) hold the same samples (zero-shot super-resolution);
* **checks before training**, in ``setup``: each error names the file, the value and the fix;
* **splits**: the last ``val_fraction`` of the training samples is the validation set (model selection never sees
  a test set); every test set gets its own dataloader and a name in ``test_names`` (``res<s>``); predict uses the
  first test set;
* **normalisation**: ``x`` is normalised per channel with the mean/std of the training split only (so the same
  numbers serve every resolution); ``y`` stays in physical units and its training statistics ``y_mean``/``y_std``
  are offered to the LightningModule, which predicts normalised outputs and decodes them. Complex data: complex
  mean, real std ``sqrt(mean |v - mean|^2)``. The four statistics are saved in checkpoints (``state_dict``); stats
  restored from a checkpoint take precedence over refitted ones;
* **reproducible training order**: a permutation drawn from ``(seed, epoch)``, so a resumed run sees the same
  batches as an uninterrupted one.

Batches are dicts ``{"x": (B, in_channels, *spatial), "y": (B, out_channels, *spatial)}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from datamodules.io import check_keys, load_pt, save_pt_atomic
from datamodules.public_formats import check_subsampling, subsample_periodic

log = logging.getLogger(__name__)

__all__ = [
    "PDEDataModule",
    "Fields",
    "TestSet",
    "Generated",
    "FieldDataset",
    "EpochShuffleSampler",
    "ResumableDataLoader",
    "channel_stats",
    "check_positive_int",
    "check_targets",
    "as_fields",
    "grid_name",
]

CACHE_VERSION = 1  # bump when the cache layout or a generator changes, so old caches are not reused
_STREAMS = {"train": 0, "test": 1}  # independent random streams of the generated splits
_STATS = ("x_mean", "x_std", "y_mean", "y_std")

#: what ``generate`` returns: ``{resolution: (x, y)}``, each ``(n_samples, channels, *spatial)``
Generated = dict[int, tuple[Tensor, Tensor]]


class Fields(NamedTuple):
    """Paired samples ``x -> y``, each ``(N, C, *spatial)``, and where they came from (for error messages)."""

    x: Tensor
    y: Tensor
    source: str


class TestSet(NamedTuple):
    """A test set: its name (``res<s>``, used in metric names), fields and source."""

    name: str
    x: Tensor
    y: Tensor
    source: str


class FieldDataset(Dataset):
    """Paired input/output fields held in memory; items are ``{"x", "y"}`` dicts."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class EpochShuffleSampler(DistributedSampler):
    """A permutation drawn from ``(seed, epoch)`` alone (Lightning calls ``set_epoch`` at every epoch), shared by
    ``num_replicas`` processes: process ``rank`` takes every ``num_replicas``-th index from ``rank`` on (padded like
    ``DistributedSampler`` when ``n`` is not a multiple). So under DDP the union of the processes' ``i``-th batches
    of ``batch_size`` is the ``i``-th batch of a single process with ``num_replicas * batch_size``.

    It is a ``DistributedSampler`` so that Lightning keeps it under DDP: Lightning otherwise wraps a custom sampler
    in a ``DistributedSamplerWrapper`` with ``shuffle=True`` for training, which shuffles the permutation again with
    its own seed, and the global batches no longer match a single process's.
    """

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} of num_replicas={num_replicas} is invalid; need 0 <= rank < num_replicas")
        self.n, self.seed, self.epoch = n, seed, 0
        self.num_replicas, self.rank, self.shuffle, self.drop_last = num_replicas, rank, True, False
        self.num_samples = -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        order += order[: self.total_size - self.n]
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that saves its position in the epoch, so a run resumed mid-epoch sees exactly the batches an
    uninterrupted run would have seen next.

    Lightning (2.x) keeps a training loader's position only if the *loader* is stateful: ``FitLoop`` stores
    ``state_dict()`` of each train loader that has ``state_dict``/``load_state_dict`` in every checkpoint
    (``loops/fit_loop/state_dict/combined_loader``) and hands it back to ``load_state_dict`` before it creates the
    iterator (a stateful sampler alone is ignored). Without it a mid-epoch resume restarts the epoch's order from
    its first batch (with a ``PossibleUserWarning``). The state is ``{"epoch", "batches"}``: the sampler's epoch and the
    batches handed out in it; on resume the index sampler skips those batches without loading them. The position
    is counted where batches leave the loader (worker prefetching does not count), and it is kept per process, so
    it also holds under DDP (where Lightning re-creates the loader around a distributed sampler).
    """

    _position: list | None = None  # [sampler epoch, batches handed out in it] (class defaults: Lightning re-creates
    _resume: tuple | None = None  # the loader under DDP from its init arguments, so no __init__ override)

    def state_dict(self) -> dict[str, int | None]:
        epoch, batches = self._position or (_sampler_epoch(self), 0)
        return {"epoch": epoch, "batches": int(batches)}

    def load_state_dict(self, state_dict: dict[str, int | None]) -> None:
        epoch, batches = state_dict.get("epoch"), int(state_dict.get("batches", 0))
        self._resume = (epoch, batches)
        if epoch is not None and batches >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, self._resume = epoch + 1, None
        # Workers prefetch indices when the iterator is created, which Lightning does before it calls set_epoch.
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if epoch is not None and callable(set_epoch):
            set_epoch(epoch)

    @property
    def _index_sampler(self) -> Iterable:
        return _SkippingIndexSampler(self, super()._index_sampler)

    def __iter__(self) -> Iterator:
        return _CountingIterator(super().__iter__(), self)


def _sampler_epoch(loader: DataLoader) -> int | None:
    return getattr(loader.sampler, "epoch", None)


class _SkippingIndexSampler:
    """The loader's index sampler, minus the batches a restored position says were already seen (decided at the
    first index, i.e. after Lightning's ``set_epoch``)."""

    def __init__(self, loader: ResumableDataLoader, base: Iterable) -> None:
        self.loader, self.base = loader, base

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator:
        loader, epoch, skip = self.loader, _sampler_epoch(self.loader), 0
        if loader._resume is not None:
            saved_epoch, batches = loader._resume
            loader._resume = None
            skip = batches if saved_epoch == epoch else 0
        loader._position = [epoch, skip]
        yield from islice(iter(self.base), skip, None)


class _CountingIterator:
    """Counts the batches a loader's iterator hands out (the loader's position within the epoch)."""

    def __init__(self, it: Iterator, loader: ResumableDataLoader) -> None:
        self.it, self.loader = it, loader

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self):
        batch = next(self.it)
        if self.loader._position is not None:
            self.loader._position[1] += 1
        return batch

    def __len__(self) -> int:
        return len(self.it)


def channel_stats(t: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``(N, C, *spatial)`` fields, each of shape ``(C,)``.

    Complex fields get a complex mean and the real std ``sqrt(mean |t - mean|^2)``. A constant channel gets std 1
    (it cannot be scaled to unit variance, and dividing by ~0 would blow it up).
    """
    dims = [0, *range(2, t.ndim)]
    mean = t.mean(dim=dims)
    centred = t - mean.view(1, -1, *[1] * (t.ndim - 2))
    std = (centred.abs() ** 2).mean(dim=dims).sqrt()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def as_fields(t: Tensor, n_dims: int) -> Tensor:
    """Add the channel axis to single-channel data stored as ``(N, *spatial)``."""
    return t.unsqueeze(1) if isinstance(t, Tensor) and t.ndim == n_dims + 1 else t


def grid_name(shape: Sequence[int], taken: Sequence[str] = ()) -> str:
    """``res<s>`` for a grid of ``s`` points per axis (``res<s1>x<s2>`` otherwise), made unique among ``taken``."""
    base = f"res{shape[0]}" if len(set(shape)) == 1 else "res" + "x".join(map(str, shape))
    name, k = base, 2
    while name in taken:  # e.g. two test files on one grid
        name, k = f"{base}_{k}", k + 1
    return name


def check_targets(y: Tensor, source: str, training: bool) -> None:
    """Refuse degenerate targets ``y`` (``(N, C, *spatial)``): a sample that is zero everywhere (the relative L2
    loss and metric divide by its norm, so one such sample drives the validation L2 to ~1e6), or, in training
    data, a channel that is the same constant in every sample (zero variance: there is no operator to learn)."""
    norms = y.flatten(1).abs().square().sum(1)
    zero = (norms == 0).nonzero().flatten()
    if len(zero):
        shown = ", ".join(map(str, zero[:5].tolist())) + (", ..." if len(zero) > 5 else "")
        raise ValueError(
            f"{source}: 'y' is zero everywhere in {len(zero)} sample(s) (first: {shown}); the relative L2 loss divides "
            f"by each target's norm, so these samples cannot be scored: remove them from the file or fix the data"
        )
    if training and len(y) > 1:
        per_channel = y.transpose(0, 1).flatten(1)
        constant = (per_channel == per_channel[:, :1]).all(1).nonzero().flatten().tolist()
        if constant:
            value = per_channel[constant[0], 0].item()
            raise ValueError(
                f"{source}: 'y' channel(s) {constant} hold the same value ({value:g}) at every point of all {len(y)} "
                f"samples (zero variance); a constant target has nothing to learn: check the file's keys and layout"
            )


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    """Stop with an error naming ``name`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; use an integer >= {minimum}")


class PDEDataModule(LightningDataModule):
    """Base class of the PDE datasets: loading, generation cache, checks, splits, normalisation, dataloaders.

    Args:
        data_dir: folder of the generated-data cache (files named by resolution, sample count, seed and a digest
            of the solver settings).
        batch_size: training batch size (per device).
        test_batch_size: batch size of validation, test and predict; default ``batch_size``.
        num_workers: DataLoader worker processes; 0 loads in the main process, which suits data held in memory.
        val_fraction: fraction of the training samples (the last ones) held out for validation; model selection
            (best checkpoint) uses it, never a test set.
        seed: seed of the generated data (train and test from independent streams) and of the training order.
        normalize: normalise inputs with the training split's per-channel mean/std and offer the outputs'
            statistics to the model; False uses mean 0 and std 1 for both.
        train_file: training data in the dataset's public file format; null (with ``test_files`` null)
            generates the data with the dataset's solver (in ``prepare_data``, cached under ``data_dir``).
        test_files: test data files, one test dataloader each (e.g. several resolutions); give them together
            with ``train_file``.
        n_train: training samples (validation included): the first ``n_train`` of ``train_file``, or how many
            to generate.
        n_test: samples per test set: the first ``n_test`` of each test file, or how many to generate.
        resolution: grid points per spatial axis of the generated training set.
        test_resolutions: grids of the generated test sets, the same samples at each (zero-shot
            super-resolution). Default: ``[resolution]``.
    """

    # What the data is. Subclasses override these class attributes (or set them in ``__init__`` when they
    # depend on arguments); they are known before any data is read, so the CLI can link them into the model.
    name: ClassVar[str] = "pde"
    n_dims: int = 2
    in_channels: int = 1
    out_channels: int = 1
    complex_data: bool = False
    #: samples per ``generate`` call (one progress-bar step per chunk)
    generate_chunk: ClassVar[int] = 8

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 32,
        test_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        normalize: bool = True,
        train_file: str | None = None,
        test_files: list[str] | None = None,
        n_train: int = 1000,
        n_test: int = 100,
        resolution: int = 64,
        test_resolutions: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for arg, value, minimum in (
            ("n_train", n_train, 2),
            ("n_test", n_test, 1),
            ("resolution", resolution, 2),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("seed", seed, 0),
        ):
            check_positive_int(arg, value, minimum)
        if test_batch_size is not None:
            check_positive_int("test_batch_size", test_batch_size)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} is invalid; use a fraction in (0, 1), e.g. 0.1")
        own_split = train_file is not None and self.test_fraction(Path(train_file)) is not None
        if (train_file is None) != (test_files is None) and not (own_split and test_files is None):
            given, missing = ("train_file", "test_files") if test_files is None else ("test_files", "train_file")
            raise ValueError(
                f"{given} is set but {missing} is not; give both (the test sets must come from the distribution of "
                f"the training data), or neither to generate both with the solver"
            )
        if test_files is not None and (isinstance(test_files, str) or len(test_files) == 0):
            raise ValueError(
                f"test_files={test_files!r} is invalid; give a list of files, e.g. [test.pt], or null to generate "
                f"the test sets"
            )
        test_resolutions = [resolution] if test_resolutions is None else list(test_resolutions)
        if not test_resolutions:
            raise ValueError("test_resolutions=[] is invalid; give at least one resolution, or null for [resolution]")
        for s in test_resolutions:
            check_positive_int("test_resolutions entry", s, 2)
        if len(set(test_resolutions)) != len(test_resolutions):
            raise ValueError(f"test_resolutions={test_resolutions} repeats a resolution; list each once")
        self.train_file = train_file
        self.test_files = None if test_files is None else [str(f) for f in test_files]
        self.n_train, self.n_test = n_train, n_test
        self.resolution = resolution
        self.test_resolutions = test_resolutions
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.normalize = normalize
        # filled by setup (statistics also by load_state_dict)
        self.x_mean: Tensor | None = None
        self.x_std: Tensor | None = None
        self.y_mean: Tensor | None = None
        self.y_std: Tensor | None = None
        self.test_names: list[str] = []
        self.resolutions: list[tuple[int, ...]] = []
        self._splits: dict[str, Fields] = {}
        self._tests: list[TestSet] = []
        self._restored_stats = False
        self._whole: tuple[Path, Tensor, Tensor] | None = None  # the file read_file read last (read once)

    # ================================================================== what a dataset provides
    def read_file(self, path: Path) -> tuple[Tensor, Tensor]:
        """Read one data file of the dataset's public format as ``(x, y)``, each ``(N, C, *spatial)``."""
        raise NotImplementedError(f"{type(self).__name__} cannot read data files")

    def generate(self, rngs: Sequence[np.random.Generator], resolutions: Sequence[int]) -> Generated:
        """One sample per generator, at every resolution: ``{s: (x, y)}`` with ``x``, ``y`` ``(len(rngs), C, ...)``.

        Sample ``i`` must draw its randomness from ``rngs[i]`` only. A batched torch solver can draw each sample's
        noise on the CPU from ``torch.Generator().manual_seed(int(rng.integers(2**63)))``, stack, and solve the
        batch on any device.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot generate data; give train_file and test_files")

    def generator_settings(self) -> dict[str, int | float | str | bool]:
        """Every setting, other than resolution, sample count and seed, that changes the generated data."""
        return {}

    #: what ``n_train``/``n_test`` count in a file (error messages): "samples", or "trajectories" where one
    #: trajectory gives several samples
    sample_unit: ClassVar[str] = "samples"

    def subsamples_files(self, path: Path) -> bool:
        """Whether the fields of file ``path`` are brought to ``resolution`` (training) and to each of
        ``test_resolutions`` (one test set each) by taking every k-th point of each axis (the resolution must divide
        the file's grid). False (the default): files are used on their own grid, one test set per file."""
        return False

    def test_fraction(self, path: Path) -> float | None:
        """The share of file ``path`` that its format reserves for testing, as its first rows; None: none."""
        return None

    def sample_count(self, path: Path) -> int:
        """How many samples (``sample_unit``) file ``path`` holds. The default reads it with ``read_file`` (once:
        ``read_samples`` reuses it); a format too large to read whole overrides both with reads of its rows."""
        return len(self._read_whole(path)[0])

    def read_samples(
        self, path: Path, rows: slice, resolutions: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The ``(x, y)`` fields of the samples ``rows`` (``start:stop``) of file ``path``.

        ``resolutions`` (files that ``subsamples_files``): the grids the fields will be subsampled to, so a lazy
        reader may read every k-th point of the finest grid they all subsample (their least common multiple);
        the default reads the file's grid.
        """
        x, y = self._read_whole(path)
        return x[rows], y[rows]

    def from_cache(self, x: Tensor, y: Tensor, source: str) -> tuple[Tensor, Tensor]:
        """The task's fields from what ``generate`` cached (default: as cached; a cache of whole trajectories that
        serves several tasks turns them into the task's pairs here)."""
        return x, y

    def check_generated_resolutions(self, solve_resolution: int) -> None:
        """Refuse any generated resolution that is not every k-th point of a periodic solver grid."""
        for s in self.generated_resolutions():
            check_subsampling(s, solve_resolution, f"solve_resolution={solve_resolution}")

    # ================================================================== generation and its cache
    def _generated_splits(self) -> list[tuple[str, int, list[int]]]:
        """``(split, n, resolutions)`` of the data to generate: none when files are given (for both splits)."""
        if self.train_file is not None:
            return []
        return [("train", self.n_train, [self.resolution]), ("test", self.n_test, self.test_resolutions)]

    def generated_resolutions(self) -> list[int]:
        """Every resolution that will be generated (empty when files are given); subclasses check them."""
        return sorted({s for _, _, resolutions in self._generated_splits() for s in resolutions})

    def _cache_digest(self) -> str:
        key = {"version": CACHE_VERSION, "dataset": self.name, **self.generator_settings()}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    def _cache_dir(self) -> Path:
        return self.data_dir / self.name

    def cache_path(self, split: str, resolution: int, n: int) -> Path:
        """Where the generated ``split`` set of ``n`` samples at ``resolution`` is cached."""
        return self._cache_dir() / f"{split}_res{resolution}_n{n}_seed{self.seed}_{self._cache_digest()}.pt"

    def _find_cache(self, split: str, resolution: int, n: int) -> Path | None:
        """The cache file holding these samples: exactly ``n``, else the smallest larger one with the same key."""
        exact = self.cache_path(split, resolution, n)
        if exact.is_file():
            return exact
        pattern = re.compile(rf"{split}_res{resolution}_n(\d+)_seed{self.seed}_{self._cache_digest()}\.pt")
        larger = []
        for p in self._cache_dir().glob(f"{split}_res{resolution}_n*.pt"):
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) >= n:
                larger.append((int(m.group(1)), p))
        return min(larger)[1] if larger else None

    def _meta(self, split: str, resolution: int, n: int) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "dataset": self.name,
            "split": split,
            "resolution": resolution,
            "n": n,
            "seed": self.seed,
            "settings": self.generator_settings(),
        }

    def prepare_data(self) -> None:
        """Generate what is neither given as files nor cached yet (Lightning calls it once per node, before setup)."""
        for split, n, resolutions in self._generated_splits():
            missing = [s for s in resolutions if self._find_cache(split, s, n) is None]
            if missing:
                self._generate_split(split, n, missing)

    def _generate_split(self, split: str, n: int, resolutions: list[int]) -> None:
        log.info(
            "generating %d %s %s samples at resolution(s) %s into %s",
            n, self.name, split, resolutions, self._cache_dir(),
        )
        parts: dict[int, list[tuple[Tensor, Tensor]]] = {s: [] for s in resolutions}
        start_time = time.perf_counter()
        with tqdm(total=n, desc=f"{self.name} {split} data", unit="sample") as bar:
            for start in range(0, n, self.generate_chunk):
                stop = min(n, start + self.generate_chunk)
                rngs = [np.random.default_rng([self.seed, _STREAMS[split], i]) for i in range(start, stop)]
                out = self.generate(rngs, resolutions)
                if sorted(out) != sorted(resolutions):
                    raise RuntimeError(
                        f"{type(self).__name__}.generate returned resolutions {sorted(out)}, asked for {resolutions}"
                    )
                for s in resolutions:
                    parts[s].append(out[s])
                bar.update(stop - start)
        seconds = time.perf_counter() - start_time
        for s in resolutions:
            x = torch.cat([p[0] for p in parts[s]])
            y = torch.cat([p[1] for p in parts[s]])
            save_pt_atomic({"x": x, "y": y, "meta": self._meta(split, s, n)}, self.cache_path(split, s, n))
        log.info("generated %d %s %s samples in %.1f s (%.1f samples/s)", n, self.name, split, seconds, n / seconds)

    def _cached_fields(self, split: str, resolution: int, n: int) -> Fields:
        path = self._find_cache(split, resolution, n)
        if path is None:
            raise FileNotFoundError(
                f"the generated {self.name} {split} set ({n} samples at resolution {resolution}) is not in "
                f"{self._cache_dir()}; call prepare_data() first (the Trainer does), or check data_dir"
            )
        source = f"generated {self.name} data {path}"
        d = load_pt(path, f"generated {self.name} data")
        check_keys(d, ["x", "y", "meta"], source)
        expected = self._meta(split, resolution, d["meta"].get("n", -1) if isinstance(d["meta"], dict) else -1)
        if d["meta"] != expected:
            raise ValueError(
                f"{source} was written with other settings ({d['meta']}, expected {expected}); delete it to "
                f"regenerate"
            )
        return Fields(*self.from_cache(d["x"][:n], d["y"][:n], source), source)

    # ================================================================== files
    def _read_whole(self, path: Path) -> tuple[Tensor, Tensor]:
        key = Path(path).resolve()
        if self._whole is None or self._whole[0] != key:
            x, y = self.read_file(Path(path))
            if len(x) != len(y):
                raise ValueError(
                    f"{self.name} data file {path}: x has {len(x)} samples but y has {len(y)}; they must be paired "
                    f"one to one"
                )
            self._whole = (key, x, y)
        return self._whole[1], self._whole[2]

    def _file_fields(self, file: str, n: int, arg: str, role: str) -> list[Fields]:
        """``n`` samples of a file for ``role``: "train" (the training file), "test" (a test file, its last
        samples if it is also the training file) or "split" (the test rows of the training file's own split); one
        set per grid (``resolution`` or ``test_resolutions`` for files that ``subsamples_files``)."""
        path, source, unit = Path(file), f"{self.name} data file {file}", self.sample_unit
        total = self.sample_count(path)
        fraction = self.test_fraction(path) if self.test_files is None else None
        n_split = int(total * fraction) if fraction is not None else 0  # that format's own test rows come first
        if role == "split":
            if n > n_split:
                raise ValueError(
                    f"{source} has {total} {unit}, of which its format's test split (the first {fraction:.0%}) holds "
                    f"{n_split}, but {arg}={n} asks for more; set {arg} to at most {n_split}, or give test_files"
                )
            rows = slice(0, n)
        elif role == "test" and path.resolve() == Path(self.train_file).resolve():
            if self.n_train + n > total:
                raise ValueError(
                    f"{source} is both the training file (its first n_train={self.n_train}) and a test file (its "
                    f"last {arg}={n}) but has only {total} {unit}, so they would overlap; lower n_train or {arg}"
                )
            rows = slice(total - n, total)
        else:
            if n_split + n > total:
                held = f" after the {n_split} of its format's test split" if n_split else ""
                raise ValueError(
                    f"{source} has {total - n_split} {unit}{held} but {arg}={n} asks for more; set {arg} to at most "
                    f"{total - n_split}"
                )
            rows = slice(n_split, n_split + n)
        grids = [self.resolution] if role == "train" else self.test_resolutions
        grids = grids if self.subsamples_files(path) else None
        x, y = self.read_samples(path, rows, grids)
        return self._file_grids(Fields(x, y, source), grids or [None])

    def _file_grids(self, fields: Fields, resolutions: Sequence[int | None]) -> list[Fields]:
        """The fields on each grid (None: as stored), contiguous: the statistics then do not depend on the layout
        the format's reader happened to produce (a strided view sums in another order)."""
        x, y, source = fields
        return [
            fields if s is None else Fields(subsample_periodic(x, s, self.n_dims, source).contiguous(),
                                            subsample_periodic(y, s, self.n_dims, source).contiguous(), source)
            for s in resolutions
        ]

    # ================================================================== checks
    def check_fields(self, fields: Fields, training: bool = False) -> Fields:
        """Validate a set of samples (``training``: the training file, whose targets must vary); return it as
        float32 (complex64 for complex data)."""
        x, y, src = fields
        for key, t, channels in (("x", x, self.in_channels), ("y", y, self.out_channels)):
            expected = f"(N, {channels}, {', '.join(['s'] * self.n_dims)})"
            if not isinstance(t, Tensor):
                raise ValueError(f"{src}: '{key}' is a {type(t).__name__}; expected a tensor shaped {expected}")
            if t.ndim != self.n_dims + 2 or t.shape[1] != channels:
                raise ValueError(
                    f"{src}: '{key}' has shape {tuple(t.shape)}; expected {expected} for {self.n_dims}-D "
                    f"{type(self).__name__} data with {channels} channel(s)"
                )
            if t.is_complex() and not self.complex_data:
                raise ValueError(f"{src}: '{key}' is complex ({t.dtype}) but {type(self).__name__} takes real data")
            if not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
                raise ValueError(
                    f"{src}: '{key}' has dtype {t.dtype}; expected a float{', complex' * self.complex_data} or bool "
                    f"tensor (convert it with .float())"
                )
        if len(x) != len(y):
            raise ValueError(f"{src}: x has {len(x)} samples but y has {len(y)}; they must be paired one to one")
        if len(x) == 0:
            raise ValueError(f"{src}: the data holds no samples")
        if x.shape[2:] != y.shape[2:]:
            raise ValueError(
                f"{src}: 'x' is on a {tuple(x.shape[2:])} grid but 'y' on {tuple(y.shape[2:])}; input and output "
                f"must share the grid"
            )
        dtype = torch.complex64 if self.complex_data else torch.float32
        x, y = x.to(dtype), y.to(dtype)
        for key, t in (("x", x), ("y", y)):
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                first = int(bad.flatten(1).any(1).nonzero()[0])
                raise ValueError(
                    f"{src}: '{key}' contains {int(bad.sum())} NaN/Inf values (first in sample {first}); clean the "
                    f"file or regenerate the data"
                )
        check_targets(y, src, training)
        return Fields(x, y, src)

    # ================================================================== setup
    def load_train(self) -> Fields:
        """The training samples (validation included): the first ``n_train`` of the file, or the generated ones.

        Override (with ``load_tests`` and ``prepare_data``) only for data that ``read_file``/``generate`` cannot
        describe.
        """
        if self.train_file is not None:
            return self._file_fields(self.train_file, self.n_train, "n_train", "train")[0]
        return self._cached_fields("train", self.resolution, self.n_train)

    def load_tests(self) -> list[TestSet]:
        """The test sets, one per generated resolution, or per file (and per test resolution, for files that
        are subsampled), named by their grid (``res<s>``)."""
        if self.train_file is not None:
            files = [(f, "test") for f in self.test_files] if self.test_files else [(self.train_file, "split")]
            sets = []
            for file, role in files:
                sets += self._file_fields(file, self.n_test, "n_test", role)
        else:
            sets = [self._cached_fields("test", s, self.n_test) for s in self.test_resolutions]
        named: list[TestSet] = []
        for x, y, source in sets:
            named.append(TestSet(grid_name(tuple(x.shape[2:]), [t.name for t in named]), x, y, source))
        return named

    def setup(self, stage: str | None = None) -> None:
        """Read and check every split, hold out validation, fit the statistics (every stage: all are cheap)."""
        train = self.check_fields(Fields(*self.load_train()), training=True)
        n = len(train.x)
        n_val = max(1, round(self.val_fraction * n))
        if n - n_val < 1:
            raise ValueError(f"{train.source}: {n} samples leave none for training after holding out {n_val}")
        fit = Fields(train.x[: n - n_val], train.y[: n - n_val], train.source)
        if self.batch_size > len(fit.x):
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the {len(fit.x)} training samples ({n} in "
                f"{train.source} minus {n_val} held out for validation); set batch_size to at most {len(fit.x)} "
                f"or raise n_train"
            )
        self._set_stats(fit)
        self._splits = {"train": fit, "val": Fields(train.x[n - n_val :], train.y[n - n_val :], train.source)}
        self._tests = [TestSet(name, *self.check_fields(Fields(x, y, src))) for name, x, y, src in self.load_tests()]
        self.test_names = [t.name for t in self._tests]
        self.resolutions = [tuple(fit.x.shape[2:])] + [tuple(t.x.shape[2:]) for t in self._tests]
        self._whole = None
        log.info(
            "%s: %d train / %d validation samples on %s; test sets %s",
            type(self).__name__, len(fit.x), n_val, self.resolutions[0],
            ", ".join(f"{name} ({len(t.x)})" for name, t in zip(self.test_names, self._tests, strict=True)),
        )

    def _set_stats(self, fit: Fields) -> None:
        if self.normalize:
            (x_mean, x_std), (y_mean, y_std) = channel_stats(fit.x), channel_stats(fit.y)
        else:
            x_mean, y_mean = fit.x.new_zeros(self.in_channels), fit.y.new_zeros(self.out_channels)
            x_std, y_std = torch.ones(self.in_channels), torch.ones(self.out_channels)
        fitted = {"x_mean": x_mean, "x_std": x_std, "y_mean": y_mean, "y_std": y_std}
        if not self._restored_stats:
            for k, v in fitted.items():
                setattr(self, k, v)
            return
        differ = [k for k, v in fitted.items() if not torch.allclose(getattr(self, k).to(v.dtype), v, rtol=1e-4)]
        if differ:
            log.warning(
                "the normalisation statistics %s restored from the checkpoint differ from this training data's; "
                "using the checkpoint's (the model was trained with them)", differ,
            )

    # ================================================================== normalisation
    def _view(self, stat: Tensor, like: Tensor) -> Tensor:
        return stat.to(like.device).view(1, -1, *[1] * (like.ndim - 2))

    def encode_x(self, x: Tensor) -> Tensor:
        """Physical inputs ``(N, C, ...)`` -> normalised."""
        return (x - self._view(self.x_mean, x)) / self._view(self.x_std, x)

    def decode_x(self, x: Tensor) -> Tensor:
        """Normalised inputs ``(N, C, ...)`` -> physical units (e.g. to plot them)."""
        return x * self._view(self.x_std, x) + self._view(self.x_mean, x)

    # ================================================================== dataloaders
    def _dataset(self, fields: Fields) -> FieldDataset:
        # encoded when the loader is built, so statistics restored from a checkpoint after setup apply
        return FieldDataset(self.encode_x(fields.x), fields.y)

    def _require(self, stage: str) -> None:
        if not self._splits:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run; call setup({stage!r}) first")

    def _loader(
        self, fields: Fields, batch_size: int, sampler: Sampler | None = None, loader_cls: type = DataLoader
    ) -> DataLoader:
        return loader_cls(
            self._dataset(fields),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._require("fit")
        train = self._splits["train"]
        trainer = self.trainer  # under DDP each process takes its share of the same permutation
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochShuffleSampler(len(train.x), self.seed, num_replicas=world, rank=rank)
        return self._loader(train, self.batch_size, sampler, loader_cls=ResumableDataLoader)

    def val_dataloader(self) -> DataLoader:
        self._require("fit")
        return self._loader(self._splits["val"], self.test_batch_size)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per test set, in the order of ``test_names`` (a single loader when there is one)."""
        self._require("test")
        loaders = [self._loader(t, self.test_batch_size) for t in self._tests]
        return loaders[0] if len(loaders) == 1 else loaders

    def predict_dataloader(self) -> DataLoader:
        """The first test set."""
        self._require("predict")
        return self._loader(self._tests[0], self.test_batch_size)

    # ================================================================== identity
    def identity(self) -> dict[str, Any]:
        """What the training data is, as plain data (checkpoints record it; a resume on other data is refused):
        the class, the source (``train_file``, or the seed and generator settings), the grid, the sample count, the
        validation split and the normalisation statistics (``None`` until ``setup`` has fitted or a checkpoint has
        restored them; complex statistics as ``[re, im]`` pairs). Test sets are not part of it."""

        def plain(t: Tensor | None) -> list | None:
            if t is None:
                return None
            t = t.detach().cpu()
            return (torch.view_as_real(t) if t.is_complex() else t).flatten().tolist()

        generated = self.train_file is None
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "train_file": self.train_file,
            "generator": {"seed": self.seed, **self.generator_settings()} if generated else None,
            "resolution": self.resolution if generated else None,
            "n_train": self.n_train,
            "val_fraction": self.val_fraction,
            "normalize": self.normalize,
            **{k: plain(getattr(self, k)) for k in _STATS},
        }

    # ================================================================== checkpointed statistics
    def state_dict(self) -> dict[str, Tensor]:
        """The normalisation statistics, plain tensors (Lightning stores them in every checkpoint)."""
        return {k: getattr(self, k).clone() for k in _STATS if getattr(self, k) is not None}

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        check_keys(state_dict, _STATS, f"{type(self).__name__} state in the checkpoint")
        for k in _STATS:
            channels = self.in_channels if k.startswith("x") else self.out_channels
            value = torch.as_tensor(state_dict[k])
            if value.shape != (channels,):
                raise ValueError(
                    f"checkpoint {k} has shape {tuple(value.shape)} but {type(self).__name__} has {channels} "
                    f"channel(s); the checkpoint was trained on other data"
                )
            setattr(self, k, value.clone())
        self._restored_stats = True
