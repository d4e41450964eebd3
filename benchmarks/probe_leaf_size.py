"""Is a 32 x 32 leaf cheaper per column than the 64 x 64 leaf of ``cholesky_rec``?

The recursive factorization's small shapes are bound by the leaf kernel's serial column steps
(``benchmarks/RESULTS.md`` section 4). A smaller leaf has the same number of column steps per
matrix but smaller tiles per step (fewer elements per thread, or fewer warps to synchronize).
This times one launch of ``cholesky._chol_diag_kernel`` (factor and inverse of one diagonal
block per matrix, one program per matrix) for each leaf size and warp count, and of
``cholesky_rec._leaf_quarters_kernel`` (the 64 x 64 leaf as four 16-column tiles), by
``torch.profiler`` (GPU time of the kernel alone; the block is restored from a copy before
each launch), and checks the factor against fp64.

    python benchmarks/probe_leaf_size.py [--batch 36] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
from torch.profiler import ProfilerActivity, profile

from erq_kernels.cholesky import _chol_diag_kernel
from erq_kernels.cholesky_rec import _leaf_quarters_kernel


def leaf_time_us(a0, nb, warps, quarters=False, reps=20):
    batch, n, _ = a0.shape
    a = a0.clone()
    w = torch.empty((batch, nb, nb), device="cuda")
    info = torch.zeros(batch, dtype=torch.int32, device="cuda")
    lam = torch.zeros(batch, device="cuda")

    def launch():
        if quarters:
            _leaf_quarters_kernel[(batch,)](a, w, info, 0, n, a.stride(0), a.stride(1),
                                            w.stride(0), w.stride(1), 0, DPREC="ieee",
                                            num_warps=warps)
            return
        _chol_diag_kernel[(batch,)](a, w, a, info, lam, 0, n, a.stride(0), a.stride(1),
                                    w.stride(0), w.stride(1), 0, 0, NB=nb, DPREC="ieee",
                                    STORE_WS=False, num_warps=warps)

    a.copy_(a0)
    launch()
    torch.cuda.synchronize()
    lo = torch.tril(a[:, :nb, :nb]).double()
    ref = a0[:, :nb, :nb].double()
    err = float(((lo @ lo.mT - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max())
    inv_err = float((w.double() @ lo - torch.eye(nb, device="cuda", dtype=torch.float64))
                    .flatten(1).norm(dim=1).max())
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            a.copy_(a0)
            launch()
        torch.cuda.synchronize()
    total, count = 0.0, 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and (
                "_chol_diag_kernel" in e.name or "_leaf_quarters_kernel" in e.name):
            total += getattr(e, "device_time_total", None) or e.cuda_time_total
            count += 1
    return total / max(count, 1), err, inv_err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=36)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    n = 64
    x = torch.randn(args.batch, n, 2 * n, device="cuda", generator=gen)
    a0 = x @ x.mT / (2 * n) + 0.1 * torch.eye(n, device="cuda")
    rows = []
    for nb, quarters in ((64, False), (64, True), (32, False)):
        for warps in (1, 2, 4, 8):
            us, err, inv_err = leaf_time_us(a0, nb, warps, quarters)
            rows.append({"leaf": nb, "quarters": quarters, "warps": warps,
                         "us_per_launch": round(us, 2),
                         "us_per_column": round(us / nb, 3), "factor_err": err,
                         "inverse_err": inv_err})
            print(f"leaf {nb:3d}{' in quarters' if quarters else '            '}  "
                  f"warps {warps}:  {us:7.2f} us per launch, "
                  f"{us / nb:6.3f} us per column   ||LL^T-A||/||A|| {err:.1e}  "
                  f"||XL-I|| {inv_err:.1e}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "triton": triton.__version__, "batch": args.batch, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
