"""Why the exact Gram statistics lost to the eager fp32 path at ViT-Ti's smallest shape
(6304 x 192, 0.25 vs 0.12 ms), and what the CUDA-graph replay (``gram_graph``) leaves: per-call
time of the whole op and of each step of ``gram_int8.gram_update_exact`` alone, back to back
(the GPU queue never drains, so this is max(host, GPU) per step), next to an empty Triton
kernel and the eager path, and the GPU time of each kernel (torch.profiler).

    python benchmarks/profile_gram_small.py
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from erq_kernels import gram_exact, gram_graph, gram_int8, reference
from profile_fakequant import per_call_us


@triton.jit
def _empty_kernel(x_ptr, n):
    pass


@triton.jit
def _many_args_kernel(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r,
                      X: tl.constexpr, Y: tl.constexpr):
    pass


def main(n=6304, d=192):
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    x = torch.randn(n, d, device="cuda")
    bufs = [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
            torch.zeros(d + 1, device="cuda")]
    s, z, q = 0.05, 7.37, 15
    s_t, z_t, st = gram_exact.quant_params(s, z, d, x.device)
    gram_int8.prime([z_t])  # as erq_kernels.gram_prepare: no host sync per call for z_t
    amax = gram_int8.col_max(x)
    dp, np_ = 208, 6304
    buf = torch.empty((6 * dp + 16, np_), dtype=torch.int8, device="cuda")
    lk = 2 * dp + 16
    g = torch._int_mm(buf[:lk], buf.T)
    t = torch.empty(1, device="cuda")
    steps = {
        "whole exact call (int8 path)": lambda: gram_int8.gram_update_exact(x, *bufs, s, z, q),
        "whole exact call (graph replay)": lambda: gram_graph.gram_update_exact(x, *bufs, s, z, q),
        "graph replay, tensor quantizer": lambda: gram_graph.gram_update_exact(x, *bufs, s_t, z_t,
                                                                               q),
        "eager fp32 reference": lambda: reference.gram_update(x, *bufs, s, z, q),
        "empty Triton kernel, 2 args": lambda: _empty_kernel[(1,)](t, 1),
        "empty Triton kernel, 18 args": lambda: _many_args_kernel[(1,)](
            t, t, t, t, t, t, t, 1, 2, 3, 4, 5, 6, 7, 8.0, 9.0, 10, 11, X=1, Y=2),
        "quant_params (2 x torch.full)": lambda: gram_exact.quant_params(s, z, d, x.device),
        "torch.aminmax (before col_max)": lambda: torch.aminmax(x, dim=0),
        "col_max (zeros + Triton kernel)": lambda: gram_int8.col_max(x),
        "torch.empty planes": lambda: torch.empty((6 * dp + 16, np_), dtype=torch.int8, device="cuda"),
        "codes kernel": lambda: gram_int8._codes_kernel[(triton.cdiv(np_, 64), triton.cdiv(dp, 32))](
            x, s_t, z_t, amax, buf, n, d, np_, dp, x.stride(0), st, 15.0, 8.0, MASK_ROWS=True,
            NSL=4, BR=64, BC=32, num_warps=4, **gram_int8._NO_FMA),
        "torch._int_mm": lambda: torch._int_mm(buf[:lk], buf.T),
        "combine kernel": lambda: gram_int8._combine_kernel[(triton.cdiv(d, 32), triton.cdiv(d, 32))](
            g, g.stride(0), *bufs, d + 1, s_t, z_t, amax, st, 8.0, d, dp, 2 * dp, lk,
            MASK_ROWS=True, NSL=4, BT=32, FRESH=False, num_warps=4, **gram_int8._NO_FMA),
    }
    for name, fn in steps.items():
        print(f"{name:32s} {per_call_us(fn, 500):8.1f} us per call", flush=True)
    for name in ("whole exact call (int8 path)", "whole exact call (graph replay)"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                steps[name]()
            torch.cuda.synchronize()
        print(f"# {name}, 20 calls")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12,
                                        max_name_column_width=60))


if __name__ == "__main__":
    main()
