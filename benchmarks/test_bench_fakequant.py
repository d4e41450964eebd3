"""pytest-benchmark timings of the fused fake-quant matmuls against the eager reference (GPU).

Run: ``PYTHONPATH=. pytest benchmarks/test_bench_fakequant.py --benchmark-only`` on a CUDA
machine (``benchmarks/bench_fakequant.py`` is the full sweep with correctness checks).
"""
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
pytest.importorskip("pytest_benchmark")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                       reason="timings of the interpreter mean nothing"),
]

LINEAR = {"vit_b_qkv": (197 * 32, 768, 2304), "vit_b_fc2": (197 * 32, 3072, 768),
          "vit_h_fc1": (257 * 32, 1280, 5120)}


def _quantizer(x):
    lo, hi = x.float().amin(), x.float().amax()
    s = (hi - lo) / 15
    return s, torch.round(-lo / s) + 0.3, 15


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", list(LINEAR))
def test_fake_quant_linear(benchmark, synced, case, dtype, backend):
    from erq_kernels import fakequant as fq, reference as ref
    m, k, n = LINEAR[case]
    x = (torch.randn(m, k, device="cuda") * 1.5).to(dtype)
    w = (torch.randn(n, k, device="cuda") / k ** 0.5).to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype)
    s, z, qmax = _quantizer(x)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 eager: IEEE SGEMM
    if backend == "triton":
        fn = lambda: fq.fake_quant_linear(x, w, bias, s, z, qmax)  # noqa: E731
    else:
        fn = lambda: F.linear(ref.fake_quant(x, s, z, qmax), w, bias)  # noqa: E731
    out = synced(fn)()
    xq = ref.fake_quant(x.float(), s, z, qmax).to(dtype).double()
    exact = xq @ w.double().T + bias.double()
    err = (torch.linalg.norm(out.double() - exact) / torch.linalg.norm(exact)).item()
    assert err < (1e-6 if dtype == torch.float32 else 3e-2)
    benchmark.extra_info.update(m=m, k=k, n=n, error=err)
    benchmark(synced(fn))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fake_quant_matmul_pv(benchmark, synced, dtype, backend):
    from erq_kernels import fakequant as fq, reference as ref
    b, h, t, d = 32, 12, 197, 64
    p = torch.softmax(torch.randn(b, h, t, t, device="cuda") * 2, -1).to(dtype)
    v = torch.randn(b, h, t, d, device="cuda").to(dtype)
    aq, bq = ("log2", p.float().amax(), 4), ("uniform", *_quantizer(v))
    fn = (lambda: fq.fake_quant_matmul(p, v, aq, bq)) if backend == "triton" else \
        (lambda: ref.fake_quant_matmul(p, v, aq, bq))
    out = synced(fn)()
    exact = ref.fake_quant_matmul(p.float(), v.float(), aq, bq).to(dtype).double()
    err = (torch.linalg.norm(out.double() - exact) / torch.linalg.norm(exact)).item()
    assert err < (1e-5 if dtype == torch.float32 else 3e-2)
    benchmark(synced(fn))
