"""Command line: ``erq quantize``, ``erq eval``, ``erq bench``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .data import DEFAULT_DATA, ImageFolderDataset, make_loader, model_transform, select_calibration
from .pipeline import CALIB_MODES, METHODS, QuantConfig
from .wrap import POST_GELU

DEFAULT_MODEL = "vit_tiny_patch16_224"
DEFAULT_CHECKPOINTS = {DEFAULT_MODEL: "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"}


def versions() -> dict:
    out = {"erq": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("timm", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def load_model(name: str, checkpoint: str | None):
    """A timm model with weights from ``checkpoint`` (a file), the bundled default, or timm."""
    import timm
    if checkpoint is None and name in DEFAULT_CHECKPOINTS:
        default = Path(DEFAULT_DATA) / DEFAULT_CHECKPOINTS[name]
        if default.is_file():
            checkpoint = str(default)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        # load the state dict ourselves: timm versions differ in what pretrained_cfg_overlay
        # file= accepts; the architecture's default pretrained_cfg still gives preprocessing
        model = timm.create_model(name, pretrained=False)
        if str(checkpoint).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(str(checkpoint))
        else:
            state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {checkpoint} does not fit {name}: "
                             + str(exc).splitlines()[1].strip()[:300]) from None
        return model.eval()
    return timm.create_model(name, pretrained=True).eval()


def _write_json(path, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _val_loader(args, model, transform):
    ds = ImageFolderDataset(args.val, transform, num_classes=model.num_classes)
    if args.num_val is not None:
        ds.items = ds.items[: args.num_val]
    bs = args.eval_batch_size or (256 if torch.cuda.is_available() and args.device != "cpu" else 16)
    return make_loader(ds, bs, args.workers)


def cmd_quantize(args) -> dict:
    from .evaluate import evaluate
    from .export import save_quantized
    from .pipeline import quantize

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.lam is not None and args.lam_rel is not None:
        raise ValueError("give either --lambda or --lambda-rel, not both")
    if args.lam is None and args.lam_rel is None:
        args.lam = QuantConfig.lam
    head, embed = (0.1, 10.0) if args.authors_lambdas else (QuantConfig.lam_head_aqer,
                                                            QuantConfig.lam_embed_factor)
    config = QuantConfig(
        lam_head_aqer=head if args.lam_head_aqer is None else args.lam_head_aqer,
        lam_embed_factor=embed if args.lam_embed_factor is None else args.lam_embed_factor,
        method=args.method, w_bits=args.w_bits, a_bits=args.a_bits, calib_mode=args.calib_mode,
        lam=args.lam, lam_rel=args.lam_rel, dual=not args.no_dual, reparam=not args.no_reparam,
        rounding_steps=args.rounding_steps, act_calib_images=min(args.act_calib, args.num_calib),
        batch_size=args.batch_size, gptq_act_order=args.act_order,
        fast_linalg=args.fast_linalg, progress=not args.quiet,
        act_quantiles=tuple(args.act_quantiles) if args.act_quantiles else None,
        post_gelu=args.post_gelu,
    ).validate()
    phases = {}
    t0 = time.perf_counter()
    model = load_model(args.model, args.checkpoint)
    transform = model_transform(model)
    files = select_calibration(args.calib, args.num_calib, args.seed)
    calib = make_loader(ImageFolderDataset(args.calib, transform, files=files,
                                           num_classes=model.num_classes), args.batch_size, args.workers)
    val = _val_loader(args, model, transform)
    phases["load"] = time.perf_counter() - t0
    result = {"model": args.model, "method": args.method, "w_bits": args.w_bits,
              "a_bits": args.a_bits, "num_calib": args.num_calib, "seed": args.seed,
              "calib_mode": args.calib_mode, "lambda": args.lam, "lambda_rel": config.lam_rel,
              "lambda_head_aqer": config.lam_head_aqer, "lambda_embed_factor": config.lam_embed_factor,
              "dual": config.dual, "post_gelu": config.post_gelu, "num_val": len(val.dataset),
              "device": device_name(device),
              "versions": versions(), "calib_files": files}
    model = model.to(device)
    if not args.skip_fp:
        t = time.perf_counter()
        fp = evaluate(model, val, device, progress=not args.quiet, desc="fp32")
        phases["fp_eval"] = time.perf_counter() - t
        result.update(fp_top1=fp["top1"], fp_top5=fp["top5"])
    t = time.perf_counter()
    qmodel, report = quantize(model, calib, config, device)
    phases["quantize"] = time.perf_counter() - t
    phases.update({f"quantize.{k}": v for k, v in report.phases.items()})
    if args.save:
        save_quantized(qmodel, args.save, args.model, extra={"seed": args.seed, "files": files})
        result["saved"] = str(args.save)
    t = time.perf_counter()
    q = evaluate(qmodel, val, device, progress=not args.quiet, desc=f"W{args.w_bits}A{args.a_bits}")
    phases["eval"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t0
    result.update(top1=q["top1"], top5=q["top5"], seconds=phases, layers=report.layers)
    if args.json:
        _write_json(args.json, result)
    _print_table(result)
    return result


def _print_table(r: dict) -> None:
    fp = f"{r['fp_top1']:.1f}" if "fp_top1" in r else "skipped"
    rows = [("model", r["model"]), ("method", f"{r['method']} ({r.get('calib_mode', '')})"),
            ("bits", f"W{r['w_bits']}A{r['a_bits']}"), ("calibration", f"{r['num_calib']} images, seed {r['seed']}"),
            ("val images", r["num_val"]), ("FP32 top-1", fp), ("quantized top-1", f"{r['top1']:.1f}"),
            ("quantized top-5", f"{r['top5']:.1f}"),
            ("quantize time", f"{r['seconds']['quantize']:.1f} s"), ("total time", f"{r['seconds']['total']:.1f} s"),
            ("device", r["device"])]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))


def cmd_eval(args) -> dict:
    from .evaluate import evaluate
    from .export import load_quantized

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.quantized:
        model, meta = load_quantized(args.quantized, device)
        name = meta["model"]
    else:
        model, name = load_model(args.model, args.checkpoint).to(device), args.model
    val = _val_loader(args, model, model_transform(model))
    r = evaluate(model, val, device, progress=not args.quiet)
    out = {"model": name, "quantized": args.quantized, "num_val": r["num"], "top1": r["top1"],
           "top5": r["top5"], "device": device_name(device), "versions": versions()}
    if args.json:
        _write_json(args.json, out)
    print(f"{name}: top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  ({r['num']} images)")
    return out


def _common(p) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="timm model name")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the bundled ViT-Ti, or timm's download)")
    p.add_argument("--val", default=str(Path(DEFAULT_DATA) / "imagenet-val"), help="evaluation image folder")
    p.add_argument("--num-val", type=int, default=None, help="evaluate on the first N images only")
    p.add_argument("--eval-batch-size", type=int, default=None,
                   help="default: 16 on the CPU (activations stay in cache), 256 on a GPU")
    p.add_argument("--workers", type=int, default=None, help="data loader processes")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="erq", description="ERQ post-training quantization of vision transformers")
    ap.add_argument("--version", action="version", version=__version__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="quantize a timm model and evaluate it")
    _common(q)
    q.add_argument("--calib", default=str(Path(DEFAULT_DATA) / "imagenet-calib"), help="calibration image folder")
    q.add_argument("--method", choices=METHODS, default="erq")
    q.add_argument("--w-bits", type=int, default=4)
    q.add_argument("--a-bits", type=int, default=4)
    q.add_argument("--num-calib", type=int, default=32)
    q.add_argument("--seed", type=int, default=0, help="calibration image choice")
    q.add_argument("--calib-mode", choices=CALIB_MODES, default=QuantConfig.calib_mode)
    q.add_argument("--lambda", dest="lam", type=float, default=None,
                   help=f"absolute ridge lambda (default {QuantConfig.lam:g}, the authors' value)")
    q.add_argument("--lambda-rel", dest="lam_rel", type=float, default=None,
                   help="instead: ridge lambda relative to the mean diagonal of A^T A")
    q.add_argument("--lambda-head-aqer", dest="lam_head_aqer", type=float, default=None,
                   help="Aqer lambda of the classifier head (the authors' code: 0.1; default: "
                        "the same lambda as every layer)")
    q.add_argument("--lambda-embed-factor", dest="lam_embed_factor", type=float, default=None,
                   help="Wqer lambda of the patch embedding as a multiple of lambda (the "
                        "authors' code: 10; default 1)")
    q.add_argument("--authors-lambdas", action="store_true",
                   help="the two per-layer lambdas of the authors' code: head Aqer 0.1, patch "
                        "embedding Wqer 10x (explicit --lambda-head-aqer/--lambda-embed-factor win)")
    q.add_argument("--no-dual", action="store_true", help="no dual uniform quantization of qkv/fc1")
    q.add_argument("--no-reparam", action="store_true", help="no scale reparameterization")
    q.add_argument("--post-gelu", choices=POST_GELU, default=QuantConfig.post_gelu,
                   help="fc2 input quantizer: 'tensor' (the specification) or 'channel' (per "
                        "channel, scales folded into fc2; beyond the specification)")
    q.add_argument("--rounding-steps", type=int, default=100)
    q.add_argument("--act-calib", type=int, default=32, help="images for activation calibration")
    q.add_argument("--act-quantiles", type=float, nargs="+", default=None, metavar="P",
                   help="candidate clipping quantiles of the activation quantizers (least MSE "
                        "wins); default the specification's 0.999 0.9999 0.99999")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument("--act-order", action="store_true", help="GPTQ: activation order")
    q.add_argument("--fast-linalg", action="store_true",
                   help="Triton linear algebra where it wins (on CUDA); the quantized weights then "
                        "differ from the reference backend's in the last bits")
    q.add_argument("--skip-fp", action="store_true", help="do not evaluate the FP model")
    q.add_argument("--save", default=None, help="write the quantized model (safetensors)")
    q.set_defaults(func=cmd_quantize)
    e = sub.add_parser("eval", help="evaluate a FP or saved quantized model")
    _common(e)
    e.add_argument("--quantized", default=None, help="a file written by 'erq quantize --save'")
    e.set_defaults(func=cmd_eval)
    b = sub.add_parser("bench", help="end-to-end GPU timing (benchmarks/bench_e2e.py)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return ap


def cmd_bench(args):
    from .bench import main as bench_main
    return bench_main(args.rest)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
