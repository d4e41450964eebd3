"""Where the time of the int8 Gram path goes (GPU): per-call wall time back to back, host time
to issue one call, and the kernels from torch.profiler, at a small, a middle and a large shape,
with a fractional and an integer zero point.

    python benchmarks/profile_gram_int8.py
"""
from __future__ import annotations

import torch

from erq_kernels import gram_int8
from profile_fakequant import host_us, per_call_us

SHAPES = [(6304, 192), (6304, 768), (8224, 5120)]


def main():
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
