"""Fixtures of the datamodule tests: tiny generated Darcy problems and small hand-made data files."""

from __future__ import annotations

import pytest
import torch

from datamodules import DarcyDataModule

# 20 samples on 9x9 (train) and 4 test samples at 9x9 and 17x17, solved on 17x17: generated in milliseconds.
SMALL_DARCY = dict(n_train=20, n_test=4, resolution=9, test_resolutions=[9, 17], solve_resolution=17, batch_size=4)


@pytest.fixture
def small_darcy(tmp_path):
    """Factory of tiny generated-Darcy datamodules caching under ``tmp_path/data``; keywords override."""

    def make(**overrides) -> DarcyDataModule:
        return DarcyDataModule(**{**SMALL_DARCY, "data_dir": str(tmp_path / "data"), **overrides})

    return make


@pytest.fixture
def write_pt(tmp_path):
    """``write_pt(name, obj) -> str``: save ``obj`` with ``torch.save`` under ``tmp_path``."""

    def write(name: str, obj) -> str:
        path = tmp_path / name
        torch.save(obj, path)
        return str(path)

    return write


@pytest.fixture
def darcy_pair():
    """``darcy_pair(n, s, seed)``: neuraloperator-format Darcy data, bool ``x`` and float ``y``, (n, s, s)."""

    def make(n: int = 12, s: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"x": torch.rand(n, s, s, generator=g) > 0.5, "y": torch.rand(n, s, s, generator=g)}

    return make
