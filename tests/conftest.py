"""Shared test fixtures and helpers."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test models are tiny: one thread avoids oversubscribing a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA device is (scripts/gpu-check)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (scripts/gpu-check runs these on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
