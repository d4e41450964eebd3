"""pytest-benchmark timings of the Triton linear algebra against torch.linalg (GPU only).

Run: ``pytest benchmarks/test_bench_linalg.py --benchmark-only`` on a CUDA machine (the full
table with TFLOP/s and speed-ups comes from ``benchmarks/bench_linalg.py``).
"""
import importlib

import pytest
import torch

pytest.importorskip("pytest_benchmark")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytestmark = pytest.mark.gpu

SHAPES = [(36, 193), (12, 769), (36, 769), (12, 3073)]


def _gram(batch, n):
    x = torch.randn(batch, n, n, device="cuda")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    g = x @ x.mT / n
    torch.backends.cuda.matmul.allow_tf32 = prev
    g.diagonal(dim1=-2, dim2=-1).add_(0.05)
    return g


def _run(benchmark, run):
    run()
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


def _impl(op, backend):
    importlib.import_module("erq_kernels.cholesky")
    from erq_kernels import _dispatch
    return _dispatch._IMPLS[op][backend]


@pytest.mark.parametrize("backend", ["triton", "reference", "torch_loop"])
@pytest.mark.parametrize("batch,n", SHAPES)
def test_bench_cholesky(benchmark, synced, batch, n, backend):
    g = _gram(batch, n)
    fn = _impl("cholesky", backend)
    _run(benchmark, synced(lambda: fn(g, 0.01)))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("batch,n", SHAPES)
def test_bench_ridge_solve(benchmark, synced, batch, n, backend):
    g = _gram(batch, n)
    b = torch.randn(batch, n, 3 * n, device="cuda")
    fn = _impl("ridge_solve", backend)
    _run(benchmark, synced(lambda: fn(g, b, 0.01)))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("batch,n", SHAPES)
def test_bench_inverse_cholesky_upper(benchmark, synced, batch, n, backend):
    g = _gram(batch, n)
    fn = _impl("inverse_cholesky_upper", backend)
    _run(benchmark, synced(lambda: fn(g, 0.01)))
