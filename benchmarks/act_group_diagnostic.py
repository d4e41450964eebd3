"""Which activation quantizers cost the accuracy? (ViT-Ti, CPU or GPU.)

Quantizes the bundled ViT-Ti once (``--method``, ``--w-bits``, ``--a-bits``, seed-0
calibration images), then evaluates the 1000 val images with activation quantization on for
no quantizer, for one group of quantizers at a time (the same quantizer in every block, e.g.
``mlp.fc2.input_quant``) and for all of them; the weights stay quantized throughout.

    python benchmarks/act_group_diagnostic.py --w-bits 4 --a-bits 4 --out benchmarks/results/act_groups_w4a4.jsonl
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from erq.cli import device_name, load_model, versions
from erq.data import DEFAULT_DATA, ImageFolderDataset, make_loader, model_transform, select_calibration
from erq.evaluate import evaluate
from erq.modules import activation_quantizers
from erq.pipeline import QuantConfig, quantize


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="rtn")
    ap.add_argument("--w-bits", type=int, default=4)
    ap.add_argument("--a-bits", type=int, default=4)
    ap.add_argument("--post-gelu", default="tensor", choices=("tensor", "channel"))
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = Path(args.data)
    fp = load_model("vit_tiny_patch16_224", None)
    tf = model_transform(fp)
    val = [b for b in make_loader(ImageFolderDataset(data / "imagenet-val", tf,
                                                     num_classes=fp.num_classes), 50)]
    files = select_calibration(data / "imagenet-calib", 32, 0)
    calib = [x for x, _ in make_loader(ImageFolderDataset(data / "imagenet-calib", tf, files=files), 32)]
    cfg = QuantConfig(method=args.method, w_bits=args.w_bits, a_bits=args.a_bits,
                      post_gelu=args.post_gelu, progress=False)
    model, _ = quantize(fp, calib, cfg, device)
    quants = activation_quantizers(model)
    groups: dict[str, list] = {}
    for name, mod in model.named_modules():
        if any(mod is q for q in quants):  # "blocks.3.mlp.fc2.input_quant" -> "mlp.fc2.input_quant"
            key = ".".join(p for p in name.split(".") if not p.isdigit() and p != "blocks")
            groups.setdefault(key, []).append(mod)
    runs = [("none", [])] + sorted(groups.items()) + [("all", quants)]
    for label, on in runs:
        for q in quants:
            q.enabled = any(q is o for o in on)
        r = evaluate(model, val, device, progress=False)
        rec = {"method": args.method, "w_bits": args.w_bits, "a_bits": args.a_bits,
               "post_gelu": args.post_gelu, "group": label, "quantizers": len(on),
               "top1": r["top1"], "num_val": r["num"], "device": device_name(device),
               "versions": versions(), "date": time.strftime("%Y-%m-%d")}
        print(json.dumps({k: rec[k] for k in ("group", "quantizers", "top1")}), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
