"""Accuracy of rtn / gptq / erq on the bundled ViT-Ti over many settings, on any device.

Every run quantizes a fresh copy of the FP model and evaluates it on the same preloaded
validation images; each result is appended to a JSON-lines file as soon as it exists (a
crash loses nothing and a rerun skips what is there).

    python benchmarks/accuracy_sweep.py --plan main --out benchmarks/results/accuracy.jsonl
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from erq.cli import device_name, load_model, versions
from erq.data import DEFAULT_DATA, ImageFolderDataset, make_loader, model_transform, select_calibration
from erq.evaluate import evaluate
from erq.pipeline import QuantConfig, quantize

BITS = {"W3A4": (3, 4), "W4A4": (4, 4), "W5A5": (5, 5), "W8A8": (8, 8)}
AUTHORS = dict(lam=1000.0, lam_rel=None)
# the two per-layer lambdas of the authors' code (--authors-lambdas)
PER_LAYER = dict(lam_head_aqer=0.1, lam_embed_factor=10.0)
# candidate clipping quantiles of the activation quantizers beyond the specification's three
ACT_GRIDS = {"wide": [0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 1.0],
             "tight": [0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 0.99999]}


def plan(name: str) -> list[dict]:
    """The runs of a named plan, in the order they are made."""
    runs = []
    if name == "main":  # issue 2 + 3: every method, both modes, three seeds, three bit-widths
        runs.append(dict(method="fp", bits="W4A4", seed=0))
        runs.append(dict(method="rtn", bits="W8A8", seed=0))
        for seed, bits in itertools.product((0, 1, 2), ("W4A4", "W3A4", "W5A5")):
            runs += [dict(method="rtn", bits=bits, seed=seed),
                     dict(method="gptq", bits=bits, seed=seed),
                     dict(method="erq", bits=bits, seed=seed, calib_mode="independent", **AUTHORS),
                     dict(method="erq", bits=bits, seed=seed, calib_mode="sequential", **AUTHORS)]
    elif name == "lambda":  # absolute vs relative lambda, both modes
        for seed, mode in itertools.product((0,), ("independent", "sequential")):
            runs += [dict(method="erq", bits="W4A4", seed=seed, calib_mode=mode, lam=lam, lam_rel=None)
                     for lam in (100.0, 10000.0)]
            runs += [dict(method="erq", bits="W4A4", seed=seed, calib_mode=mode, lam=None, lam_rel=r)
                     for r in (0.01, 0.1, 1.0)]
    elif name == "rel01":  # the relative lambda that won on seed 0, on every seed and bit-width
        for seed, bits in itertools.product((0, 1, 2), ("W4A4", "W3A4", "W5A5")):
            runs.append(dict(method="erq", bits=bits, seed=seed, lam=None, lam_rel=0.1))
    elif name == "ncalib":
        for n, mode in ((128, "independent"), (128, "sequential"), (512, "independent")):
            runs.append(dict(method="erq", bits="W4A4", seed=0, num_calib=n, calib_mode=mode,
                             lam=None, lam_rel=0.1))
    elif name == "actq":  # wider searches for the activation clipping ranges, seed 0
        for grid in ACT_GRIDS.values():
            runs += [dict(method="erq", bits="W4A4", seed=0, act_quantiles=grid, **AUTHORS),
                     dict(method="rtn", bits="W4A4", seed=0, act_quantiles=grid)]
    elif name == "actq_tight":  # the grid that did better on seed 0, on seeds 1 and 2
        runs += [dict(method="erq", bits="W4A4", seed=s, act_quantiles=ACT_GRIDS["tight"], **AUTHORS)
                 for s in (1, 2)]
    elif name == "ablation":  # the authors' published ablations on these assets (ANCHORS.md 2)
        runs += [dict(method="erq", bits="W4A4", seed=0, aqer=True, wqer=False, **AUTHORS),
                 dict(method="erq", bits="W4A4", seed=0, aqer=False, wqer=True, **AUTHORS)]
        for bits in ("W4A4", "W3A4", "W5A5"):
            runs += [dict(method="erq", bits=bits, seed=0, dual=False, **AUTHORS),
                     dict(method="rtn", bits=bits, seed=0, dual=False)]
        runs += [dict(method="erq", bits=b, seed=0, lam=2000.0, lam_rel=None) for b in ("W4A4", "W3A4")]
    elif name == "postgelu":  # fc2 input per channel (beyond the spec), seed 0 first
        runs += [dict(method="erq", bits="W4A4", seed=0, post_gelu="channel", **AUTHORS),
                 dict(method="erq", bits="W4A4", seed=0, post_gelu="channel", reparam=False, **AUTHORS),
                 dict(method="rtn", bits="W4A4", seed=0, post_gelu="channel"),
                 dict(method="rtn", bits="W8A8", seed=0, post_gelu="channel")]
    elif name == "postgelu_seeds":  # the same on three seeds and three bit-widths (GPU)
        for seed, bits in itertools.product((0, 1, 2), ("W4A4", "W3A4", "W5A5")):
            runs += [dict(method="erq", bits=bits, seed=seed, **AUTHORS),
                     dict(method="rtn", bits=bits, seed=seed),
                     dict(method="erq", bits=bits, seed=seed, post_gelu="channel", **AUTHORS),
                     dict(method="rtn", bits=bits, seed=seed, post_gelu="channel"),
                     dict(method="erq", bits=bits, seed=seed, post_gelu="channel",
                          calib_mode="sequential", **AUTHORS),
                     dict(method="erq", bits=bits, seed=seed, post_gelu="channel", reparam=False,
                          **AUTHORS)]
    elif name == "postgelu_ncalib":  # more calibration images with the per-channel option
        for n, mode in itertools.product((128, 512), ("independent", "sequential")):
            runs.append(dict(method="erq", bits="W4A4", seed=0, num_calib=n, calib_mode=mode,
                             post_gelu="channel", **AUTHORS))
        runs.append(dict(method="erq", bits="W4A4", seed=0, num_calib=512, post_gelu="channel",
                         reparam=False, **AUTHORS))
    elif name == "postgelu_lambda":  # ridge strength with the option, three seeds (GPU)
        for seed, bits in itertools.product((0, 1, 2), ("W4A4", "W3A4")):
            runs += [dict(method="erq", bits=bits, seed=seed, post_gelu="channel", lam=lam,
                          lam_rel=None) for lam in (100.0, 10000.0)]
            runs.append(dict(method="erq", bits=bits, seed=seed, post_gelu="channel", lam=None,
                             lam_rel=0.1))
    elif name == "authors_lambdas":  # the two per-layer lambdas of the authors' code, seed 0
        for bits in ("W4A4", "W3A4", "W5A5"):
            runs.append(dict(method="erq", bits=bits, seed=0, **PER_LAYER, **AUTHORS))
        for bits in ("W4A4", "W3A4"):  # each of the two alone
            runs += [dict(method="erq", bits=bits, seed=0, lam_head_aqer=0.1, **AUTHORS),
                     dict(method="erq", bits=bits, seed=0, lam_embed_factor=10.0, **AUTHORS)]
        runs.append(dict(method="erq", bits="W4A4", seed=0, aqer=True, wqer=False, **PER_LAYER,
                         **AUTHORS))
    elif name == "authors_lambdas_seeds":  # the same on seeds 1 and 2, and sequential mode
        for seed, bits in itertools.product((1, 2), ("W4A4", "W3A4", "W5A5")):
            runs.append(dict(method="erq", bits=bits, seed=seed, **PER_LAYER, **AUTHORS))
        for seed, bits in itertools.product((0, 1, 2), ("W4A4", "W3A4", "W5A5")):
            runs.append(dict(method="erq", bits=bits, seed=seed, calib_mode="sequential",
                             **PER_LAYER, **AUTHORS))
    elif name == "authors_lambdas_gpu":  # both lambda schemes, with and without the option
        for seed, bits in itertools.product((0, 1, 2), ("W4A4", "W3A4", "W5A5")):
            for pg in ("tensor", "channel"):
                runs += [dict(method="erq", bits=bits, seed=seed, post_gelu=pg, **AUTHORS),
                         dict(method="erq", bits=bits, seed=seed, post_gelu=pg, **PER_LAYER,
                              **AUTHORS),
                         dict(method="erq", bits=bits, seed=seed, post_gelu=pg,
                              calib_mode="sequential", **PER_LAYER, **AUTHORS)]
    elif name == "paired":  # W3A4 / W4A4 head to head, per-image hits kept (paired_accuracy.py)
        for seed, bits in itertools.product((0, 1, 2), ("W3A4", "W4A4")):
            runs += [dict(method="gptq", bits=bits, seed=seed),
                     dict(method="erq", bits=bits, seed=seed, calib_mode="independent", **AUTHORS),
                     dict(method="erq", bits=bits, seed=seed, **PER_LAYER, **AUTHORS),
                     dict(method="erq", bits=bits, seed=seed, calib_mode="sequential", **AUTHORS)]
    elif name == "noise":  # gptq and erq on FP models whose biases moved by ulps (perturb_biases)
        for seed, bits, rep in itertools.product((0, 1, 2), ("W3A4", "W4A4"), range(9)):
            noise = dict(fp_noise=[1e-7, rep]) if rep else {}
            runs += [dict(method="gptq", bits=bits, seed=seed, **noise),
                     dict(method="erq", bits=bits, seed=seed, calib_mode="independent",
                          **noise, **AUTHORS)]
    elif name == "w3a4_ncalib":  # does ERQ pull ahead of GPTQ at W3A4 with more images?
        for seed in (0, 1, 2):
            runs += [dict(method="gptq", bits="W3A4", seed=seed, num_calib=128),
                     dict(method="erq", bits="W3A4", seed=seed, num_calib=128,
                          calib_mode="independent", **AUTHORS)]
    elif name == "gptq_single_group":  # GPTQ without dual uniform quantization (the paper's
        # GPTQ* predates it), beside the default, which shares ERQ's two-group weight quantizers
        for seed, bits in itertools.product((0, 1, 2), ("W3A4", "W4A4")):
            runs.append(dict(method="gptq", bits=bits, seed=seed, dual=False))
    elif name == "anchors":  # seed 0 against ANCHORS.md: both lambda schemes, and W8A8
        runs.append(dict(method="rtn", bits="W8A8", seed=0))
        for bits in ("W4A4", "W3A4", "W5A5"):
            runs += [dict(method="rtn", bits=bits, seed=0),
                     dict(method="erq", bits=bits, seed=0, calib_mode="independent", **AUTHORS),
                     dict(method="erq", bits=bits, seed=0, **PER_LAYER, **AUTHORS),
                     dict(method="gptq", bits=bits, seed=0)]
    else:
        raise SystemExit(f"unknown plan {name!r}")
    return runs


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(QuantConfig)} | {"num_calib": 32}


def perturb_biases(model: torch.nn.Module, rel: float, seed: int) -> None:
    """Multiply every bias of the FP model's linear and conv layers by ``1 + rel N(0, 1)`` (a
    seeded draw, in module order). At ``rel = 1e-7`` most biases move by at most one ulp: a
    change no one would call a different model, which shows how much of a top-1 difference
    between two methods is arithmetic chance."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and m.bias is not None:
            noise = torch.randn(m.bias.shape, generator=gen, dtype=torch.float64)
            m.bias.data.copy_((m.bias.data.double() * (1 + rel * noise)).to(m.bias.dtype))


def key(run: dict) -> str:
    """The run's identity: its fields, without those equal to the defaults, so that a run
    spelled with ``post_gelu="tensor"`` is the same run as one without it."""
    return json.dumps({k: v for k, v in run.items()
                       if not (k in _DEFAULTS and v == _DEFAULTS[k])}, sort_keys=True)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", action="append", required=True)
    ap.add_argument("--out", default="benchmarks/results/accuracy.jsonl")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--num-val", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--extra", default="{}", help="JSON of QuantConfig fields for every run")
    ap.add_argument("--calib-files", default=None,
                    help="JSON {seed: [files]} made by select_calibration on the full folder, for "
                         "a --data whose imagenet-calib holds only those files (the GPU copy)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="only the runs of these calibration seeds (a copy of the data too big "
                         "for one device call goes in two)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    data = Path(args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {key(json.loads(json.loads(line)["key"]))
                for line in out.read_text().splitlines() if line.strip()}
    fp_model = load_model("vit_tiny_patch16_224", None)
    tf = model_transform(fp_model)
    val_ds = ImageFolderDataset(data / "imagenet-val", tf, num_classes=fp_model.num_classes)
    if args.num_val:
        val_ds.items = val_ds.items[: args.num_val]
    bs = 256 if device.type == "cuda" else 16
    t = time.perf_counter()
    val = [(x, y) for x, y in make_loader(val_ds, bs)]  # decoded once for every run
    print(f"validation images decoded in {time.perf_counter() - t:.1f} s", flush=True)
    calib_cache = {}
    extra = json.loads(args.extra)
    chosen = json.loads(Path(args.calib_files).read_text()) if args.calib_files else {}
    for run in itertools.chain.from_iterable(plan(p) for p in args.plan):
        run = {**run, **extra}
        k = key(run)
        if k in done or (args.seeds is not None and run["method"] != "fp"
                         and run["seed"] not in args.seeds):
            continue
        done.add(k)
        w_bits, a_bits = BITS[run["bits"]]
        n_calib = run.get("num_calib", 32)
        t0 = time.perf_counter()
        base = copy.deepcopy(fp_model)
        if run.get("fp_noise"):
            perturb_biases(base, *run["fp_noise"])
        if run["method"] == "fp":
            model, report = base.to(device), None
        else:
            ck = (run["seed"], n_calib)
            if ck not in calib_cache:
                if chosen:  # the folder holds only the listed files: no other selection is right
                    files = chosen.get(str(run["seed"]), [])
                    if len(files) != n_calib:
                        raise SystemExit(f"--calib-files lists {len(files)} files for seed "
                                         f"{run['seed']}, the run needs {n_calib}")
                else:
                    files = select_calibration(data / "imagenet-calib", n_calib, run["seed"])
                ds = ImageFolderDataset(data / "imagenet-calib", tf, files=files)
                calib_cache[ck] = [x for x, _ in make_loader(ds, 32)]
            fields = {k2: v for k2, v in run.items()
                      if k2 not in ("bits", "seed", "num_calib", "fp_noise")}
            cfg = QuantConfig(w_bits=w_bits, a_bits=a_bits, progress=False, **fields)
            model, report = quantize(base, calib_cache[ck], cfg, device)
        tq = time.perf_counter() - t0
        r = evaluate(model, val, device, progress=False, per_image=True)
        rec = {"key": k, **run, "num_calib": n_calib,
               "config": report.config if report else None, "w_bits": w_bits, "a_bits": a_bits,
               "top1": r["top1"], "top5": r["top5"], "num_val": r["num"], "quantize_s": round(tq, 2),
               "hits": "".join("1" if h else "0" for h in r["hits"].tolist()),
               "phases": {k2: round(v, 2) for k2, v in (report.phases if report else {}).items()},
               "device": device_name(device), "versions": versions(),
               "date": time.strftime("%Y-%m-%d")}
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{run} -> top1 {r['top1']:.1f} ({tq:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
