"""Does the int8 linear layer change a 16-bit evaluation? ViT-Ti W4A4, real images (GPU).

Quantizes the bundled ViT-Ti once (ERQ, default backend), casts its parameters to bf16 (the
quantizers' scales and zero points stay fp32, as ``bench_eval.py`` does) and evaluates the same
model four ways on preloaded images: fp32 eager (reference), bf16 eager (reference), bf16
with the Triton fake-quant linear layers (``ERQ_KERNELS_BACKEND_FAKE_QUANT_LINEAR=triton``)
and bf16 with the int8 linear layers (``=int8``; the attention matmuls on their default in
both). Prints and writes top-1 and the images whose prediction differs from bf16 eager.

    python benchmarks/int8_consistency.py --data data_carry --calib-files data_carry/calib_files.json --out r.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_consistency import CKPT, MODEL, backends, load_images, predictions  # noqa: E402

from erq.cli import device_name, load_model, versions  # noqa: E402
from erq.data import DEFAULT_DATA, model_transform, select_calibration  # noqa: E402
from erq.modules import QuantLinear  # noqa: E402
from erq.pipeline import QuantConfig, quantize  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--calib-files", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", type=int, nargs=2, default=[4, 4])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    device = torch.device("cuda")
    data = Path(args.data)
    fp_model = load_model(MODEL, str(data / CKPT))
    tf = model_transform(fp_model)
    val_x, val_y = load_images(data / "imagenet-val", None, tf, fp_model.num_classes)
    chosen = json.loads(Path(args.calib_files).read_text()) if args.calib_files else {}
    files = chosen.get(str(args.seed)) or select_calibration(data / "imagenet-calib", 32, args.seed)
    calib_x, _ = load_images(data / "imagenet-calib", files, tf, fp_model.num_classes)
    cfg = QuantConfig(method="erq", w_bits=args.bits[0], a_bits=args.bits[1], progress=False)
    model, _ = quantize(copy.deepcopy(fp_model).to(device), [calib_x], cfg, device)
    head = {"device": device_name(device), "versions": versions(), "date": time.strftime("%Y-%m-%d"),
            "bits": args.bits, "seed": args.seed, "num_val": len(val_y)}
    print(head, flush=True)
    runs = {}
    runs["fp32 eager"] = (model, "reference", {}, torch.float32)
    m16 = copy.deepcopy(model)
    for prm in m16.parameters():
        prm.data = prm.data.bfloat16()
    runs["bf16 eager"] = (m16, "reference", {}, torch.bfloat16)
    runs["bf16 triton"] = (m16, "reference", {"fake_quant_linear": "triton",
                                              "fake_quant_matmul": "auto"}, torch.bfloat16)
    runs["bf16 int8"] = (m16, "reference", {"fake_quant_linear": "int8",
                                            "fake_quant_matmul": "auto"}, torch.bfloat16)
    packed = sum(m.int8_weight() is not None for m in m16.modules() if isinstance(m, QuantLinear))
    total = sum(isinstance(m, QuantLinear) for m in m16.modules())
    print(f"{packed} of {total} linear layers have an int8 form", flush=True)
    preds, records = {}, []
    for name, (m, default, per_op, dtype) in runs.items():
        with backends(default, **per_op), torch.no_grad():
            preds[name] = predictions(_cast_input(m, dtype), val_x, device)
        base = preds.get("bf16 eager")
        r = {"run": name, "top1": 100.0 * int((preds[name] == val_y).sum()) / len(val_y),
             "images_changed_vs_bf16_eager": None if base is None else int((preds[name] != base).sum())}
        records.append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({**head, "int8_layers": packed, "linear_layers": total,
                                              "records": records}, indent=1))


class _cast_input(torch.nn.Module):
    """The model with its input cast to ``dtype`` (images are loaded as fp32)."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        return self.model(x.to(self.dtype)).float()


if __name__ == "__main__":
    main()
