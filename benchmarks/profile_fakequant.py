"""Where the time of one small fake-quant linear goes (GPU): kernel times from torch.profiler
and wall times of the pieces (one-pass quantizer, GEMM with cuBLAS's bias epilogue and without,
whole op directly and through the dispatcher, eager reference), for the calibration-sized
shapes where the bf16 speed-up is smallest. The one-pass quantizers (the flat kernel for a
contiguous input, the general one for a strided view) and the whole op also through Triton's
JIT launch, against the cached launch of ``erq_kernels/_launch.py`` (stop 24).

    python benchmarks/profile_fakequant.py [--host-profile]

``--host-profile``: only a cProfile of the host work of the bf16 ViT-B qkv quantizer and op.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import erq_kernels
from erq_kernels import _launch
from erq_kernels import fakequant as fq
from erq_kernels import reference as ref

SHAPES = [("vit_b qkv", 197 * 32, 768, 2304), ("vit_b proj", 197 * 32, 768, 768),
          ("vit_h fc1", 257 * 32, 1280, 5120)]


def per_call_us(fn, reps=200):
    """Mean time per call over back-to-back calls (the GPU queue stays full)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e6


def host_us(fn, reps=200):
    """CPU time to issue one call (the GPU is kept busy by a long sleep kernel first)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t) / reps * 1e6
    torch.cuda.synchronize()
    return host


def jit_launch(fn):
    """``fn`` with the one-pass quantizer launched through Triton's JIT, not the cached launch
    of ``erq_kernels/_launch.py`` (the library's launch before stop 24)."""
    def run():
        with _launch.jit_launches():
            return fn()
    return run


def main():
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cached launch "
          f"{'on' if _launch.supported() else 'OFF (this Triton launches differently)'}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dname, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for name, m, k, n in SHAPES:
            x = (torch.randn(m, k, device="cuda", generator=gen) * 1.5).to(dtype)
            w = (torch.randn(n, k, device="cuda", generator=gen) / k ** 0.5).to(dtype)
            b = torch.randn(n, device="cuda", generator=gen).to(dtype)
            s = torch.tensor(0.2, device="cuda")
            z = torch.tensor(7.3, device="cuda")
            quant = ("uniform", s, z, 15)
            xq = fq.fake_quant_tensor(x, quant)
            wt = w.t()
            fns = {"quantize (Triton one pass)": lambda: fq.fake_quant_tensor(x, quant),
                   "quantize (same, JIT launch)": jit_launch(lambda: fq.fake_quant_tensor(x, quant)),
                   "quantize x.T (general kernel)": lambda: fq.fake_quant_tensor(x.t(), quant),
                   "quantize x.T (same, JIT launch)": jit_launch(
                       lambda: fq.fake_quant_tensor(x.t(), quant)),
                   "quantize (eager)": lambda: ref.fake_quant(x, s.to(dtype), z.to(dtype), 15),
                   "GEMM only": lambda: F.linear(xq, w, b),
                   "GEMM: torch.mm, no bias": lambda: torch.mm(xq, wt),
                   "GEMM: torch.addmm": lambda: torch.addmm(b, xq, wt),
                   "op (default strategy)": lambda: fq.fake_quant_linear(x, w, b, s, z, 15),
                   "op (same, JIT launch)": jit_launch(lambda: fq.fake_quant_linear(x, w, b, s, z, 15)),
                   "op through the dispatcher": lambda: erq_kernels.fake_quant_linear(x, w, b, s, z, 15),
                   "eager reference": lambda: F.linear(ref.fake_quant(x, s.to(dtype), z.to(dtype), 15), w, b)}
            print(f"\n{dname} {name} {m}x{k}x{n}: us per call (back to back) / host us to issue")
            for label, fn in fns.items():
                print(f"  {label:28s} {per_call_us(fn):8.1f} {host_us(fn):8.1f}")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    fns["op (default strategy)"]()
                torch.cuda.synchronize()
            for e in prof.key_averages():
                dev = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
                if dev > 0:
                    print(f"    kernel {e.key[:60]:60s} {dev / e.count:8.1f} us x {e.count}")


def host_profile(calls=400):
    """cProfile of the host work of the one-pass quantizer and of the whole bf16 op (ViT-B qkv),
    the GPU kept busy by a sleep kernel so that nothing waits on it: where the us go."""
    import cProfile
    import pstats
    x = torch.randn(197 * 32, 768, device="cuda").bfloat16()
    w = (torch.randn(2304, 768, device="cuda") / 28).bfloat16()
    b = torch.randn(2304, device="cuda").bfloat16()
    s, z = torch.tensor(0.2, device="cuda"), torch.tensor(7.3, device="cuda")
    for label, fn in (("quantize", lambda: fq.fake_quant_tensor(x, ("uniform", s, z, 15))),
                      ("op", lambda: fq.fake_quant_linear(x, w, b, s, z, 15))):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        torch.cuda._sleep(1_000_000_000)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        print(f"\n# cProfile, {label}, {calls} calls (tottime per call in us = tottime / {calls} * 1e6)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    import sys
    if "--host-profile" in sys.argv:
        host_profile()
    else:
        main()
