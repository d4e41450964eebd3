"""Where the GPU time of ``triton_rec`` goes at the small shapes of issue 4, where its CUDA-graph
replay is a chain of small kernels: GPU time per kernel name (torch.profiler, sum over one
call) and the graph replay's total for each op; then, for the factorization, the same with each
leaf kernel warp count listed in ``--warps`` (``cholesky_rec.LEAF_WARPS``) and each leaf form
in ``--quarters`` (``cholesky_rec.LEAF_QUARTERS``, graph replays of all three ops); ``--graph-limit``
shapes: eager against graphed (``linalg_graph.MAX_ELEMENTS`` lifted for the measurement), and
the memory a graph holds.

    python benchmarks/profile_linalg_small.py [--shapes 36x193 36x385 12x769 36x769]
        [--warps 1 2 4 8] [--graph-limit 96x1281] [--quarters 0 1]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import triton
from torch.profiler import ProfilerActivity, profile

from erq_kernels import cholesky_rec, linalg_graph, reference  # noqa: F401 (registers graphs)
from erq_kernels._dispatch import _IMPLS


def spd(batch, n, gen):
    x = torch.randn(batch, n, 2 * n, device="cuda", generator=gen)
    return x @ x.mT / (2 * n) + 0.1 * torch.eye(n, device="cuda")


def kernel_times(fn):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name][0] += 1
            per[e.name][1] += getattr(e, "device_time_total", None) or e.cuda_time_total
    return per


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["36x193", "36x385", "12x769", "36x769"])
    ap.add_argument("--warps", nargs="*", type=int, default=[])
    ap.add_argument("--graph-limit", nargs="*", default=[])
    ap.add_argument("--quarters", nargs="*", type=int, default=[],
                    help="cholesky_rec.LEAF_QUARTERS settings to time (0 1)")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape in args.shapes:
        batch, n = map(int, shape.split("x"))
        g = spd(batch, n, gen)
        b = torch.randn(batch, n, 3 * n, device="cuda", generator=gen)
        for op, call in (("cholesky", lambda f: f(g, 0.01)),
                         ("ridge_solve", lambda f: f(g, b, 0.01)),
                         ("inverse_cholesky_upper", lambda f: f(g, 0.01))):
            eager = _IMPLS[op]["triton_rec"]
            graphed = _IMPLS[op]["triton_rec_graph"]
            ms = triton.testing.do_bench(lambda: call(graphed), warmup=20, rep=100,
                                         return_mode="median")
            per = kernel_times(lambda: call(eager))
            total = sum(t for _, t in per.values())
            print(f"\n{op} {batch}x{n}: graph replay {ms * 1e3:.0f} us; eager kernels "
                  f"{sum(c for c, _ in per.values())} launches, {total:.0f} us of GPU time")
            for name, (count, us) in sorted(per.items(), key=lambda kv: -kv[1][1])[:4]:
                print(f"  {us:8.1f} us  {count:4d} x  {name[:90]}")
            if op != "cholesky":
                continue

            def leaf(label):
                per = kernel_times(lambda: call(eager))
                ms = triton.testing.do_bench(lambda: call(graphed), warmup=20, rep=100,
                                             return_mode="median")
                us = per["_chol_diag_kernel"][1] + per["_leaf_quarters_kernel"][1]
                print(f"  {label}: graph replay {ms * 1e3:.0f} us, leaf kernel {us:.0f} us in all")
            default = cholesky_rec.LEAF_WARPS, cholesky_rec.LEAF_QUARTERS
            try:
                for warps in args.warps:
                    cholesky_rec.LEAF_WARPS = warps
                    leaf(f"LEAF_WARPS={warps}")
                cholesky_rec.LEAF_WARPS = default[0]
                for quarters in args.quarters:
                    cholesky_rec.LEAF_QUARTERS = bool(quarters)
                    # the factorization's replay is timed by leaf() below
                    for op2, call2 in (("ridge_solve", lambda f: f(g, b, 0.01)),
                                       ("inverse_cholesky_upper", lambda f: f(g, 0.01))):
                        ms2 = triton.testing.do_bench(
                            lambda: call2(_IMPLS[op2]["triton_rec_graph"]), warmup=20, rep=100,
                            return_mode="median")
                        print(f"  LEAF_QUARTERS={bool(quarters)}: {op2} graph replay "
                              f"{ms2 * 1e3:.0f} us")
                    leaf(f"LEAF_QUARTERS={bool(quarters)}")
            finally:
                cholesky_rec.LEAF_WARPS, cholesky_rec.LEAF_QUARTERS = default
    for shape in args.graph_limit:
        batch, n = map(int, shape.split("x"))
        g = spd(batch, n, gen)
        limit = linalg_graph.MAX_ELEMENTS
        linalg_graph.MAX_ELEMENTS = 1 << 62  # shapes above the limit are measured too
        try:
            graph_limit(g, shape)
        finally:
            linalg_graph.MAX_ELEMENTS = limit
    print()


def graph_limit(g, shape):
    """Eager against graphed ``triton_rec`` on ``g``, and the memory a held graph adds."""
    for op in ("cholesky", "inverse_cholesky_upper"):
        eager = _IMPLS[op]["triton_rec"]
        graphed = _IMPLS[op]["triton_rec_graph"]
        t_eager = triton.testing.do_bench(lambda: eager(g, 0.01), warmup=5, rep=50,
                                          return_mode="median")
        base = torch.cuda.memory_allocated()
        t_graph = triton.testing.do_bench(lambda: graphed(g, 0.01), warmup=5, rep=50,
                                          return_mode="median")
        held = torch.cuda.memory_allocated() - base
        linalg_graph.clear()
        print(f"\n{op} {shape} ({g.numel() / 2**20:.0f} Mi elements): eager {t_eager:.3f} ms, "
              f"graph replay {t_graph:.3f} ms ({t_eager / t_graph:.2f}x), graph holds "
              f"{held / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
