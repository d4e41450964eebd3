"""Can a Triton bf16 GEMM with TMA loads beat cuBLAS where issue 6's last shape sits at its
ceiling? ViT-H ``fc1`` (8224 x 1280 -> 5120, bias) and the other bf16 linear shapes: a
persistent kernel (one program per SM walking the output tiles, the tile loop optionally
flattened into the K loop so loads of the next tile overlap the epilogue) and a one-tile-per-
program kernel, both loading through tensor descriptors, against ``F.linear`` (cuBLAS) in the
same run; outputs compared with cuBLAS's.

    python benchmarks/probe_tma_gemm.py [--dry-run]
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from erq_kernels._fakequant_kernels import tile_order

SHAPES = [("vit_h fc1", 8224, 1280, 5120), ("vit_h qkv", 8224, 1280, 3840),
          ("vit_b fc1", 6304, 768, 3072), ("vit_h fc2", 8224, 5120, 1280)]


@triton.jit
def _out_tile(a_desc, b_desc, c_desc, bias_ptr, N, k_tiles, pid_m, pid_n,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One output tile: the K loop through the descriptors, the bias, the store."""
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for ki in range(k_tiles):
        a = a_desc.load([pid_m * BM, ki * BK])
        b = b_desc.load([pid_n * BN, ki * BK])
        acc = tl.dot(a, b.T, acc)
    rn = pid_n * BN + tl.arange(0, BN)
    acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


@triton.jit
def tma_persistent_kernel(a_desc, b_desc, c_desc, bias_ptr, M, N, K,
                          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                          GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr,
                          WS: tl.constexpr):
    k_tiles = tl.cdiv(K, BK)
    num_tiles = tl.cdiv(M, BM) * tl.cdiv(N, BN)
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN,
                            warp_specialize=WS):
        pid_m, pid_n = tile_order(tile_id, M, N, BM, BN, GROUP_M)
        _out_tile(a_desc, b_desc, c_desc, bias_ptr, N, k_tiles, pid_m, pid_n, BM, BN, BK)


@triton.jit
def tma_tile_kernel(a_desc, b_desc, c_desc, bias_ptr, M, N, K,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_order(tl.program_id(0), M, N, BM, BN, GROUP_M)
    _out_tile(a_desc, b_desc, c_desc, bias_ptr, N, tl.cdiv(K, BK), pid_m, pid_n, BM, BN, BK)


def linear(x, w, bias, cfg, kind):
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    bm, bn, bk, warps, stages = cfg[:5]
    a = TensorDescriptor.from_tensor(x, [bm, bk])
    b = TensorDescriptor.from_tensor(w, [bn, bk])
    c = TensorDescriptor.from_tensor(out, [bm, bn])
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    if kind == "tile":
        tma_tile_kernel[(tiles,)](a, b, c, bias, m, n, k, BM=bm, BN=bn, BK=bk, GROUP_M=8,
                                  num_warps=warps, num_stages=stages)
    else:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count \
            if x.is_cuda else 4
        flatten, ws = kind == "persistent_flat", kind == "persistent_ws"
        tma_persistent_kernel[(min(sms, tiles),)](a, b, c, bias, m, n, k, BM=bm, BN=bn, BK=bk,
                                                  GROUP_M=8, NUM_SMS=min(sms, tiles),
                                                  FLATTEN=flatten or ws, WS=ws,
                                                  num_warps=warps, num_stages=stages)
    return out


def bench(fn):
    if not torch.cuda.is_available():
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, CPU interpreter")
    args = ap.parse_args()
    dev = "cpu" if args.dry_run else "cuda"
    shapes = [("tiny", 96, 64, 80)] if args.dry_run else SHAPES
    cfgs = [(32, 32, 32, 4, 2)] if args.dry_run else [
        (128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
        (128, 128, 64, 8, 5), (256, 128, 64, 8, 3)]
    kinds = ["tile", "persistent", "persistent_flat", "persistent_ws"]
    if torch.cuda.is_available():
        print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                     device="cuda"))
    gen = torch.Generator(device=dev).manual_seed(0)
    dt = torch.float32 if args.dry_run else torch.bfloat16  # (the interpreter has no bf16)
    for name, m, k, n in shapes:
        x = torch.randn(m, k, device=dev, generator=gen).to(dt)
        w = (torch.randn(n, k, device=dev, generator=gen) / k ** 0.5).to(dt)
        bias = (torch.randn(n, device=dev, generator=gen) * 0.1).to(dt)
        ref = F.linear(x, w, bias)
        t_ref = bench(lambda: F.linear(x, w, bias))
        flops = 2.0 * m * n * k
        print(f"{name} {m}x{k}x{n}: cuBLAS {t_ref:.4f} ms ({flops / t_ref / 1e9:.0f} TFLOP/s)",
              flush=True)
        best = (float("inf"), None)
        for cfg, kind in itertools.product(cfgs, kinds):
            try:
                y = linear(x, w, bias, cfg, kind)
            except Exception as e:  # a config the compiler or the card refuses
                print(f"   {kind:16s} {cfg}: failed ({type(e).__name__}: {str(e)[:80]})",
                      flush=True)
                continue
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            t = bench(lambda: linear(x, w, bias, cfg, kind))
            best = min(best, (t, (kind, cfg)))
            print(f"   {kind:16s} {cfg}: {t:.4f} ms ({flops / t / 1e9:.0f} TFLOP/s, "
                  f"{t_ref / t:.3f}x cuBLAS), rel. diff to cuBLAS {err:.1e}", flush=True)
        print(f"   best {best}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
