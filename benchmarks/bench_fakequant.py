"""Benchmark of the fake-quant matmuls against the eager reference (GPU).

Usage: ``python benchmarks/bench_fakequant.py --out DIR [--write-dispatch] [--quick]``;
``--from-json FILE`` rewrites the dispatch entries from an earlier run (no GPU);
``--dry-run`` runs the script on the CPU with tiny shapes under ``TRITON_INTERPRET=1``.

Checks correctness first (quantized operands bit for bit, through the fused prologue with an
identity right operand and IEEE products, and through the one-pass quantizer; fp64 residuals of
every strategy), then times every linear layer of ViT-B (M = 197 x 32 tokens) and ViT-H
(M = 257 x 32) and the two attention matmuls of each, in bf16 and fp32:

* ``triton:fused`` / ``triton:prequant`` / ``triton:prequant_triton``: the strategies of
  :mod:`erq_kernels.fakequant` (the Triton backend runs ``fakequant.default_strategy``).
* ``reference``: eager ``reference.fake_quant`` then ``F.linear`` / ``torch.matmul``; fp32
  GEMMs with ``allow_tf32=False`` (IEEE SGEMM), so both sides are fp32-class (the fused fp32
  products are tf32x3).
* ``int8`` (16-bit linear layers): :func:`erq_kernels.int8_linear.int8_linear`, integer
  codes on the int8 tensor cores (``qkv`` and ``fc1`` with two weight column groups, as dual
  uniform quantization makes them).
* ``gemm_only`` (information): the eager GEMM on operands quantized beforehand.

Quantizer parameters are 0-d CUDA tensors, as quantizer modules hold them (eager then divides
exactly, like the kernels). Times are medians of ``triton.testing.do_bench`` (L2 flushed) of
single calls from Python, so the sub-0.15 ms ones include CPU launch overhead. Prints ms,
TFLOP/s and speed-up, writes ``DIR/fakequant.json``; ``--write-dispatch`` records per shape
and dtype whether the default strategy beat eager in ``erq_kernels/dispatch_table.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0 = time.time()
OPS = ("fake_quant_linear", "fake_quant_matmul")
# (model, layer, tokens M, in K, out N)
LINEAR = [("vit_b", name, 197 * 32, k, n) for name, k, n in
          (("qkv", 768, 2304), ("proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768))] + \
         [("vit_h", name, 257 * 32, k, n) for name, k, n in
          (("qkv", 1280, 3840), ("proj", 1280, 1280), ("fc1", 1280, 5120), ("fc2", 5120, 1280))] + \
         [("vit_b_eval", name, 197 * 256, k, n) for name, k, n in  # evaluation batches of 256
          (("qkv", 768, 2304), ("proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768))]
# (model, batch, heads, tokens, head dim)
ATTENTION = [("vit_b", 32, 12, 197, 64), ("vit_h", 32, 16, 257, 80), ("vit_b_eval", 256, 12, 197, 64)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NOISE = 1.03  # a backend must beat the default by more than this factor to be recorded
DEV = "cuda"  # --dry-run: "cpu" with tiny shapes under TRITON_INTERPRET=1 (tests the script)


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def bench(fn) -> float:
    """Median ms (``triton.testing.do_bench``, L2 flushed between calls)."""
    import triton
    if DEV != "cuda":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def warm_up_gpu(seconds: float = 1.0) -> None:
    """Keep the GPU busy with large GEMMs for a while, so that the first shape timed does not
    run at idle clocks (the first row of earlier runs swung by 2x between runs)."""
    if DEV != "cuda":
        return
    a = torch.randn(4096, 4096, device=DEV, dtype=torch.bfloat16)
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def release():
    if DEV == "cuda":
        torch.cuda.empty_cache()


def relerr(out, exact) -> float:
    return (torch.linalg.norm(out.double() - exact) / torch.linalg.norm(exact)).item()


def act_quant(x, bits=4, frac=0.3):
    """Per-tensor asymmetric quantizer of ``x`` (min/max range, fractional zero point, as after
    scale reparameterization) as 0-d fp32 CUDA tensors."""
    lo, hi = x.float().amin(), x.float().amax()
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, torch.round(-lo / scale) + frac, 2 ** bits - 1


def weight_on_grid(n, k, dtype, gen, bits=4, dual=False):
    """Per-output-channel 4-bit weights, dequantized (what the fused linear receives), and the
    same weight packed for the int8 layer. ``dual``: ``n // 20`` random columns form a second
    group with its own range per row (dual uniform quantization)."""
    from erq_kernels import int8_linear, reference as ref
    w = torch.randn(n, k, device=DEV, generator=gen) / k ** 0.5
    group = torch.zeros(k, dtype=torch.long, device=DEV)
    if dual:
        # own generator: the caller's random stream stays what it was without groups
        cols = torch.randperm(k, device=DEV, generator=torch.Generator(device=DEV).manual_seed(k))
        group[cols[:min(n // 20, k - 1)]] = 1
        w = w * torch.where(group == 1, 4.0, 1.0)  # outlier columns
    scales, zeros = [], []
    for g in range(2 if dual else 1):
        wg = torch.where(group == g, w, float("nan"))
        lo = wg.nan_to_num(float("inf")).amin(1).clamp(max=0.0)
        hi = wg.nan_to_num(float("-inf")).amax(1).clamp(min=0.0)
        scales.append((hi - lo) / (2 ** bits - 1))
        zeros.append(torch.round(-lo / scales[-1]))
    s, z = torch.stack(scales)[group].T, torch.stack(zeros)[group].T
    wq = ref.fake_quant(w, s, z, 2 ** bits - 1)
    levels = torch.round(wq / s)
    packed = int8_linear.pack_weight(levels, torch.stack(scales), group if dual else None)
    return wq.to(dtype), packed


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------

def check_correctness() -> bool:
    """Quantized operands bit for bit, through the fused kernel (identity right operand, IEEE
    products) and through the one-pass quantizer; fp64 residuals of the products of every
    strategy. Returns True when every check passed."""
    from erq_kernels import fakequant as fq, reference as ref
    gen = torch.Generator(device=DEV).manual_seed(1)
    ok = True
    cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}
    m, k = 197 * 4, 200
    eye = torch.eye(k, device=DEV)

    def operands(x, quant):
        """{path: quantized x} through the fused prologue and the one-pass kernel."""
        fp32 = x.dtype == torch.float32
        fused = fq.fake_quant_matmul(x, eye.to(x.dtype), quant, None, strategy="fused",
                                     precision="ieee" if fp32 else None, config=cfg)
        return {"fused": fused, "one-pass": fq.fake_quant_tensor(x, quant)}

    def compare(label, x, quant, expected):
        nonlocal ok
        for path, got in operands(x, quant).items():
            bad = (got != expected).sum().item()
            ok &= bad == 0
            log(f"check {label} ({path}): {bad} of {x.numel()} quantized values differ")

    s, z, qmax = 0.11, 7.3, 15
    lvl = torch.randint(-20, 36, (m, k), device=DEV, generator=gen).double()
    u = torch.rand(m, k, device=DEV, generator=gen, dtype=torch.float64) * 0.9 - 0.45
    x = ((lvl + u) * s).float()  # x / s at least 0.05 from a rounding tie
    st, zt = torch.tensor(s, device=DEV), torch.tensor(z, device=DEV)
    expected = ref.fake_quant(x, st, zt, qmax)  # tensor scale: torch divides exactly
    compare("fp32 uniform, number params", x, ("uniform", s, z, qmax), expected)
    compare("fp32 uniform, tensor params", x, ("uniform", st, zt, qmax), expected)
    sv = torch.rand(k, device=DEV, generator=gen) * 0.2 + 0.05
    zv = torch.rand(k, device=DEV, generator=gen) * 15
    xv = ((torch.randint(-5, 20, (m, k), device=DEV, generator=gen) + u) * sv.double()).float()
    compare("fp32 uniform, per channel", xv, ("uniform", sv, zv, qmax), ref.fake_quant(xv, sv, zv, qmax))
    xb = x.bfloat16()
    compare("bf16 uniform vs fp32 quantization of the bf16 input", xb, ("uniform", st, zt, qmax),
            ref.fake_quant(xb.float(), st, zt, qmax).bfloat16())
    got = fq.fake_quant_tensor(xb, ("uniform", st, zt, qmax)).float()
    eager = ref.fake_quant(xb, st, zt, qmax).float()
    log(f"  (eager bf16 fake_quant, which rounds each step to bf16, differs at "
        f"{(got != eager).sum().item()} of {x.numel()}, by a level at "
        f"{((got - eager).abs() > 0.5 * s).sum().item()})")
    # log-sqrt(2): -2 log2(p / s) at least 0.1 from a tie; zeros and values above s included.
    ps = 0.7
    t = torch.randint(-3, 19, (m, k), device=DEV, generator=gen).double() + u / 0.45 * 0.4
    p = (ps * torch.exp2(-t / 2)).float()
    p.view(-1)[::37] = 0
    compare("fp32 log2", p, ("log2", ps, 4), ref.fake_quant_log2(p, torch.tensor(ps, device=DEV), 4))

    # Products: fp64 residuals of the identical quantized operands.
    w, packed = weight_on_grid(333, k, torch.float32, gen, dual=True)
    bias = torch.randn(333, device=DEV, generator=gen)
    exact32 = expected.double() @ w.double().T + bias.double()
    xqb = ref.fake_quant(xb.float(), st, zt, qmax).bfloat16()
    exact16 = xqb.double() @ w.bfloat16().double().T + bias.bfloat16().double()
    q = torch.randn(2, 3, 197, 80, device=DEV, generator=gen)
    kk = torch.randn(2, 3, 197, 80, device=DEV, generator=gen)
    qa, ka = ("uniform", *act_quant(q)), ("uniform", *act_quant(kk))
    exact_qk = ref.fake_quant_matmul(q.double(), kk.transpose(-2, -1).double(), qa, ka)
    pr = torch.softmax(torch.randn(2, 3, 197, 197, device=DEV, generator=gen) * 3, -1)
    pa = ("log2", pr.amax(), 4)
    exact_pv = ref.fake_quant_log2(pr, pr.amax(), 4).double() @ ref.fake_quant(q, *qa[1:]).double()
    for strategy in fq.STRATEGIES:  # one tile config: the timings below run the autotuner
        kw = dict(strategy=strategy, config=cfg)
        e32 = relerr(fq.fake_quant_linear(x, w, bias, st, zt, qmax, **kw), exact32)
        e16 = relerr(fq.fake_quant_linear(xb, w.bfloat16(), bias.bfloat16(), st, zt, qmax, **kw),
                     exact16)
        e_qk = relerr(fq.fake_quant_matmul(q, kk.transpose(-2, -1), qa, ka, **kw), exact_qk)
        e_pv = relerr(fq.fake_quant_matmul(pr, q, pa, qa, **kw), exact_pv)
        ok &= max(e32, e_qk, e_pv) < 1e-6 and e16 < 1e-2
        log(f"check residuals vs fp64 ({strategy}): linear fp32 {e32:.2e}, bf16 {e16:.2e}; "
            f"fp32 q@k^T {e_qk:.2e}, P@v {e_pv:.2e}")
    # int8: its activation values bit for bit, its result against its fp64 definition, and
    # against the fake-quant product (fractional zero point: clamped values rounded to 1/mult)
    from erq_kernels import int8_linear as il
    v_ref = il.act_values_reference(xb.float(), packed, st, zt, qmax, il.act_mult(qmax))
    lin = il.int8_linear(xb, packed, bias.bfloat16(), st, zt, qmax)
    e_def = relerr(lin, il.int8_linear_reference(xb, packed, bias.bfloat16(), st, zt, qmax).double())
    e_fq = relerr(lin, exact16)
    v = il.act_values(xb, packed, st.reshape(1), zt.reshape(1), qmax, il.act_mult(qmax))
    v_bad = (v != v_ref).sum().item()
    ok &= v_bad == 0 and e_def < 4e-3 and e_fq < 1e-2
    log(f"check int8 linear (bf16): {v_bad} of {v.numel()} int8 values differ; residual vs its "
        f"fp64 definition {e_def:.2e}, vs the fake-quant product {e_fq:.2e}")
    return ok


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_linear(model, layer, m, k, n, dname, gen):
    from erq_kernels import fakequant as fq, reference as ref
    dtype = DTYPES[dname]
    x = (torch.randn(m, k, device=DEV, generator=gen) * 1.5).to(dtype)
    w, packed = weight_on_grid(n, k, dtype, gen, dual=layer in ("qkv", "fc1"))
    bias = (torch.randn(n, device=DEV, generator=gen) * 0.1).to(dtype)
    s, z, qmax = act_quant(x)
    xq = ref.fake_quant(x, s, z, qmax)
    fns = {f"triton:{st}": (lambda st=st: fq.fake_quant_linear(x, w, bias, s, z, qmax, strategy=st))
           for st in fq.STRATEGIES}
    if dtype != torch.float32:
        from erq_kernels import int8_linear
        fns["int8"] = lambda: int8_linear.int8_linear(x, packed, bias, s, z, qmax)
        s1, z1 = s.reshape(1), z.reshape(1)  # (information: its activation pass alone)
        fns["int8_values"] = lambda: int8_linear.act_values(x, packed, s1, z1, qmax, 8)
    fns["reference"] = lambda: F.linear(ref.fake_quant(x, s, z, qmax), w, bias)
    fns["gemm_only"] = lambda: F.linear(xq, w, bias)
    # fp64 reference on the kernel's quantized operand (fp32 quantization of x).
    xq32 = ref.fake_quant(x.float(), s, z, qmax).to(dtype)
    exact = xq32.double() @ w.double().T + bias.double()
    res = {}
    for name, fn in fns.items():
        out = fn()
        err = relerr(out, exact) if out.shape == exact.shape else float("nan")
        res[name] = {"ms": bench(fn), "error": err}
    del exact
    return res, 2.0 * m * n * k, {"model": model, "layer": layer, "m": m, "k": k, "n": n}


def time_attention(model, b, h, t, d, which, dname, gen):
    from erq_kernels import fakequant as fq, reference as ref
    dtype = DTYPES[dname]
    # q, k, v as views of one qkv tensor, the layout timm's attention produces.
    qkv = torch.randn(b, t, 3, h, d, device=DEV, generator=gen).to(dtype).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if which == "qk":
        a, bb = q, k.transpose(-2, -1)
        aq, bq = ("uniform", *act_quant(q)), ("uniform", *act_quant(k))
        m, kk, n = t, d, t
    else:
        logits = torch.randn(b, h, t, t, device=DEV, generator=gen) * 2
        a, bb = torch.softmax(logits, -1).to(dtype), v
        del logits
        aq, bq = ("log2", a.float().amax(), 4), ("uniform", *act_quant(v))
        m, kk, n = t, t, d
    a_ref = ref._apply_quant(a, aq)
    b_ref = ref._apply_quant(bb, bq)
    fns = {f"triton:{st}": (lambda st=st: fq.fake_quant_matmul(a, bb, aq, bq, strategy=st))
           for st in fq.STRATEGIES}
    fns["reference"] = lambda: ref.fake_quant_matmul(a, bb, aq, bq)
    fns["gemm_only"] = lambda: torch.matmul(a_ref, b_ref)
    a32 = ref._apply_quant(a.float(), aq).to(dtype).double()
    b32 = ref._apply_quant(bb.float(), bq).to(dtype).double()
    exact = a32 @ b32
    res = {}
    for name, fn in fns.items():
        res[name] = {"ms": bench(fn), "error": relerr(fn(), exact)}
    del exact, a32, b32
    shape = {"model": model, "matmul": "q@k^T" if which == "qk" else "P@v", "b": b, "h": h,
             "m": m, "k": kk, "n": n}
    return res, 2.0 * b * h * m * n * kk, shape


def write_dispatch(records: list[dict]) -> None:
    """Replace this area's entries of ``erq_kernels/dispatch_table.json`` with the winners."""
    path = ROOT / "erq_kernels" / "dispatch_table.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    from erq_kernels import fakequant as fq
    best: dict[tuple, dict] = {}
    for r in records:
        # The Triton backend runs its default strategy for the op, dtype and quantizer.
        a_quant = ("log2",) if r["shape"].get("matmul") == "P@v" else None
        default = fq.default_strategy(r["op"].split("_")[-1], DTYPES[r["dtype"]], a_quant)
        if r["backend"] not in (f"triton:{default}", "reference", "int8"):
            continue
        # The eager path and the int8 layer win a shape from the default strategy only by more
        # than the timing noise (3 %).
        ms = r["ms"] * (NOISE if r["backend"] in ("reference", "int8") else 1.0)
        r = {**r, "backend": r["backend"].split(":")[0], "ms": ms}
        key = (r["op"], json.dumps(r["shape"], sort_keys=True), r["dtype"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    entries: dict[str, list] = {op: [] for op in OPS}
    for (op, _, dtype), r in sorted(best.items()):
        sh = r["shape"]
        if op == "fake_quant_linear":
            rec = {"batch": sh["m"], "n": sh["n"], "k": sh["k"]}
        else:
            rec = {"batch": sh["b"] * sh["h"], "n": sh["n"], "nrhs": sh["m"], "k": sh["k"]}
        entries[op].append({**rec, "dtype": dtype, "bits": 8 * DTYPES[dtype].itemsize,
                            "backend": r["backend"]})
    for op, new in entries.items():  # measured shapes replace their old records, others stay
        same = lambda a, b: all(a.get(f) == b.get(f) for f in ("batch", "n", "k", "nrhs", "dtype"))  # noqa: E731
        keep = [old for old in table.get(op, []) if not any(same(old, rec) for rec in new)]
        table[op] = keep + new
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"updated {path}: " + ", ".join(f"{op} {len(v)} records" for op, v in entries.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--write-dispatch", action="store_true")
    ap.add_argument("--from-json", type=Path, help="only rewrite the dispatch table from this file")
    ap.add_argument("--quick", action="store_true", help="ViT-B shapes only")
    ap.add_argument("--models", nargs="+", choices=("vit_b", "vit_h", "vit_b_eval"),
                    help="shape sets to time (default: all; --quick: vit_b)")
    ap.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["bf16", "fp32"])
    ap.add_argument("--linear-only", action="store_true", help="skip the attention matmuls")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny shapes, TRITON_INTERPRET=1: exercises the script only")
    args = ap.parse_args()
    if args.from_json:
        write_dispatch(json.loads(args.from_json.read_text())["records"])
        return
    global DEV, LINEAR, ATTENTION
    if args.dry_run:
        DEV = "cpu"
        LINEAR = [("vit_b", "qkv", 197 // 2, 48, 80), ("vit_h", "fc2", 64, 80, 32)]
        ATTENTION = [("vit_b", 1, 2, 37, 16)]
    import triton
    from erq_kernels import fakequant as fq
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 eager = IEEE SGEMM
    torch.backends.cudnn.allow_tf32 = False
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    meta = {"card": card, "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    log(f"{card}, torch {torch.__version__}, triton {triton.__version__}; "
        "fp32 eager GEMMs with allow_tf32=False, fused fp32 products tf32x3")
    args.out.mkdir(parents=True, exist_ok=True)
    ok = check_correctness()
    log("correctness", "OK" if ok else "FAILED")
    warm_up_gpu()

    records, rows = [], []
    out_file = args.out / "fakequant.json"

    def add(op, dname, res, flop, shape):
        eager = res["reference"]["ms"]
        for backend, r in res.items():
            records.append({"op": op, "shape": shape, "dtype": dname, "backend": backend,
                            "ms": r["ms"], "tflops": flop / r["ms"] / 1e9,
                            "speedup": eager / r["ms"], "error": r["error"], **meta})
        rows.append((op, shape, dname, res, flop))
        log(f"{op} {dname} {json.dumps(shape)}: " + ", ".join(
            f"{b} {r['ms']:.3f} ms ({eager / r['ms']:.2f}x, err {r['error']:.1e})"
            for b, r in res.items()))
        out_file.write_text(json.dumps({"records": records, "correct": ok, **meta}, indent=1))

    gen = torch.Generator(device=DEV).manual_seed(0)
    models = args.models or (("vit_b",) if args.quick else ("vit_b", "vit_h", "vit_b_eval"))
    for dname in args.dtypes:
        for model, layer, m, k, n in LINEAR:
            if model in models:
                add("fake_quant_linear", dname, *time_linear(model, layer, m, k, n, dname, gen))
                release()
        for model, b, h, t, d in ATTENTION:
            if model in models and not args.linear_only:
                for which in ("qk", "pv"):
                    add("fake_quant_matmul", dname, *time_attention(model, b, h, t, d, which, dname, gen))
                    release()

    names = [f"triton:{st}" for st in fq.STRATEGIES] + ["int8", "reference", "gemm_only"]
    print("\nms (speed-up over eager 'reference'); TFLOP/s (int8: TOPS) of the best Triton path; "
          f"{card}\n{'op':8s} {'dtype':5s} {'shape':34s} " +
          " ".join(f"{n.replace('triton:', ''):>17s}" for n in names) + "  TFLOP/s")
    for op, shape, dname, res, flop in rows:
        sh = (f"{shape['model']} {shape['layer']} {shape['m']}x{shape['k']}x{shape['n']}"
              if op == "fake_quant_linear" else
              f"{shape['model']} {shape['matmul']} {shape['b']}x{shape['h']}x{shape['m']}x{shape['k']}x{shape['n']}")
        eager = res["reference"]["ms"]
        best = min(res[n]["ms"] for n in names[:4] if n in res)
        print(f"{op.split('_')[-1]:8s} {dname:5s} {sh:34s} " + " ".join(
            f"{res[n]['ms']:8.3f} ({eager / res[n]['ms']:5.2f}x)" if n in res else f"{'-':>17s}"
            for n in names) + f"  {flop / best / 1e9:6.1f}", flush=True)
    for kind, launch in fq._TUNED.items():
        for key, cfg in getattr(launch.tuner, "cache", {}).items():
            log(f"tuned {kind} {key}: {cfg}")
    from erq_kernels import int8_linear
    if int8_linear._TUNER is not None:
        for key, cfg in getattr(int8_linear._TUNER.tuner, "cache", {}).items():
            log(f"tuned int8 {key}: {cfg}")
    log(f"wrote {out_file}; correctness {'OK' if ok else 'FAILED'}")
    if args.write_dispatch:
        write_dispatch(records)


if __name__ == "__main__":
    main()
