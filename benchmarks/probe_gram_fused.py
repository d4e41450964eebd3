"""The one-launch exact Gram kernel (``erq_kernels.gram_fused``) on the GPU: same bits as the
definition, block sizes, and where its time goes at ViT-Ti's shape.

    python benchmarks/probe_gram_fused.py [--quick]

Prints, per shape: the eager fp32 path (issue 5's baseline), the int8 path and the fused
kernel of the exact op (ms, do_bench median), whether the fused bits equal the definition's,
then a sweep of (BT, BN, warps), and at 6304 x 192 the per-call time back to back and the
kernel's GPU time (torch.profiler).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rounding_gram import bench_ms, quantizer  # noqa: E402
from profile_fakequant import per_call_us  # noqa: E402

from erq_kernels import gram_exact, gram_fused, gram_int8, reference  # noqa: E402

SHAPES = ((6304, 192), (6304, 384), (6304, 768), (100864, 192), (8224, 1280))
CONFIGS = [(bt, bn, w) for bt in (16, 32, 64) for bn in (32, 64, 128) for w in (4, 8)]


def bufs(d):
    return [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
            torch.zeros(d + 1, device="cuda")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="no block-size sweep")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(4)
    for n, d in SHAPES:
        x = torch.randn(n, d, device="cuda", generator=gen) * 1.5 + 0.2
        for mode in ("tensor", "channel") if n == 6304 else ("tensor",):
            s, z, q = quantizer(mode, x)
            if isinstance(z, torch.Tensor):
                gram_int8.prime([z])  # as erq_kernels.gram_prepare in the pipeline
            ref, fz = bufs(d), bufs(d)
            gram_exact.gram_update(x, *ref, s, z, q)
            gram_fused.gram_update_exact(x, *fz, s, z, q)
            same = all(torch.equal(a, b) for a, b in zip(ref, fz))
            b = bufs(d)
            e_ms = bench_ms(lambda: reference.gram_update(x, *b, s, z, q))
            i_ms = bench_ms(lambda: gram_int8.gram_update_exact(x, *b, s, z, q))
            f_ms = bench_ms(lambda: gram_fused.gram_update_exact(x, *b, s, z, q))
            print(f"{n:7d} x {d:5d} {mode:8s} eager {e_ms:7.3f}  int8 {i_ms:7.3f} "
                  f"({e_ms / i_ms:5.2f}x)  fused {f_ms:7.3f} ({e_ms / f_ms:5.2f}x)  "
                  f"same bits as the definition: {same}", flush=True)
            if args.quick or mode != "tensor":
                continue
            res = []
            for bt, bn, w in CONFIGS:
                try:
                    ms = bench_ms(lambda: gram_fused.gram_update_exact(
                        x, *b, s, z, q, bt=bt, bn=bn, num_warps=w), 30)
                    res.append((ms, f"{bt}/{bn}/w{w}"))
                except Exception as exc:  # a config may not compile (registers, shared memory)
                    res.append((float("inf"), f"{bt}/{bn}/w{w} {type(exc).__name__}"))
            res.sort()
            print("    sweep BT/BN/warps: " + ", ".join(f"{c} {m:.3f}" for m, c in res[:8]),
                  flush=True)
        del x
    n, d = 6304, 192
    x = torch.randn(n, d, device="cuda")
    b = bufs(d)
    s, z, q = 0.05, 7.37, 15
    for name, fn in {"eager fp32": lambda: reference.gram_update(x, *b, s, z, q),
                     "int8 exact": lambda: gram_int8.gram_update_exact(x, *b, s, z, q),
                     "fused exact": lambda: gram_fused.gram_update_exact(x, *b, s, z, q)}.items():
        print(f"6304 x 192 {name:12s} {per_call_us(fn, 500):8.1f} us per call back to back",
              flush=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            gram_fused.gram_update_exact(x, *b, s, z, q)
        torch.cuda.synchronize()
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" or "kernel" in ev.key:
            t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
            print(f"#   {ev.key[:60]:60s} {t / max(ev.count, 1):8.1f} us x {ev.count}")


if __name__ == "__main__":
    main()
