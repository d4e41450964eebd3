"""Where the time of one ERQ run goes on the GPU: torch.profiler over ``quantize`` (default
backend, after a warm-up run), top operators by self CPU and by self CUDA time, per phase.

    python benchmarks/profile_e2e.py --calib DIR --model vit_base_patch16_224 --num-calib 32
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from erq.bench import _images
from erq.data import DEFAULT_DATA
from erq.pipeline import QuantConfig, quantize


def main(argv=None):
    import timm
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--calib", default=str(Path(DEFAULT_DATA) / "imagenet-calib"))
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--syncs", action="store_true",
                    help="instead: list the lines that synchronize with the GPU, with counts "
                         "(torch.cuda.set_sync_debug_mode)")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    torch.manual_seed(0)
    fp = timm.create_model(args.model, pretrained=False).eval().to(device)
    images = _images(args.calib, fp, args.num_calib)
    cfg = QuantConfig(method="erq", progress=False)
    quantize(copy.deepcopy(fp), [images], cfg, device)  # warm-up: compilation, autotuning
    if args.syncs:
        import collections
        import traceback
        import warnings
        counts = collections.Counter()

        def record(message, category, filename, lineno, file=None, line=None):
            frames = [f for f in traceback.extract_stack()[:-1]
                      if "/erq" in f.filename and "profile_e2e" not in f.filename]
            where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[::-1][:3])
            counts[where or f"{filename}:{lineno}"] += 1

        with warnings.catch_warnings():  # restores showwarning and the filters on exit
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                quantize(copy.deepcopy(fp), [images], cfg, device)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        for where, c in counts.most_common(60):
            print(f"{c:6d}  {where}")
        print("total synchronizations:", sum(counts.values()))
        return
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        _, report = quantize(copy.deepcopy(fp), [images], cfg, device)
    print({k: round(v, 3) for k, v in report.phases.items()})
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
