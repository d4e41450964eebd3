"""Two-group (dual uniform quantization) layers on the int8 path: the gathered activation pass
in its variants (a 2-D grid of tiles, one program per rows looping over the columns, whole rows
permuted with ``tl.gather``) against the contiguous pass of the same size, and the GEMM with two
accumulators against one rescaled accumulator; the default bf16 path (Triton quantizer +
cuBLAS) and the eager reference timed in the same run. Every variant's int8 values are compared
with the reference's, and each GEMM's output with its definition.

    python benchmarks/probe_int8_two_groups.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fakequant as bf  # noqa: E402

from erq_kernels import fakequant as fq, int8_linear as il, reference as ref  # noqa: E402

SHAPES = [("vit_h", "fc1", 8224, 1280, 5120), ("vit_h", "qkv", 8224, 1280, 3840),
          ("vit_b", "fc1", 6304, 768, 3072), ("vit_b", "qkv", 6304, 768, 2304),
          ("vit_b_eval", "fc1", 50432, 768, 3072)]
VARIANTS = [("grid", 64, 128), ("rows", 8, 128), ("rows", 4, 256), ("rows", 8, 64),
            ("scatter", 64, 128), ("scatter", 32, 256), ("scatter", 16, 256), ("scatter", 64, 64)]
FIXED = [dict(BM=128, BN=256, BK=128, GROUP_M=8, num_warps=8, num_stages=3),
         dict(BM=128, BN=256, BK=128, GROUP_M=8, num_warps=8, num_stages=4),
         dict(BM=128, BN=128, BK=128, GROUP_M=8, num_warps=8, num_stages=4)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes on the CPU under TRITON_INTERPRET=1 (tests the script)")
    args = ap.parse_args()
    shapes, variants = SHAPES, VARIANTS
    if args.dry_run:
        bf.DEV = "cpu"
        shapes = [("tiny", "fc1", 40, 96, 64)]
        variants = [("grid", 16, 32), ("rows", 8, 32), ("gather", 2), ("scatter", 16, 32)]
    card = torch.cuda.get_device_name() if bf.DEV == "cuda" else "cpu"
    head = f"{card}, torch {torch.__version__}, triton {triton.__version__}"
    print(head, flush=True)
    gen = torch.Generator(device=bf.DEV).manual_seed(0)
    records = []
    for model, layer, m, k, n in shapes:
        x = (torch.randn(m, k, device=bf.DEV, generator=gen) * 1.5).bfloat16()
        w, packed = bf.weight_on_grid(n, k, torch.bfloat16, gen, dual=True)
        _, single = bf.weight_on_grid(n, k, torch.bfloat16, gen, dual=False)
        bias = (torch.randn(n, device=bf.DEV, generator=gen) * 0.1).bfloat16()
        s, z, qmax = bf.act_quant(x)
        s1, z1 = s.reshape(1), z.reshape(1)
        rec = {"model": model, "layer": layer, "m": m, "k": k, "n": n, "k0": packed.k0,
               "kp": packed.levels.shape[1], "rescale_allowed": packed.rescale, "ms": {}}
        v_ref = il.act_values_reference(x.float(), packed, s1, z1, qmax, 8)
        t = rec["ms"]
        t["values_contiguous"] = bf.bench(lambda: il.act_values(x, single, s1, z1, qmax, 8))
        for var in variants:
            v = il.act_values(x, packed, s1, z1, qmax, 8, var)
            ok = packed.perm >= 0  # (the scatter pass leaves the padding unwritten)
            bad = int((v[:, ok] != v_ref[:, ok]).sum())
            name = "values_" + "_".join(map(str, var))
            t[name] = bf.bench(lambda var=var: il.act_values(x, packed, s1, z1, qmax, 8, var))
            rec.setdefault("values_mismatch", {})[name] = bad
        best = min((vv for vv in variants), key=lambda vv: t["values_" + "_".join(map(str, vv))])
        rec["best_values"] = list(best)
        for resc in (False, True):
            y = il.int8_linear(x, packed, bias, s, z, qmax, rescale=resc, codes=best)
            y_def = il.int8_linear_reference(x, packed, bias, s, z, qmax, rescale=resc)
            rec[f"err_def_rescale_{resc}"] = bf.relerr(y, y_def.double())
            t[f"int8_rescale_{resc}"] = bf.bench(
                lambda resc=resc: il.int8_linear(x, packed, bias, s, z, qmax, rescale=resc,
                                                 codes=best))
        t["int8_single_group"] = bf.bench(lambda: il.int8_linear(x, single, bias, s, z, qmax))
        # the GEMM's structure at fixed tiles: two loops with two accumulators / one rescaled
        # accumulator, one loop rescaling at the boundary, one group (no boundary)
        for i, cfg in enumerate(FIXED if not args.dry_run else [il._INTERP_CONFIG]):
            forms = {"two_acc": dict(rescale=False), "rescale": dict(rescale=True)}
            if packed.k0 % cfg["BK"] == 0:
                forms["one_loop"] = dict(rescale=True, one_loop=True)
            for form, kw in forms.items():
                y = il.int8_linear(x, packed, bias, s, z, qmax, codes=best, config=cfg, **kw)
                y_def = il.int8_linear_reference(x, packed, bias, s, z, qmax,
                                                 rescale=kw["rescale"])
                rec[f"err_def_cfg{i}_{form}"] = bf.relerr(y, y_def.double())
                t[f"gemm_cfg{i}_{form}"] = bf.bench(
                    lambda kw=kw, cfg=cfg: il.int8_linear(x, packed, bias, s, z, qmax, codes=best,
                                                         config=cfg, **kw))
            t[f"gemm_cfg{i}_single"] = bf.bench(
                lambda cfg=cfg: il.int8_linear(x, single, bias, s, z, qmax, config=cfg))
        t["prequant"] = bf.bench(lambda: fq.fake_quant_linear(x, w, bias, s, z, qmax,
                                                              strategy="prequant"))
        t["reference"] = bf.bench(lambda: F.linear(ref.fake_quant(x, s, z, qmax), w, bias))
        xq = ref.fake_quant(x.float(), s, z, qmax)
        exact = xq.double() @ w.double().T + bias.double()
        y = il.int8_linear(x, packed, bias, s, z, qmax, codes=best)
        rec["err_vs_fakequant_product"] = bf.relerr(y, exact)
        rec["err_prequant"] = bf.relerr(fq.fake_quant_linear(x, w, bias, s, z, qmax,
                                                             strategy="prequant"), exact)
        del exact, xq
        tops = 2.0 * m * n * k / 1e9
        for key in [kk for kk in t if kk.startswith(("int8_", "gemm_"))]:
            gemm = t[key] - (t["values_contiguous"] if key.endswith("single") or
                             key == "int8_single_group" else t["values_" + "_".join(map(str, best))])
            rec[f"{key}_gemm_tops"] = tops / gemm
        ref_ms = t["reference"]
        line = " ".join(f"{kk} {vv:.4f}ms({ref_ms / vv:.2f}x)" for kk, vv in t.items())
        print(f"{model} {layer} {m}x{k}x{n} k0={packed.k0} kp={rec['kp']}: {line}", flush=True)
        print("   mismatches", rec["values_mismatch"], "errors",
              {kk: f"{vv:.2e}" for kk, vv in rec.items() if kk.startswith("err")},
              "gemm TOPS", {kk: round(vv) for kk, vv in rec.items() if kk.endswith("tops")},
              flush=True)
        records.append(rec)
    if il._TUNER is not None and il._TUNER.tuner is not None:
        for key, cfg in il._TUNER.tuner.cache.items():
            print("tuned", key[:6], cfg, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "probe_int8_two_groups.json").write_text(
            json.dumps({"setup": head, "records": records}, indent=1))


if __name__ == "__main__":
    main()
