"""Probe (issue 4): how fast can a Triton GEMM be at fp32 accuracy on this card?

Times, on the shapes of the recursive Cholesky's products, Triton GEMMs with IEEE products,
Triton's ``tf32x3``, plain TF32 (the ceiling, not accurate enough), and three TF32 products
from operands split once in memory (``hi`` = fp32 with the low 13 mantissa bits cleared, so
the tensor core takes it exactly; ``lo = x - hi``), against cuBLAS SGEMM in the same run.
Errors are normwise against fp64. Usage: ``python benchmarks/probe_gemm_prec.py [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import triton
import triton.language as tl


@triton.jit
def _mm(A, B, C, M, N, K, s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(A + b * s_ab + rm[:, None] * s_am + kk[None, :] * s_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        bt = tl.load(B + b * s_bb + kk[:, None] * s_bk + rn[None, :] * s_bn,
                     mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PREC)
    tl.store(C + b * s_cb + rm[:, None] * s_cm + rn[None, :] * s_cn, acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _mm3(AH, AL, BH, BL, C, M, N, K, s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn,
         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], tl.float32)
    small = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        pa = b * s_ab + rm[:, None] * s_am + kk[None, :] * s_ak
        ma = (rm[:, None] < M) & (kk[None, :] < K)
        pb = b * s_bb + kk[:, None] * s_bk + rn[None, :] * s_bn
        mb = (kk[:, None] < K) & (rn[None, :] < N)
        ah = tl.load(AH + pa, mask=ma, other=0.0)
        al = tl.load(AL + pa, mask=ma, other=0.0)
        bh = tl.load(BH + pb, mask=mb, other=0.0)
        bl = tl.load(BL + pb, mask=mb, other=0.0)
        small = tl.dot(al, bh, small, input_precision="tf32")
        small = tl.dot(ah, bl, small, input_precision="tf32")
        acc = tl.dot(ah, bh, acc, input_precision="tf32")
    tl.store(C + b * s_cb + rm[:, None] * s_cm + rn[None, :] * s_cn, acc + small,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


LAST = [None]


def split(x):
    hi = (x.view(torch.int32) & -8192).view(torch.float32)
    return hi, x - hi


def launch(a, b, c, cfg, prec):
    bm, bn, bk, w, s = cfg
    batch, m, k = a.shape
    n = b.shape[-1]
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), batch)
    h = _mm[grid](a, b, c, m, n, k, *a.stride(), *b.stride(), *c.stride(), BM=bm, BN=bn,
                  BK=bk, PREC=prec, num_warps=w, num_stages=s)
    LAST[0] = h


def launch3(ah, al, bh, bl, c, cfg):
    bm, bn, bk, w, s = cfg
    batch, m, k = ah.shape
    n = bh.shape[-1]
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), batch)
    h = _mm3[grid](ah, al, bh, bl, c, m, n, k, *ah.stride(), *bh.stride(), *c.stride(), BM=bm,
                   BN=bn, BK=bk, num_warps=w, num_stages=s)
    LAST[0] = h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/erq_out"))
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda"
    print("device", torch.cuda.get_device_name(), torch.__version__, triton.__version__,
          time.strftime("%Y-%m-%d %H:%M"), flush=True)
    shapes = [(1, 4096, 4096, 4096), (32, 2592, 15363, 2592), (12, 768, 768, 768),
              (96, 640, 640, 640)]
    cfgs = [(128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (128, 256, 32, 8, 3), (128, 128, 32, 4, 4)]
    cfgs3 = [(128, 64, 32, 4, 3), (128, 128, 32, 8, 3), (128, 128, 32, 4, 3)]
    rows = []
    t_end = time.time() + 420
    for (batch, m, n, k) in shapes:
        if time.time() > t_end:
            print("deadline")
            break
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(batch, m, k, device=dev, generator=g)
        b = torch.randn(batch, k, n, device=dev, generator=g)
        ref = torch.matmul(a.double(), b.double())
        rn = ref.norm().item()
        c = torch.empty(batch, m, n, device=dev)
        flop = 2.0 * batch * m * n * k

        def rec(name, fn, cfg=None):
            try:
                LAST[0] = None
                fn()
                torch.cuda.synchronize()
                h = LAST[0]
                mma = ""
                if h is not None:
                    ptx = h.asm.get("ptx", "")
                    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx
                                                          else "fma")
                err = ((c.double() - ref).norm() / rn).item()
                ms = triton.testing.do_bench(fn, warmup=50, rep=200)
            except Exception as e:  # out of resources for a config, say
                print(f"  {name:28s} {str(cfg):24s} failed: {type(e).__name__}: {str(e)[:80]}")
                return
            tf = flop / ms / 1e9
            print(f"  {name:28s} {str(cfg):24s} {ms:9.3f} ms {tf:7.1f} TFLOP/s err {err:.1e} {mma}",
                  flush=True)
            rows.append(dict(shape=[batch, m, n, k], name=name, cfg=cfg, ms=ms, tflops=tf,
                             err=err, mma=mma))

        print(f"shape batch {batch} M {m} N {n} K {k}", flush=True)
        rec("torch sgemm", lambda: torch.matmul(a, b, out=c))
        rec("triton ieee", lambda: launch(a, b, c, (128, 128, 32, 8, 3), "ieee"))
        torch.backends.cuda.matmul.allow_tf32 = True
        rec("torch tf32 (inaccurate)", lambda: torch.matmul(a, b, out=c))
        torch.backends.cuda.matmul.allow_tf32 = False
        # operand layouts: B as stored (N-major) or K-major; A K-major or M-major
        bk_ = b.mT.contiguous().mT
        am_ = a.mT.contiguous().mT
        for lay, (aa, bb) in (("A K-maj B N-maj", (a, b)), ("A K-maj B K-maj", (a, bk_)),
                              ("A M-maj B K-maj", (am_, bk_))):
            for prec in ("tf32x3", "tf32"):
                for cfg in cfgs:
                    rec(f"{lay} {prec}", lambda: launch(aa, bb, c, cfg, prec), cfg)
            ah, al = split(aa)
            bh, bl = split(bb)
            for cfg in cfgs3:
                rec(f"{lay} 3xtf32 presplit", lambda: launch3(ah, al, bh, bl, c, cfg), cfg)
        del bk_, am_
        rec("split both operands", lambda: (split(a), split(b)))
        del a, b, ref, c, ah, al, bh, bl
        torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "probe_gemm_prec.json"), "w") as f:
        json.dump(dict(card=torch.cuda.get_device_name(), torch=torch.__version__,
                       triton=triton.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
