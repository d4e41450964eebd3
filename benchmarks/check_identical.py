"""Do the default and the reference backend quantize a model to the same bits? (GPU)

Quantizes each model (random timm weights, ERQ W4A4, calibration images from a folder) once
with ``ERQ_KERNELS_BACKEND=reference`` and once with the default dispatch, then compares every
tensor of the two state dicts element for element, and the logits of one batch.

    python benchmarks/check_identical.py --calib DIR --models vit_base_patch16_224 vit_huge_patch14_224
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from erq.bench import _images  # noqa: E402
from erq.pipeline import QuantConfig, quantize  # noqa: E402
from erq_kernels._dispatch import ENV  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", required=True)
    ap.add_argument("--models", nargs="+", default=["vit_base_patch16_224"])
    ap.add_argument("--num-calib", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    results = []
    for name in args.models:
        torch.manual_seed(0)
        fp = timm.create_model(name, pretrained=False).eval().to(device)
        images = _images(args.calib, fp, args.num_calib)
        states, logits = {}, {}
        for backend in ("reference", "auto"):
            os.environ[ENV] = backend
            cfg = QuantConfig(method="erq", w_bits=4, a_bits=4, progress=False)
            q, _ = quantize(copy.deepcopy(fp), [images], cfg, device)
            with torch.no_grad():
                logits[backend] = q(images[:16].to(device)).cpu()
            states[backend] = {k: v.detach().cpu() for k, v in q.state_dict().items()}
            del q
            torch.cuda.empty_cache()
        os.environ.pop(ENV, None)
        ref, got = states["reference"], states["auto"]
        differ = [k for k in ref if not torch.equal(ref[k], got[k])]
        n_el = sum(v.numel() for v in ref.values())
        rec = {"model": name, "calib_images": args.num_calib, "tensors": len(ref),
               "elements": n_el, "tensors_differing": len(differ), "first_differing": differ[:5],
               "logits_identical": bool(torch.equal(logits["reference"], logits["auto"])),
               "card": torch.cuda.get_device_name(), "torch": torch.__version__}
        results.append(rec)
        print(json.dumps(rec), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
