"""Quantized evaluation throughput (images/s): fused Triton fake-quant matmuls vs eager (GPU).

One W4A4 model (round-to-nearest weights: the forward pass is the same whatever chose the
grid values; random timm weights, real calibration images for the activation ranges) is run
on a fixed batch of images already on the GPU, with ``ERQ_KERNELS_BACKEND=reference`` (eager
fake quantization, then cuBLAS) and with the default backend (the dispatcher's Triton
kernels), in fp32 (quantizer and model in fp32; eager GEMMs IEEE) and in bf16 (weights,
biases and activations bf16; quantizer parameters stay fp32). Also checks that both paths
predict the same classes, and prints the fraction of logits that differ.

    python benchmarks/bench_eval.py --calib DIR --model vit_base_patch16_224 --out DIR
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from erq.bench import _images
from erq.cli import versions
from erq.data import DEFAULT_DATA
from erq.pipeline import QuantConfig, quantize
from erq_kernels._dispatch import ENV


def to_dtype(model, dtype):
    """Parameters to ``dtype``; quantizer buffers (scales, zero points) stay fp32."""
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.data = p.data.to(dtype)
    return m


@torch.no_grad()
def throughput(model, x, backend, reps):
    os.environ[ENV] = backend
    for _ in range(2):  # compile / autotune outside the timing
        model(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        out = model(x)
    torch.cuda.synchronize()
    return x.shape[0] * reps / (time.perf_counter() - t), out.float()


def main(argv=None):
    import timm
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--calib", default=str(Path(DEFAULT_DATA) / "imagenet-calib"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_eval times the GPU forward pass: no CUDA device here")
    device = torch.device("cuda")
    torch.manual_seed(0)
    fp = timm.create_model(args.model, pretrained=False).eval()
    images = _images(args.calib, fp, 32)  # repeated up to the batch size
    x = images.repeat((args.batch + images.shape[0] - 1) // images.shape[0], 1, 1, 1)[: args.batch]
    x = x.to(device)
    os.environ[ENV] = "auto"
    q, _ = quantize(fp.to(device), [images[:32]], QuantConfig(method="rtn", progress=False), device)
    head = {"model": args.model, "batch": args.batch, "card": torch.cuda.get_device_name(device),
            **{k: v for k, v in versions().items() if k in ("torch", "triton", "timm")},
            "date": time.strftime("%Y-%m-%d")}
    records = []
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = q if dtype == torch.float32 else to_dtype(q, dtype)
        xi = x.to(dtype)
        eager, out_e = throughput(m, xi, "reference", args.reps)
        fused, out_f = throughput(m, xi, "auto", args.reps)
        same = float((out_e.argmax(-1) == out_f.argmax(-1)).float().mean())
        diff = float((out_e != out_f).float().mean())
        rec = {**head, "dtype": dname, "eager_img_s": round(eager, 1), "fused_img_s": round(fused, 1),
               "speedup": round(fused / eager, 3), "same_prediction": same, "logits_differing": diff}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    os.environ.pop(ENV, None)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "eval_throughput.json").write_text(json.dumps(records, indent=1))
    return records


if __name__ == "__main__":
    main()
