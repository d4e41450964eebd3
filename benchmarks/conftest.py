import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture
def synced():
    """``synced(fn)``: ``fn`` followed by ``torch.cuda.synchronize()``, so that a benchmark times
    the GPU work, not only its launch."""
    def wrap(fn):
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return wrap
