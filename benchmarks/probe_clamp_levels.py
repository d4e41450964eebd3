"""Could a quantized linear layer run as an integer (int8 / fp8) GEMM on the activation codes?
Only if every quantized activation is an integer multiple of its scale. With scale
reparameterization the per-tensor zero point of a post-LayerNorm quantizer is a mean of
per-channel zero points, so it is fractional, and the two clamp levels of
``(clamp(round(x / s) + z, 0, qmax) - z) * s``, ``-z`` and ``qmax - z``, are not on the integer
lattice. This probe quantizes ViT-Ti with ``rtn`` (CPU) and, for every linear layer's input
quantizer, reports the zero point and the share of input elements that land on a clamp level
(over the 32 calibration images of the seed).

    python benchmarks/probe_clamp_levels.py [--a-bits 4] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    from erq.cli import load_model
    from erq.data import ImageFolderDataset, make_loader, model_transform, select_calibration
    from erq.modules import QuantLinear
    from erq.pipeline import QuantConfig, quantize

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--a-bits", type=int, default=4)
    ap.add_argument("--w-bits", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    model = load_model("vit_tiny_patch16_224",
                       str(data / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"))
    files = select_calibration(data / "imagenet-calib", 32, args.seed)
    calib = make_loader(ImageFolderDataset(data / "imagenet-calib", model_transform(model),
                                           files=files, num_classes=model.num_classes), 32, 0)
    cfg = QuantConfig(method="rtn", w_bits=args.w_bits, a_bits=args.a_bits, progress=False)
    model, _ = quantize(model, calib, cfg, torch.device("cpu"))

    counts = defaultdict(lambda: [0, 0, 0])  # name -> [elements, at lower clamp, at upper]
    zeros = {}

    def hook(name):
        def fn(mod, inputs):
            q = mod.input_quant
            if q is None or not q.enabled or q.per_channel:
                return
            x = inputs[0].detach().float()
            s, z = q.scale.float(), q.zero.float()
            v = torch.round(x / s) + z
            c = counts[name]
            c[0] += x.numel()
            c[1] += int((v < 0).sum())
            c[2] += int((v > q.qmax).sum())
            zeros[name] = float(z)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, QuantLinear)]
    with torch.no_grad():
        for x, _ in calib:
            model(x)
    for h in handles:
        h.remove()

    rows = []
    for name, (n, lo, hi) in counts.items():
        z = zeros[name]
        rows.append({"layer": name, "zero": z, "zero_is_integer": z == math.floor(z),
                     "elements": n, "share_lower_clamp": lo / n, "share_upper_clamp": hi / n})
    kinds = defaultdict(list)
    for r in rows:
        kinds[r["layer"].split(".")[-1]].append(r)
    print(f"ViT-Ti rtn W{args.w_bits}A{args.a_bits}, seed {args.seed}, 32 calibration images")
    print(f"{'layer kind':10} {'layers':>6} {'fractional z':>12} "
          f"{'clamped (min..max per layer)':>32}")
    for kind, rs in kinds.items():
        frac = sum(not r["zero_is_integer"] for r in rs)
        shares = [r["share_lower_clamp"] + r["share_upper_clamp"] for r in rs]
        print(f"{kind:10} {len(rs):6d} {frac:12d} {min(shares):14.2e} .. {max(shares):.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
