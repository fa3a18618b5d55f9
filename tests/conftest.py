"""Shared test fixtures and helpers."""

import pytest
import torch

from snn2hw.core import _kernel


@pytest.fixture(autouse=True)
def _one_thread():
    """The test models are tiny: one thread avoids oversubscribing a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=[1, 2])
def threads(request):
    """Run the test with 1 and with 2 torch threads (the kernels split work by thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def kernel_lib(tmp_path_factory):
    """The compiled LIF kernel: the set-up's build, else one built here, else None."""
    lib = _kernel.load()
    if lib is None:
        try:
            lib = _kernel.load(_kernel.build(tmp_path_factory.mktemp("kernel") / "k.so"))
        except RuntimeError:
            lib = None
    return lib


@pytest.fixture(params=["kernel", "torch"])
def backend(request, kernel_lib, monkeypatch):
    """Run the test once with the compiled kernel and once with the torch loop."""
    if request.param == "kernel" and kernel_lib is None:
        pytest.skip("no C compiler: the kernel cannot be built here")
    monkeypatch.setattr(_kernel, "_lib", kernel_lib if request.param == "kernel" else None)
    monkeypatch.setattr(_kernel, "_tried", True)
    return request.param


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA device is (scripts/gpu-check)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (scripts/gpu-check runs these on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(owner, name)``: a list that gets one entry per call of ``owner.name``
    (which still runs) for the rest of the test."""
    def install(owner, name: str) -> list:
        seen, real = [], getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: seen.append(1) or real(*a, **k))
        return seen
    return install
