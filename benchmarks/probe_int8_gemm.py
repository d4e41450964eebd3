"""The int8 GEMM of the exact Gram statistics at small layers: ``torch._int_mm`` (cuBLASLt)
against the Triton GEMM of ``gram_int8.int8_gemm`` over block sizes and split-K, on the
planes' shapes (M = K/m/ones rows, N = every plane, K = tokens); then the whole CUDA-graph op
with each GEMM. Outputs are compared exactly.

    python benchmarks/probe_int8_gemm.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rounding_gram import bench_ms  # noqa: E402

from erq_kernels import gram_exact, gram_graph, gram_int8  # noqa: E402

CONFIGS = [dict(BM=bm, BN=bn, BK=bk, SPLIT=sp, num_warps=w, num_stages=st)
           for bm, bn, w in ((64, 64, 4), (128, 64, 4), (128, 128, 8), (64, 128, 4))
           for bk in (64, 128) for sp in (1, 2, 4) for st in (3, 4)]


def planes(n, d, frac):
    dp = gram_exact.ceil_to(d, 16)
    pk = 2 if frac else 1
    return pk * dp + 16, (pk + 4) * dp + 16, gram_exact.ceil_to(n, 16)


def main():
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    best = {}
    for n, d in ((6304, 192), (6304, 384), (6304, 768), (100864, 192)):
        for frac in (True, False):
            m, p, k = planes(n, d, frac)
            buf = torch.randint(-128, 128, (p, k), dtype=torch.int8, device="cuda", generator=gen)
            ref = torch._int_mm(buf[:m], buf.T)
            t_ref = bench_ms(lambda: torch._int_mm(buf[:m], buf.T), 30)
            res = []
            for cfg in CONFIGS:
                try:
                    out = gram_int8.int8_gemm(buf[:m], buf, cfg)
                    ok = torch.equal(out, ref)
                    t = bench_ms(lambda: gram_int8.int8_gemm(buf[:m], buf, cfg), 30)
                    res.append((t, ok, cfg))
                except Exception as exc:  # a config may not fit the shared memory
                    res.append((float("inf"), False, dict(cfg, error=type(exc).__name__)))
            res.sort(key=lambda r: r[0])
            best[(n, d, frac)] = res[0]
            bad = sum(1 for r in res if r[0] < float("inf") and not r[1])
            print(f"{n:6d} x {d:4d} {'frac' if frac else 'int '}  GEMM {m}x{p}x{k}: _int_mm "
                  f"{t_ref * 1e3:7.1f} us; Triton best {res[0][0] * 1e3:7.1f} us "
                  f"({t_ref / res[0][0]:.2f}x) {res[0][2]}; 2nd {res[1][0] * 1e3:.1f} "
                  f"{res[1][2]}; default {gram_int8.GEMM_CONFIG}: "
                  f"{next(r[0] for r in res if all(r[2].get(q) == v for q, v in gram_int8.GEMM_CONFIG.items())) * 1e3:.1f} us; "
                  f"configs with different bits: {bad}", flush=True)
    for n, d in ((6304, 192), (6304, 384), (6304, 768)):
        x = torch.randn(n, d, device="cuda", generator=gen)
        b = [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
             torch.zeros(d + 1, device="cuda")]
        row = []
        for g in ("cublas", "triton"):
            gram_graph.GEMM = g
            ref = [torch.zeros_like(t) for t in b]
            got = [torch.zeros_like(t) for t in b]
            gram_exact.gram_update(x, *ref, 0.05, 7.37, 15)
            gram_graph.gram_update_exact(x, *got, 0.05, 7.37, 15)
            same = all(torch.equal(u, v) for u, v in zip(ref, got))
            row.append(f"{g} {bench_ms(lambda: gram_graph.gram_update_exact(x, *b, 0.05, 7.37, 15), 40) * 1e3:6.1f} us (same bits {same})")
        print(f"graph op {n} x {d}: " + ", ".join(row), flush=True)
    gram_graph.GEMM = "triton"


if __name__ == "__main__":
    main()
