"""Markdown tables from ``accuracy_sweep.py``'s JSON lines (for RESULTS.md)."""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def options(r) -> str:
    """The settings beyond method, mode and lambda that set a run apart, as CLI flags."""
    out = []
    if r.get("post_gelu", "tensor") != "tensor":
        out.append(f"--post-gelu {r['post_gelu']}")
    if r.get("dual") is False:
        out.append("--no-dual")
    if r.get("reparam") is False:
        out.append("--no-reparam")
    if r.get("aqer") is False or r.get("wqer") is False:
        out.append("Aqer only" if r.get("wqer") is False else "Wqer only")
    head, embed = r.get("lam_head_aqer"), r.get("lam_embed_factor", 1.0)
    if head is not None and embed != 1.0:
        out.append("per-layer lambdas" if (head, embed) == (0.1, 10.0)
                   else f"head Aqer lambda {head:g}, embed x{embed:g}")
    elif head is not None:
        out.append(f"head Aqer lambda {head:g} only")
    elif embed != 1.0:
        out.append(f"embed lambda x{embed:g} only")
    return ", " + ", ".join(out) if out else ""


def label(r) -> str:
    if r["method"] in ("fp", "rtn", "gptq"):
        return {"fp": "FP32", "rtn": "rtn", "gptq": "gptq"}[r["method"]] + options(r)
    lam = f"lambda {r['lam']:g}" if r.get("lam") is not None else \
        (f"lambda-rel {r['lam_rel']:g}" if r.get("lam_rel") is not None else "lambda from the defaults")
    n = f", {r['num_calib']} img" if r.get("num_calib", 32) != 32 else ""
    return f"erq {r.get('calib_mode', 'independent')}, {lam}{n}{options(r)}"


def main(paths):
    recs = [r for p in paths for r in load(p)]
    cells = defaultdict(dict)
    for r in recs:
        cells[(label(r), r["bits"])][r["seed"]] = r["top1"]
    rows = list(dict.fromkeys(label(r) for r in recs))
    bits = ["W3A4", "W4A4", "W5A5", "W8A8"]
    print("| method | " + " | ".join(f"{b} s0 / s1 / s2 (mean)" for b in bits) + " |")
    print("|---|" + "---|" * len(bits))
    for row in rows:
        out = []
        for b in bits:
            c = cells.get((row, b), {})
            if not c:
                out.append("")
                continue
            vals = " / ".join(f"{c[s]:.1f}" if s in c else "-" for s in (0, 1, 2))
            mean = sum(c.values()) / len(c)
            out.append(f"{vals} ({mean:.1f})" if len(c) > 1 else vals)
        print(f"| {row} | " + " | ".join(out) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["benchmarks/results/accuracy.jsonl"])
