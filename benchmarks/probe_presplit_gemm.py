"""Probe: can a tf32x3 GEMM run its three TF32 products asynchronously from shared memory?

Triton lowers ``tl.dot(..., input_precision="tf32x3")`` (read off the TTGIR on the CPU; RESULTS.md
section 4, stop 24) to three ``wgmma``s per K step, small terms first from a zero accumulator,
the step's sum then added to the fp32 accumulator; both operands are split in registers, so A
is a register operand and every ``wgmma`` is waited for at once. Splitting B once in memory
did not help (``benchmarks/experiments/ridge_presplit.diff``). Here both operands arrive split
(``A = AH + AL``, ``B = BH + BL``, ``AH``/``BH`` on the TF32 grid), so all three products read
shared memory, each into its own loop-carried accumulator (Triton then keeps three ``wgmma``s
in flight: ``pendings = 3`` in the TTGIR, against 0 for ``tf32x3``), flushed into the fp32
accumulator every ``--chunks`` columns of K: longer chains inside the tensor cores, which
Hopper does not accumulate like fp32 (``results/probe_split_tf32.txt``), so the error is the
question. Each
variant against Triton's own ``tf32x3`` on the unsplit operands (the GEMM of
``probe_gemm_prec.py``), same tile, same run; errors against fp64. Prototype, not used by the
package. (``results/probe_presplit_gemm.txt`` came from commit a2296a6, whose baseline was the
same ``tf32x3`` loop inside this file's kernel.)

    python benchmarks/probe_presplit_gemm.py [--out DIR] [--shapes 4096x4096x4096 15363x5121x5121]
        [--tiles 128,128,32,8,3 ...] [--chunks 256 1024 0]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl
from probe_gemm_prec import launch  # its tf32x3 GEMM is the baseline (benchmarks/ on the path)


@triton.jit
def _gemm_split_kernel(AH, AL, BH, BL, C, M, N, K, CHUNK, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``C = A B`` from the split halves: the three products in three accumulators chained
    inside the tensor cores over CHUNK columns of K, then added to the fp32 accumulator (each
    product a loop-carried accumulator, so Triton keeps the ``wgmma``s in flight)."""
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    for c0 in range(0, K, CHUNK):
        p1 = tl.zeros([BM, BN], tl.float32)
        p2 = tl.zeros([BM, BN], tl.float32)
        p3 = tl.zeros([BM, BN], tl.float32)
        for k0 in range(c0, tl.minimum(c0 + CHUNK, K), BK):
            kk = k0 + rk
            am = (rm[:, None] < M) & (kk[None, :] < K)
            bm = (kk[:, None] < K) & (rn[None, :] < N)
            pa = rm[:, None] * s_am + kk[None, :] * s_ak
            pb = kk[:, None] * s_bk + rn[None, :] * s_bn
            ah = tl.load(AH + pa, mask=am, other=0.0)
            al = tl.load(AL + pa, mask=am, other=0.0)
            bh = tl.load(BH + pb, mask=bm, other=0.0)
            bl = tl.load(BL + pb, mask=bm, other=0.0)
            p1 = tl.dot(al, bh, p1, input_precision="tf32")
            p2 = tl.dot(ah, bl, p2, input_precision="tf32")
            p3 = tl.dot(ah, bh, p3, input_precision="tf32")
        acc += p3 + (p1 + p2)
    tl.store(C + rm[:, None] * s_cm + rn[None, :] * s_cn, acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def split(x: torch.Tensor):
    """``x = hi + lo``, ``hi`` rounded to TF32 (ties away, as ``cvt.rna.tf32.f32``)."""
    hi = ((x.view(torch.int32) + 0x1000) & -8192).view(torch.float32)
    return hi, x - hi


def run(a, b, c, tile, split_parts=None, chunk=0):
    """``C = A B``: Triton's ``tf32x3`` (``probe_gemm_prec.py``'s GEMM) without
    ``split_parts``, else the split kernel, ``chunk`` K columns per flush into fp32 (0: all)."""
    if split_parts is None:
        launch(a[None], b[None], c[None], tile, "tf32x3")
        return c
    bm, bn, bk, warps, stages = tile
    m, k = a.shape
    n = b.shape[1]
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _gemm_split_kernel[grid](*split_parts[0], *split_parts[1], c, m, n, k, chunk or k,
                             *a.stride(), *b.stride(), *c.stride(), BM=bm, BN=bn, BK=bk,
                             num_warps=warps, num_stages=stages)
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", nargs="*", default=["4096x4096x4096", "15363x5121x5121",
                                                    "2307x769x769"])
    ap.add_argument("--tiles", nargs="*", default=["128,128,32,8,3", "128,128,64,8,2",
                                                   "128,64,32,4,4"])
    ap.add_argument("--chunks", nargs="*", type=int, default=[256, 1024, 0],
                    help="K columns per flush into fp32 (0: all of K)")
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    print(card, torch.__version__, triton.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    records = []
    for shape in args.shapes:
        m, n, k = map(int, shape.split("x"))
        a = torch.randn(m, k, device="cuda", generator=gen)
        # B K-major (N-by-K storage), the layout the library's GEMMs use
        b = torch.randn(n, k, device="cuda", generator=gen).t()
        ref = a[:256].double() @ b.double()
        parts = (split(a), tuple(t.t().contiguous().t() for t in split(b)))
        c = torch.empty(m, n, device="cuda")
        flop = 2.0 * m * n * k
        print(f"\n{shape}: {flop / 1e9:.1f} GFLOP", flush=True)
        for t in args.tiles:
            tile = tuple(map(int, t.split(",")))
            variants = [("tf32x3", None, 0)] + [(f"split, flush every {ch or 'K'}", parts, ch)
                                                for ch in args.chunks]
            base = None
            for name, sp, chunk in variants:
                try:
                    fn = (lambda sp=sp, chunk=chunk: run(a, b, c, tile, sp, chunk))
                    ms = triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")
                    out = fn().clone()
                except Exception as e:  # out of shared memory, say
                    print(f"  {t:16s} {name:22s} {type(e).__name__}: {str(e)[:90]}", flush=True)
                    continue
                err = float((out[:256].double() - ref).norm() / ref.norm())
                same = "" if base is None else f"  bits of tf32x3: {torch.equal(out, base)}"
                if base is None:
                    base = out
                print(f"  {t:16s} {name:22s} {ms:9.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s "
                      f"err {err:.2e}{same}", flush=True)
                records.append({"shape": shape, "tile": tile, "variant": name, "ms": ms,
                                "tflops": flop / ms / 1e9, "err": err, "card": card,
                                "torch": torch.__version__, "triton": triton.__version__})
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            ms = triton.testing.do_bench(lambda: torch.mm(a, b), warmup=10, rep=100,
                                         return_mode="median")
            err = float((torch.mm(a[:256], b).double() - ref).norm() / ref.norm())
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        print(f"  {'cuBLAS SGEMM':39s} {ms:9.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s err {err:.2e}")
        records.append({"shape": shape, "tile": None, "variant": "cublas_sgemm", "ms": ms,
                        "tflops": flop / ms / 1e9, "err": err, "card": card})
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe_presplit_gemm.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
