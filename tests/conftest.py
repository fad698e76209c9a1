"""Shared fixtures: seeded RNG, tiny models and CPU trainer settings that keep every test fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_NEURALOP = REPO.parent / "shared" / "data" / "neuralop"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture
def tiny_fno():
    from neuralop.models import FNO

    torch.manual_seed(0)
    return FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2)


@pytest.fixture
def cpu_trainer_kwargs(tmp_path):
    return dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )


@pytest.fixture
def neuralop_darcy_dir():
    if not (SHARED_NEURALOP / "darcy_train_16.pt").is_file():
        pytest.skip(f"neuraloperator's Darcy data is not at {SHARED_NEURALOP} (the shared data folder is absent)")
    return SHARED_NEURALOP
