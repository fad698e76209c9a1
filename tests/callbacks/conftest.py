"""Callback tests run single-threaded: their tensors are tiny, so threads only add contention on a shared machine."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")  # module scope: also before module-scoped fixtures
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
