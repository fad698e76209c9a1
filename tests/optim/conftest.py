"""Optimizer tests run single-threaded: their tensors are tiny, so threads only add contention (and minutes of
spinning) on a shared 2-core machine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
