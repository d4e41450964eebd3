"""Small Gram shapes are launch-bound: does one launch (no row split, no workspace reduction)
beat the split kernel and the eager path? Times ``gram.gram_update`` at the 32-image shapes
with several ``split`` / ``bt`` settings beside the eager reference, three rounds, medians of
``do_bench`` (GPU).

    python benchmarks/probe_gram_split.py
"""
from __future__ import annotations

import torch
import triton

from erq_kernels import gram, reference


def main():
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n, d in ((6304, 192), (6304, 384), (100864, 192)):
        x = torch.randn(n, d, device="cuda", generator=gen) * 1.5 + 0.2
        lo, hi = x.min().item(), x.max().item()
        s = (hi - lo) / 15
        z = -lo / s + 0.37
        st = torch.tensor(s, device="cuda")
        zt = torch.tensor(z, device="cuda")
        bufs = [torch.zeros(d + 1, d + 1, device="cuda"), torch.zeros(d + 1, d + 1, device="cuda"),
                torch.zeros(d + 1, device="cuda")]
        cands = {"eager": lambda: reference.gram_update(x, *bufs, st, zt, 15),
                 "triton default": lambda: gram.gram_update(x, *bufs, st, zt, 15)}
        for split in (1, 2, 4, 8):
            for bt in (32, 64):
                cands[f"triton split {split} bt {bt}"] = (
                    lambda split=split, bt=bt: gram.gram_update(x, *bufs, st, zt, 15, split=split, bt=bt))
        for rnd in range(3):
            res = {k: triton.testing.do_bench(f, warmup=20, rep=100, return_mode="median")
                   for k, f in cands.items()}
            e = res["eager"]
            print(f"{n}x{d} round {rnd}: " + ", ".join(f"{k} {v * 1e3:.0f} us ({e / v:.2f}x)"
                                                         for k, v in res.items()), flush=True)
        print(f"  default config: {gram.launch_config(n, d, x.device)}", flush=True)


if __name__ == "__main__":
    main()
