"""Does the default (Triton) backend reproduce the reference backend? ViT-Ti, real images.

Quantizes the bundled ViT-Ti with ERQ once per backend setting and evaluates every quantized
model with both evaluation paths (eager reference and fused Triton), all on preloaded images
so only the backend changes between runs. Settings: everything reference; everything default;
and reference with ONE op on its default backend (which primitive moves the result?). For
each run it prints and records: top-1, the images whose prediction differs from the
all-reference run, and the fraction of weights whose grid code differs from it.

    python benchmarks/backend_consistency.py --data data_carry --out results.json --seeds 0 1 2
        [--per-op] [--perturb] [--spread 8] [--bits 3 4]

``--perturb`` and ``--spread`` measure how much this W4A4 model's top-1 moves under changes far
below any kernel's error (ulp noise on the biases, the calibration images in another order, which
changes only the order of fp32 sums): the yardstick for "same top-1 within 0.1 point".
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from erq.cli import device_name, load_model, versions
from erq.data import DEFAULT_DATA, ImageFolderDataset, make_loader, model_transform, select_calibration
from erq.modules import weighted_layers
from erq.pipeline import QuantConfig, quantize

ENV = "ERQ_KERNELS_BACKEND"
QUANT_OPS = ("gram_update_exact", "ridge_solve", "inverse_cholesky_upper", "rounding_refine")
EVAL_OPS = ("fake_quant_linear", "fake_quant_matmul")
MODEL = "vit_tiny_patch16_224"
CKPT = "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"


@contextmanager
def backends(default: str, **per_op: str):
    """Force ``default`` for every op, with per-op exceptions (``auto`` = the dispatcher's pick)."""
    keys = [ENV] + [f"{ENV}_{op.upper()}" for op in QUANT_OPS + EVAL_OPS]
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            os.environ.pop(k, None)
        os.environ[ENV] = default
        for op, b in per_op.items():
            os.environ[f"{ENV}_{op.upper()}"] = b
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_images(root, files, transform, num_classes, limit=None):
    ds = ImageFolderDataset(root, transform, files=files, num_classes=num_classes)
    if limit is not None:
        ds.items = ds.items[:limit]
    xs, ys = [], []
    for x, y in make_loader(ds, 100, min(8, os.cpu_count() or 1)):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def predictions(model, images, device, bs=250):
    return torch.cat([model(images[i:i + bs].to(device)).argmax(-1).cpu()
                      for i in range(0, images.shape[0], bs)])


def grid_codes(model):
    """Per layer ``round(w / scale)`` of the quantized weights (codes up to the zero point)."""
    out = {}
    for name, m in weighted_layers(model):
        s, _ = m.weight_quant.maps()
        out[name] = torch.round(m.weight.detach().flatten(1).float() / s).cpu()
    return out


def code_diff(a, b):
    changed = sum(int((a[n] != b[n]).sum()) for n in a)
    total = sum(a[n].numel() for n in a)
    layers = sum(bool((a[n] != b[n]).any()) for n in a)
    return changed / total, layers


def _bias_noise(rel):
    def apply(model, gen):
        for _, m in weighted_layers(model):
            if m.bias is not None:
                noise = torch.randn(m.bias.shape, generator=gen).to(m.bias.device)
                m.bias.data.mul_(1 + rel * noise)
    return apply


def _flip_codes(count):
    def apply(model, gen):
        layers = list(weighted_layers(model))
        for _ in range(count):
            _, m = layers[int(torch.randint(len(layers), (1,), generator=gen))]
            w = m.weight.data.view(m.weight.shape[0], -1)
            s, _ = m.weight_quant.maps()
            r = int(torch.randint(w.shape[0], (1,), generator=gen))
            c = int(torch.randint(w.shape[1], (1,), generator=gen))
            w[r, c] += s[r, c]  # one grid step (may leave the range: only a probe)
    return apply


# How sensitive is the top-1 of this W4A4 model to perturbations far below what any kernel
# choice matters for? (ulp-level noise on every bias; one grid step on a few weights)
PERTURBATIONS = {"biases x (1 + 1e-7 N(0,1))": _bias_noise(1e-7),
                 "biases x (1 + 1e-6 N(0,1))": _bias_noise(1e-6),
                 "7 weights one grid step up": _flip_codes(7)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--calib-files", default=None,
                   help="JSON {seed: [files]} (the selection made on the full calibration folder)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--bits", type=int, nargs=2, default=[4, 4])
    p.add_argument("--num-val", type=int, default=None)
    p.add_argument("--per-op", action="store_true", help="also one-op-default runs (first seed)")
    p.add_argument("--perturb", action="store_true",
                   help="also: the reference with reversed calibration order, and perturbed copies")
    p.add_argument("--spread", type=int, default=0, metavar="K",
                   help="also: the reference backend with the calibration images in K random "
                        "orders (first seed): how far float summation order alone moves top-1")
    p.add_argument("--fast-linalg", action="store_true",
                   help="also: the default backend with QuantConfig(fast_linalg=True) (first seed)")
    p.add_argument("--eval-batch", type=int, default=250)
    p.add_argument("--post-gelu", default="tensor", choices=("tensor", "channel"),
                   help="QuantConfig.post_gelu of every run")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = Path(args.data)
    fp_model = load_model(MODEL, str(data / CKPT))
    tf = model_transform(fp_model)
    val_x, val_y = load_images(data / "imagenet-val", None, tf, fp_model.num_classes, args.num_val)
    fp_model = fp_model.to(device)
    chosen = json.loads(Path(args.calib_files).read_text()) if args.calib_files else {}
    cfg = QuantConfig(method="erq", w_bits=args.bits[0], a_bits=args.bits[1],
                      post_gelu=args.post_gelu, progress=False)
    records = []
    head = {"device": device_name(device), "versions": versions(),
            "date": time.strftime("%Y-%m-%d"), "bits": args.bits, "num_val": len(val_y)}
    print(head, flush=True)

    def record(seed, quant, evalb, model, ref_pred, ref_codes, t_quant):
        with backends("reference", **({op: "auto" for op in EVAL_OPS} if evalb == "default"
                                      else {op: "auto" for op in EVAL_OPS if op == evalb})):
            pred = predictions(model, val_x, device, args.eval_batch)
        codes = grid_codes(model)
        frac, nlayers = code_diff(codes, ref_codes) if ref_codes is not None else (0.0, 0)
        r = {"seed": seed, "quant_backend": quant, "eval_backend": evalb,
             "top1": 100.0 * int((pred == val_y).sum()) / len(val_y),
             "images_changed": int((pred != ref_pred).sum()) if ref_pred is not None else 0,
             "codes_changed": frac, "layers_changed": nlayers, "quantize_s": t_quant}
        records.append(r)
        print(json.dumps(r), flush=True)
        return pred, codes

    for si, seed in enumerate(args.seeds):
        files = chosen.get(str(seed)) or select_calibration(data / "imagenet-calib", 32, seed)
        calib_x, _ = load_images(data / "imagenet-calib", files, tf, fp_model.num_classes)
        settings = [("reference", "reference", {}), ("reference-again", "reference", {}),
                    ("default", "auto", {})]
        if args.perturb and si == 0:
            # the reference backend with the calibration images in reverse order: the same
            # statistics up to the order of fp32 sums
            settings.append(("reference-reversed-images", "reference", {}))
        if args.fast_linalg and si == 0:
            settings.append(("default-fast-linalg", "auto", {}))
        if args.per_op and si == 0:
            settings += [(f"ref+{op}", "reference", {op: "auto"}) for op in QUANT_OPS]
        if args.spread and si == 0:
            settings += [(f"reference-order-{i}", "reference", {}) for i in range(1, args.spread + 1)]
        ref_pred = ref_codes = None
        for name, default, per_op in settings:
            model = copy.deepcopy(fp_model)
            with backends(default, **per_op):
                torch.cuda.synchronize() if device.type == "cuda" else None
                t = time.perf_counter()
                images = calib_x.flip(0) if name.endswith("reversed-images") else calib_x
                if name.startswith("reference-order-"):
                    order = torch.randperm(len(calib_x), generator=torch.Generator().manual_seed(
                        int(name.rsplit("-", 1)[1])))
                    images = calib_x[order]
                run_cfg = replace(cfg, fast_linalg=True) if name == "default-fast-linalg" else cfg
                model, _ = quantize(model, [images], run_cfg, device)
                torch.cuda.synchronize() if device.type == "cuda" else None
                t = time.perf_counter() - t
            evals = ["reference"] if name.startswith("reference-order-") else ["reference", "default"]
            if name == "reference" and args.per_op and si == 0:
                evals += list(EVAL_OPS)
            for evalb in evals:
                pred, codes = record(seed, name, evalb, model, ref_pred, ref_codes, t)
                if ref_pred is None:
                    ref_pred, ref_codes = pred, codes
            if name == "reference" and args.perturb and si == 0:
                for label, fn in PERTURBATIONS.items():
                    pm = copy.deepcopy(model)
                    fn(pm, torch.Generator().manual_seed(1))
                    record(seed, f"reference, {label}", "reference", pm, ref_pred, ref_codes, t)
                    del pm
            del model
    if args.out:
        Path(args.out).write_text(json.dumps({**head, "runs": records}, indent=1))


if __name__ == "__main__":
    main()
