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

