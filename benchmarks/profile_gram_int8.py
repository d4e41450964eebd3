"""Where the time of the int8 Gram path goes (GPU): per-call wall time back to back, host time
to issue one call, and the kernels from torch.profiler, at a small, a middle and a large shape,
with a fractional and an integer zero point.

    python benchmarks/profile_gram_int8.py
    python benchmarks/profile_gram_int8.py --host   # Python-level profile of the exact path's
                                                    # host time at the smallest shape (cProfile)
"""
from __future__ import annotations

import torch

from erq_kernels import gram_int8
from profile_fakequant import host_us, per_call_us

SHAPES = [(6304, 192), (6304, 768), (8224, 5120)]


def host_profile(n=6304, d=192, calls=300):
    """Where one call's host time goes, Python function by function (float quantizer
    parameters, fractional zero point: the statistics shape of ViT-Ti with 32 images)."""
    import cProfile
    import pstats
    x = torch.randn(n, d, device="cuda")
    bufs = [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
            torch.zeros(d + 1, device="cuda")]
    fn = lambda: gram_int8.gram_update_exact(x, *bufs, 0.05, 7.37, 15)  # noqa: E731
    print(f"{n} x {d} exact: {per_call_us(fn, 200):.1f} us per call, host {host_us(fn, 200):.1f} us")
    prof = cProfile.Profile()
    torch.cuda._sleep(400_000_000)  # keep the GPU busy: host time only
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def main():
    import sys
    if "--host" in sys.argv:
        return host_profile()
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n, d in SHAPES:
        x = torch.randn(n, d, device="cuda", generator=gen)
        for zero in (7.37, 7.0):
            bufs = [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
                    torch.zeros(d + 1, device="cuda")]
            s = torch.tensor(0.5, device="cuda")
            z = torch.tensor(zero, device="cuda")
            fn = lambda: gram_int8.gram_update(x, *bufs, s, z, 15)  # noqa: E731
            print(f"\n{n} x {d}, zero {zero}: {per_call_us(fn, 30):9.1f} us per call, "
                  f"host {host_us(fn, 30):8.1f} us", flush=True)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                    torch.profiler.ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12,
                                            max_name_column_width=50))
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8,
                                            max_name_column_width=50))


if __name__ == "__main__":
    main()
