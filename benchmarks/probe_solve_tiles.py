"""The ridge solve's two triangular products (``cholesky_rec.solve_with_inverse``) per GEMM tile.

At the small shapes of issue 4 these products ran at 11-33 TFLOP/s against about 58 at n >= 1025
(``results/probe_ridge_panels.txt``: the ridge solve minus the inverse factor's time). For each
shape and each tile ``(BM, BN, BK, warps, stages)`` of ``TILES``, with B copied into an aligned
buffer (the library's way until stop 23) and read where it is (its way since): the GPU time
of one call replayed from a CUDA graph, its TFLOP/s (``2 n^2 o`` per matrix) and its error against fp64; then the same two
products as cuBLAS SGEMMs on the whole matrices (``torch.bmm``, TF32 off: IEEE products, twice
the flops; the TFLOP/s column still counts ``2 n^2 o``).

    python benchmarks/probe_solve_tiles.py --out DIR [--shapes 36x193 12x769]
        [--tiles 128,128,64,8,2 ...] [--name probe_solve_tiles]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton

from erq_kernels import cholesky_rec

TILES = [(128, 128, 64, 8, 2), (128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 64, 32, 4, 3),
         (64, 128, 32, 4, 3), (128, 64, 64, 4, 3), (64, 64, 64, 4, 3), (64, 128, 64, 4, 3)]
SHAPES = ["36x193", "36x385", "12x769", "36x769", "12x1537", "72x1025"]


def replay_ms(fn) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph (compiled and warmed up first)."""
    fn()
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=SHAPES)
    ap.add_argument("--tiles", nargs="*", default=None,
                    help="tiles as BM,BN,BK,warps,stages (default: TILES)")
    ap.add_argument("--name", default="probe_solve_tiles", help="the JSON file's name")
    args = ap.parse_args()
    card = torch.cuda.get_device_name()
    print(card, torch.__version__, triton.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    tiles = [tuple(map(int, t.split(","))) for t in args.tiles] if args.tiles else TILES
    records = []
    for shape in args.shapes:
        batch, n = map(int, shape.split("x"))
        p, o = triton.cdiv(n, 64) * 64, 3 * n
        buf = torch.zeros(batch, p, p, device="cuda")
        linv = buf[:, :n, :n]
        linv.copy_(torch.tril(torch.randn(batch, n, n, device="cuda", generator=gen)) / n ** 0.5
                   + torch.eye(n, device="cuda"))
        b = torch.randn(batch, n, o, device="cuda", generator=gen)
        ld = linv[:2].double()
        ref = ld.mT @ (ld @ b[:2].double())
        gflop = 2 * n * n * o * batch / 1e9
        print(f"\n{shape} (o = {o}): {gflop:.2f} GFLOP", flush=True)
        for tile in tiles:
            for copy_b in (True, False):
                try:
                    ms = replay_ms(lambda: cholesky_rec.solve_with_inverse(linv, b, tile=tile,
                                                                           copy_b=copy_b))
                    x = cholesky_rec.solve_with_inverse(linv, b, tile=tile, copy_b=copy_b)
                except Exception as e:  # a tile that does not fit the shared memory, say
                    print(f"  {tile} copy_b={copy_b}: {type(e).__name__}: {str(e)[:80]}")
                    continue
                err = float(((x[:2].double() - ref).norm() / ref.norm()))
                rec = {"batch": batch, "n": n, "o": o, "tile": tile, "copy_b": copy_b,
                       "ms": ms, "tflops": gflop / ms, "err": err, "card": card,
                       "torch": torch.__version__, "triton": triton.__version__}
                records.append(rec)
                print(f"  {str(tile):22s} copy_b={copy_b!s:5s} {ms * 1e3:8.1f} us "
                      f"{gflop / ms:6.1f} TFLOP/s  err {err:.1e}", flush=True)
        # cuBLAS SGEMM (IEEE fp32) on the whole matrices, zeros included: twice the flops
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

        def sgemm():
            return torch.bmm(linv.mT, torch.bmm(linv, b))
        try:
            ms = replay_ms(sgemm)
            x = sgemm()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        err = float(((x[:2].double() - ref).norm() / ref.norm()))
        records.append({"batch": batch, "n": n, "o": o, "tile": "cublas_sgemm", "copy_b": False,
                        "ms": ms, "tflops": gflop / ms, "err": err, "card": card,
                        "torch": torch.__version__, "triton": triton.__version__})
        print(f"  {'cuBLAS SGEMM (full)':22s} {'':11s} {ms * 1e3:8.1f} us "
              f"{gflop / ms:6.1f} TFLOP/s  err {err:.1e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
