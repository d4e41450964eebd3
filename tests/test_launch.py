"""erq_kernels/_launch.py: the cached launch of small kernels (the one-pass quantizers)."""
import importlib

import pytest
import torch

from erq_kernels import fakequant as fq
from erq_kernels import reference

L = importlib.import_module("erq_kernels._launch")


def test_align_key_separates_what_triton_specializes_on():
    base = torch.zeros(64)
    key = L.align_key
    assert key(base) == key(base[4:])  # 16 bytes further: aligned too
    assert key(base) != key(base[1:])  # 4 bytes off
    assert key(base) != key(base.double())
    assert key(32) == key(48) and key(32) != key(33)
    assert key(1) != key(17)  # 1 may be specialized as a constant
    assert key(2 ** 31) != key(2 ** 31 - 16)  # 64-bit integer argument
    assert key(True) != key(1) and key(0.5) == key(2.5)


def test_interpreter_always_goes_through_the_jit(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU test setup")
    monkeypatch.setattr(L, "_SUPPORTED", None)
    assert not L.supported()  # TRITON_INTERPRET=1 (conftest)
    monkeypatch.setattr(L, "_SUPPORTED", True)
    with L.jit_launches():
        assert not L.supported()
    assert L.supported()  # restored


@pytest.mark.gpu
def test_gpu_cached_launch_gives_the_jit_bits(monkeypatch):
    """On CUDA with the installed Triton: the cached launch is on, and the quantizer it runs
    gives the JIT launch's bits (and the reference's) for dtypes, odd sizes and misaligned
    views, over first (compiling) and later (cached) calls."""
    monkeypatch.setattr(L, "_SUPPORTED", None)
    if not L.supported():
        pytest.fail("the cached launch does not recognise this Triton's JITFunction.run "
                    "(or TRITON_INTERPRET is set): the GPU test is meant for TRITON_INTERPRET=0")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(4099 * 3 + 1, device=dev, generator=gen).to(dtype) * 3
        s = torch.tensor([0.07], device=dev, dtype=dtype)
        z = torch.tensor([7.4], device=dev, dtype=dtype)
        quant = ("uniform", s, z, 15.0)
        for x in (base, base[1:], base[:4099], base[5:5 + 16 * 33], base[:1]):
            got = [fq.fake_quant_tensor(x, quant) for _ in range(3)]
            with L.jit_launches():
                want = fq.fake_quant_tensor(x, quant)
            for g in got:
                assert torch.equal(g, want), (dtype, x.numel())
            ref = reference.fake_quant(x.float(), s.float(), z.float(), 15.0).to(dtype)
            if dtype == torch.float32:
                assert torch.equal(want, ref)
    assert len(fq._FLAT_LAUNCH.compiled) >= 4  # aligned and misaligned, two dtypes
    # the general one-pass kernel: strided views, per-channel and log2 quantizers
    x = torch.randn(6, 40, 33, device=dev, generator=gen) * 2
    sv = torch.rand(33, device=dev, generator=gen) * 0.1 + 0.01
    zv = torch.full((33,), 7.5, device=dev)
    cases = [(x.transpose(0, 1), ("uniform", 0.05, 7.0, 15)), (x, ("uniform", sv, zv, 15)),
             (x.abs()[:, 1:], ("log2", torch.tensor(1.0, device=dev), 4)),
             (x.bfloat16().transpose(1, 2), ("uniform", 0.05, 7.0, 15))]
    for t, quant in cases:
        got = [fq.fake_quant_tensor(t, quant) for _ in range(3)]
        with L.jit_launches():
            want = fq.fake_quant_tensor(t, quant)
        assert all(torch.equal(g, want) for g in got), quant[0]
    assert len(fq._TENSOR_LAUNCH.compiled) >= len(cases)
    # the autotuned fused GEMM: the config the tuner chose, reused by the cached launch
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(2, 3, 197, 64, device=dev, generator=gen).to(dtype)
        k = torch.randn(2, 3, 197, 64, device=dev, generator=gen).to(dtype).transpose(-2, -1)
        x = torch.randn(397, 96, device=dev, generator=gen).to(dtype)
        w = (torch.randn(80, 96, device=dev, generator=gen) / 10).to(dtype)
        bias = torch.randn(80, device=dev, generator=gen).to(dtype)
        uq = ("uniform", torch.tensor(0.05, device=dev), torch.tensor(7.2, device=dev), 15)
        runs = (lambda: fq.fake_quant_matmul(q, k, uq, uq, strategy="fused"),
                lambda: fq.fake_quant_linear(x, w, bias, uq[1], uq[2], 15, strategy="fused"))
        for run in runs:
            got = [run() for _ in range(3)]
            with L.jit_launches():
                want = run()
            assert all(torch.equal(g, want) for g in got), dtype
    assert sum(len(launch.compiled) for launch in fq._TUNED.values()) >= 4
