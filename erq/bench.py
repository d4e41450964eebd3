"""End-to-end timing of the ERQ pipeline (``erq bench``, ``benchmarks/bench_e2e.py``).

For each model and number of calibration images, runs activation calibration,
reparameterization, statistics, Aqer, weight-quantizer init, Wqer and one evaluation batch,
once with ``ERQ_KERNELS_BACKEND=reference`` (eager torch primitives) and once with the
default dispatch (Triton kernels where they win), in the same process. Random weights
(timing only); real calibration images from a folder.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch

from erq_kernels._dispatch import ENV

MODELS = ["vit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224",
          "vit_large_patch16_224", "vit_huge_patch14_224"]


def _images(folder, model, n: int) -> torch.Tensor:
    from .data import ImageFolderDataset, make_loader, model_transform
    ds = ImageFolderDataset(folder, model_transform(model))
    if len(ds) < n:
        raise SystemExit(f"{folder} holds {len(ds)} images, {n} needed")
    ds.items = ds.items[:n]
    return torch.cat([x for x, _ in make_loader(ds, 64)])


def run_one(fp_model, images, n: int, backend: str, device, eval_batch: int = 64) -> dict:
    from .pipeline import QuantConfig, quantize
    os.environ[ENV] = backend
    model = copy.deepcopy(fp_model)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    cfg = QuantConfig(method="erq", w_bits=4, a_bits=4, progress=False, batch_size=32)
    q, report = quantize(model, [images[:n]], cfg, device)
    t1 = time.perf_counter()
    with torch.no_grad():
        q(images[:eval_batch].to(device))
    torch.cuda.synchronize(device)
    phases = dict(report.phases)
    phases["eval_batch"] = time.perf_counter() - t1
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device)
    del q, model
    return {"phases": {k: round(v, 3) for k, v in phases.items()}, "total_s": round(total, 3),
            "peak_gb": round(peak / 1e9, 3)}


def main(argv=None):
    import timm
    from .cli import versions
    from .data import DEFAULT_DATA
    ap = argparse.ArgumentParser(prog="erq bench", description=__doc__)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--num-calib", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--backends", nargs="+", default=["reference", "auto"])
    ap.add_argument("--calib", default=str(Path(DEFAULT_DATA) / "imagenet-calib"))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each model x images x backend this many times, alternating "
                         "backends (the table's speed-up compares medians)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("erq bench times the GPU pipeline: no CUDA device here")
    device = torch.device("cuda")
    card = torch.cuda.get_device_name(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    print(f"# {card}, {versions()}", flush=True)
    for name in args.models:
        torch.manual_seed(0)
        fp = timm.create_model(name, pretrained=False).eval().to(device)
        images = _images(args.calib, fp, max(args.num_calib))
        if not args.no_warmup:  # compile every kernel for this model's shapes outside the timing
            run_one(fp, images, min(args.num_calib), "auto", device)
        for n in args.num_calib:
            for rep, backend in itertools.product(range(args.repeat), args.backends):
                r = run_one(fp, images, n, backend, device)
                rec = {"model": name, "calib_images": n, "backend": "default" if backend == "auto" else backend,
                       "repeat": rep, **r, "card": card,
                       **{k: v for k, v in versions().items() if k in ("torch", "triton", "timm")},
                       "date": time.strftime("%Y-%m-%d")}
                records.append(rec)
                print(json.dumps(rec), flush=True)
                (out / "e2e.json").write_text(json.dumps(records, indent=1))
        del fp, images
    os.environ.pop(ENV, None)
    print(table(records))
    return records


def table(records) -> str:
    phases = ["wrap", "activation_calibration", "statistics", "aqer", "weight_init", "wqer",
              "report_errors", "eval_batch"]
    lines = ["| model | images | backend | " + " | ".join(phases) + " | total s | peak GB | speed-up |",
             "|" + "---|" * (len(phases) + 6)]
    totals: dict[tuple, list] = {}
    for r in records:
        totals.setdefault((r["model"], r["calib_images"], r["backend"]), []).append(r["total_s"])
    med = {k: statistics.median(v) for k, v in totals.items()}
    for r in records:
        sp = med.get((r["model"], r["calib_images"], "reference"))
        speed = (f"{sp / r['total_s']:.1f}x" if sp and r["backend"] != "reference" else "")
        lines.append(f"| {r['model']} | {r['calib_images']} | {r['backend']} | "
                     + " | ".join(f"{r['phases'].get(p, 0):.2f}" for p in phases)
                     + f" | {r['total_s']:.2f} | {r['peak_gb']:.2f} | {speed} |")
    for (model, n, backend), v in med.items():
        ref = med.get((model, n, "reference"))
        if backend != "reference" and ref and len(totals[(model, n, backend)]) > 1:
            lines.append(f"\n{model}, {n} images: median total {backend} {v:.2f} s over "
                         f"{len(totals[(model, n, backend)])} runs, reference {ref:.2f} s: "
                         f"{ref / v:.1f}x")
    lines += growth(med)
    return "\n".join(lines)


def growth(med: dict) -> list[str]:
    """How the median total grows with the model (against the first model measured) and with
    the number of calibration images (against the fewest), per backend."""
    lines = []
    for backend in dict.fromkeys(b for _, _, b in med):
        cells = {(m, n): v for (m, n, b), v in med.items() if b == backend}
        models = list(dict.fromkeys(m for m, _ in cells))
        counts = sorted({n for _, n in cells})
        lines.append(f"\ngrowth, {backend}: total s (x first model) per model at each image count;"
                     " x fewest images per model")
        for m in models:
            parts = []
            for n in counts:
                if (m, n) in cells:
                    base = cells.get((models[0], n))
                    parts.append(f"{n} img {cells[(m, n)]:.2f} s"
                                 + (f" ({cells[(m, n)] / base:.1f}x)" if base else ""))
            few, many = (m, counts[0]), (m, counts[-1])
            scale = (f"; {counts[-1]}/{counts[0]} images: {cells[many] / cells[few]:.1f}x"
                     if few != many and few in cells and many in cells else "")
            lines.append(f"  {m}: " + ", ".join(parts) + scale)
    return lines


if __name__ == "__main__":
    main()
