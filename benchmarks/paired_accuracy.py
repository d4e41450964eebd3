"""Paired comparison of two quantized models on the same validation images.

Top-1 on 1000 images moves by about 1.2 points (one standard error at 20 %) from the draw of
images alone, so "ERQ beats GPTQ by 0.3 points" says little by itself. Both models see the same
images, so the informative numbers are the discordant ones: b images only the first model gets
right, c only the second. McNemar's exact test asks whether b and c differ more than a fair coin
would make them; the interval is the usual one for a difference of paired proportions.

Reads the JSON-lines files of ``accuracy_sweep.py`` (records with a ``hits`` string) and
compares every ERQ variant with GPTQ for each bit-width and seed, and, for runs made on FP
models with perturbed biases (``--plan noise``), how often the order of the two holds:

    python benchmarks/paired_accuracy.py benchmarks/results/accuracy_paired_cpu.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value of McNemar's test: ``P(min(b, c) or fewer heads)`` doubled
    for ``b + c`` fair coin flips, capped at 1."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired(hits_a: str, hits_b: str) -> dict:
    """Compare two per-image hit strings ``"0101..."`` of equal length (same images, same
    order). Returns the difference of top-1 in points, its 95 % interval (normal approximation
    for paired proportions), the discordant counts and McNemar's exact p-value."""
    if len(hits_a) != len(hits_b):
        raise ValueError(f"hit strings of different lengths: {len(hits_a)} and {len(hits_b)}")
    n = len(hits_a)
    b = sum(x == "1" and y == "0" for x, y in zip(hits_a, hits_b))
    c = sum(x == "0" and y == "1" for x, y in zip(hits_a, hits_b))
    diff = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return {"diff": 100 * diff, "lo": 100 * (diff - 1.96 * se), "hi": 100 * (diff + 1.96 * se),
            "only_a": b, "only_b": c, "p": mcnemar_exact(b, c), "num": n}


_RUN_FIELDS = ("bits", "seed", "num_calib", "fp_noise", "method", "calib_mode", "dual")
_AUTHORS_LAMBDAS = {"lam_head_aqer": 0.1, "lam_embed_factor": 10.0}  # --authors-lambdas


def label(rec: dict) -> str:
    """The method as the command line would spell it; every other field of the run's key
    (its settings that differ from the defaults) is appended, so two different settings never
    share a label. The perturbation and the image count are not part of it."""
    fields = json.loads(rec["key"])
    name = rec["method"]
    if name == "erq":
        name += " " + rec.get("calib_mode", "independent")
        if all(fields.get(k) == v for k, v in _AUTHORS_LAMBDAS.items()):
            name += " --authors-lambdas"
            fields = {k: v for k, v in fields.items() if k not in _AUTHORS_LAMBDAS}
    if rec.get("dual") is False:
        name += " --no-dual"
    for k, v in sorted(fields.items()):
        if k not in _RUN_FIELDS and not (k in ("lam", "lam_rel") and rec["method"] != "erq"):
            name += f" {k}={v}"
    return name


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--baseline", default="gptq", help='e.g. "gptq --no-dual"')
    ap.add_argument("--out", default=None, help="write the comparisons as JSON here")
    args = ap.parse_args(argv)
    runs = {}
    for f in args.files:
        for line in Path(f).read_text().splitlines():
            rec = json.loads(line) if line.strip() else None
            if rec and "hits" in rec:
                rep = rec["fp_noise"][1] if rec.get("fp_noise") else 0
                k = (rec["bits"], rec["seed"], rec.get("num_calib", 32), rep, label(rec))
                if k in runs:
                    raise SystemExit(f"{f}: two runs labelled {k}; compare them in separate calls")
                runs[k] = rec
    rows = []
    for (bits, seed, n, rep, name), rec in sorted(runs.items()):
        base = runs.get((bits, seed, n, rep, args.baseline))
        if name == args.baseline or base is None:
            continue
        r = paired(rec["hits"], base["hits"])
        if n != 32:  # both runs of a pair always have the same number of calibration images
            name = f"{name} ({n} images)"
        rows.append({"bits": bits, "seed": seed, "num_calib": n, "noise_rep": rep, "model": name,
                     "baseline": args.baseline, "top1": rec["top1"],
                     "baseline_top1": base["top1"], **r})
    print(f"| bits | seed | model | top1 | {args.baseline} | difference [95 % interval] "
          f"| only model / only {args.baseline} right | McNemar p |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["noise_rep"] == 0:
            print(f"| {r['bits']} | {r['seed']} | {r['model']} | {r['top1']:.1f} | "
                  f"{r['baseline_top1']:.1f} | {r['diff']:+.1f} [{r['lo']:+.1f}, "
                  f"{r['hi']:+.1f}] | {r['only_a']} / {r['only_b']} | {r['p']:.3g} |")
    groups = {}
    for r in rows:
        groups.setdefault((r["bits"], r["seed"], r["model"]), []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        print(f"\nUnder bias perturbations (noise_rep 0 = unperturbed): model minus "
              f"{args.baseline}, points")
        print(f"| bits | seed | model | runs | model ahead | mean | min | max | "
              f"model top1 min-max | {args.baseline} top1 min-max |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (bits, seed, name), g in sorted(groups.items()):
            if len(g) < 2:
                continue
            d = [r["diff"] for r in g]
            a = [r["top1"] for r in g]
            b = [r["baseline_top1"] for r in g]
            print(f"| {bits} | {seed} | {name} | {len(g)} | {sum(x > 0 for x in d)} | "
                  f"{sum(d) / len(d):+.2f} | {min(d):+.1f} | {max(d):+.1f} | "
                  f"{min(a):.1f}-{max(a):.1f} | {min(b):.1f}-{max(b):.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
