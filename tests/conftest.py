import os

import pytest
import torch

# Kernel tests run the Triton kernels on the CPU through the interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Every kernel launch the interpreter runs in this session is recorded, and
# test_zz_kernels_compile.py (collected last) compiles each for sm_90a: the interpreter
# accepts code that the GPU compiler rejects.
RECORDER = None
if os.environ["TRITON_INTERPRET"] == "1":
    try:
        from kernel_specs import Recorder
        RECORDER = Recorder()
        RECORDER.install()
    except ImportError:  # no Triton: the kernel tests skip themselves
        RECORDER = None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def kernel_recorder():
    """The session's recorder of interpreted kernel launches (None without the interpreter)."""
    return RECORDER
