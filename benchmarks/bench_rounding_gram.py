"""Benchmark of rounding refinement and the quantize-and-accumulate Gram kernel (GPU).

Usage: ``python benchmarks/bench_rounding_gram.py --out DIR [--write-dispatch] [--tune]``.

Rounding refinement: per ViT layer shape (``n = D + 1``, ``O = 3n`` rows, ``|S|`` every
halving ``n//2, ...`` down to 1, 100 steps) the Triton kernel against the eager reference
(``reference.rounding_refine``) on the same inputs in the same run; Delta is compared exactly.
Gram statistics: ``N`` = 32 x 197 and 512 x 197 tokens, ``D`` in 192, 384, 768, 1280, against
``reference.gram_update`` (quantize, concatenate, two IEEE fp32 matmuls); errors against fp64.
The exact statistics (``gram_update(exact=True)``, what the pipeline uses): the int8 path
against its definition ``gram_exact.gram_update`` (fp64 products in torch), bits compared.
Writes ``DIR/rounding.json`` and ``DIR/gram.json``; ``--write-dispatch`` (or ``--from-json DIR``
without a GPU) records the winner per shape in ``erq_kernels/dispatch_table.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"vit_tiny": 192, "deit_small": 384, "vit_base": 768, "vit_huge": 1280}
TOKENS = (32 * 197, 512 * 197)
STEPS = 100
DEV = "cuda"  # the smoke test of this script sets "cpu"
CHECK_D = 768
TUNE_ROUNDING = ((579, 96), (579, 12), (2307, 384), (3843, 640), (3843, 40))
TUNE_GRAM = ((6304, 192), (6304, 768), (100864, 768), (100864, 1280))
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def halvings(n: int) -> list[int]:
    """``|S|`` of every Wqer pass on ``n`` columns (as erq/wqer.py: the first half, floor)."""
    out, start = [], 0
    while n - start > 1:
        h = (n - start) // 2
        out.append(h)
        start += h
    return out


def event_ms(fn, reps: int) -> float:
    """Median of ``reps`` event-timed calls after one warm-up (for slow eager loops)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def bench_ms(fn, rep: float = 60.0) -> float:
    import triton
    return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median")


# ---------------------------------------------------------------------------------------------
# rounding refinement
# ---------------------------------------------------------------------------------------------

def make_rounding(o: int, s: int, gen) -> tuple:
    """Rounding errors of 4-bit per-row grids of random weights, and C = mu mu^T + cov."""
    dev = DEV
    w = 0.05 * torch.randn(1, o, s, device=dev, generator=gen)
    lo = w.amin(-1, keepdim=True).clamp(max=0)
    hi = w.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    t = w / scale
    errs = [(torch.clamp(f(t) + zero, 0, 15) - zero) * scale - w
            for f in (torch.round, torch.floor, torch.ceil)]
    x = torch.randn(2048, s, device=dev, generator=gen)
    x = x @ (torch.eye(s, device=dev) + 0.3 * torch.randn(s, s, device=dev, generator=gen)
             / s ** 0.5) + 0.3 * torch.randn(1, s, device=dev, generator=gen)
    mu = x.mean(0, keepdim=True)
    c = (x - mu).T @ (x - mu) / (x.shape[0] - 1) + mu.T @ mu
    c = (0.5 * (c + c.T)).unsqueeze(0).contiguous()
    return (*errs, c)


def bench_rounding(meta, records, args):
    from erq_kernels import reference, rounding
    gen = torch.Generator(device=DEV).manual_seed(1)
    print(f"\n{'layer':11s} {'O':>5s} {'|S|':>5s} {'triton ms':>10s} {'eager ms':>10s} "
          f"{'speed-up':>9s} {'GB/s':>7s} {'rows diff':>9s}", flush=True)
    layers = [(model, d + 1, 3 * (d + 1)) for model, d in MODELS.items()]
    if args.fc2:  # the MLP's second layer: n = 4d + 1 columns, O = d rows
        layers = [(f"{model} fc2", 4 * d + 1, d) for model, d in MODELS.items()]
    for model, n, o in layers:
        tot_k = tot_r = 0.0
        for s in halvings(n):
            er, ef, ec, c = make_rounding(o, s, gen)
            got = rounding.rounding_refine(er, ef, ec, c, STEPS)
            want = reference.rounding_refine(er, ef, ec, c, STEPS)
            diff_rows = int((got != want).any(-1).sum())
            flips = int((want != er).sum())
            k_ms = bench_ms(lambda: rounding.rounding_refine(er, ef, ec, c, STEPS), args.rep)
            r_ms = event_ms(lambda: reference.rounding_refine(er, ef, ec, c, STEPS),
                            reps=3 if s >= 256 else 5)
            gbs = (3 * o * s + s * s + o * s) * 4 / k_ms / 1e6
            tot_k += k_ms
            tot_r += r_ms
            records.append({"op": "rounding_refine", "shape": f"1x{o}x{s}", "batch": o, "n": s,
                            "layer": model, "steps": STEPS, "backend": "triton", "ms": k_ms,
                            "eager_ms": r_ms, "speedup": r_ms / k_ms,
                            "max_error": diff_rows / o, "rows_differing": diff_rows,
                            "flips_reference": flips, **meta})
            print(f"{model:11s} {o:5d} {s:5d} {k_ms:10.3f} {r_ms:10.2f} {r_ms / k_ms:8.1f}x "
                  f"{gbs:7.1f} {diff_rows:9d}", flush=True)
            del er, ef, ec, c, got, want
        records.append({"op": "rounding_refine", "shape": f"layer n={n} O={o} all halvings",
                        "layer": model, "backend": "triton", "ms": tot_k, "eager_ms": tot_r,
                        "speedup": tot_r / tot_k, "max_error": None, **meta})
        log(f"=> {model} (n={n}, O={o}, {len(halvings(n))} halvings): triton {tot_k:.2f} ms, "
            f"eager {tot_r:.1f} ms, speed-up {tot_r / tot_k:.1f}x per layer")


def tune_rounding(args):
    from erq_kernels import rounding
    gen = torch.Generator(device=DEV).manual_seed(2)
    for o, s in TUNE_ROUNDING:
        er, ef, ec, c = make_rounding(o, s, gen)
        res = []
        for bo in (1, 2, 4, 8, 16):
            res.append((bo, bench_ms(lambda: rounding.rounding_refine(er, ef, ec, c, STEPS,
                                                                     block_o=bo), 40)))
        if s >= 256:
            for nw in (2, 8, 16):
                res.append((f"1/w{nw}", bench_ms(lambda: rounding.rounding_refine(
                    er, ef, ec, c, STEPS, block_o=1, num_warps=nw), 40)))
        default = rounding.launch_config(o, 1, s, er.device)
        log(f"tune rounding O={o} |S|={s}: " + ", ".join(f"BLOCK_O={b}: {t:.3f} ms"
                                                         for b, t in res)
            + f"  (default BLOCK_O={default[0]})")


# ---------------------------------------------------------------------------------------------
# Gram statistics
# ---------------------------------------------------------------------------------------------

def quantizer(mode: str, x: torch.Tensor):
    d = x.shape[1]
    if mode == "none":
        return None, None, None
    if mode == "tensor":
        lo, hi = x.min().item(), x.max().item()
        s = (hi - lo) / 15
        return s, -lo / s + 0.37, 15  # fractional zero, as after reparameterization
    lo, hi = x.amin(0), x.amax(0)
    s = (hi - lo) / 15
    return s, -lo / s + 0.37, 15


def fp64_stats(x, scale, zero, qmax):
    """fp64 products of the reference quantization with a correctly rounded x / s (a Python
    float scale would make torch on CUDA multiply by 1/s instead)."""
    from erq_kernels import reference
    if scale is not None and not isinstance(scale, torch.Tensor):
        scale = torch.tensor(scale, dtype=torch.float32, device=x.device)
        zero = torch.tensor(zero, dtype=torch.float32, device=x.device)
    xq = x if scale is None else reference.fake_quant(x, scale, zero, qmax)
    one = torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)
    a = torch.cat([xq.double(), one], 1)
    xt = torch.cat([x.double(), one], 1)
    return a.T @ a, a.T @ xt


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def gram_check():
    """Quantization bit-exactness: one row per call, so the column sums are the quantized row."""
    from erq_kernels import gram, reference
    gen = torch.Generator(device=DEV).manual_seed(3)
    d = CHECK_D
    mism = {"0-d tensor scale": 0, "float scale": 0, "per-channel": 0}
    for trial in range(16):
        x = torch.randn(1, d, device=DEV, generator=gen)
        s = 0.0731
        if trial % 2 == 0:  # exact ties k + 1/2
            x = (torch.randint(-20, 20, (1, d), device=DEV, generator=gen) + 0.5) * 0.125
            s = 0.125
        sc = 0.02 + 0.1 * torch.rand(d, device=DEV, generator=gen)
        for name, (scale, zero) in {"0-d tensor scale": (torch.tensor(s, device=DEV),
                                                         torch.tensor(7.3, device=DEV)),
                                    "float scale": (s, 7.3),
                                    "per-channel": (sc, 7.3 + 0 * sc)}.items():
            ata = torch.zeros(d + 1, d + 1, device=DEV)
            atx, cs = torch.zeros_like(ata), torch.zeros(d + 1, device=DEV)
            gram.gram_update(x, ata, atx, cs, scale, zero, 15)
            q = reference.fake_quant(x, scale, zero, 15)[0]
            mism[name] += int((cs[:d] != q).sum())
    log("gram quantization vs reference.fake_quant on CUDA (elements differing of "
        f"{16 * d}): {mism}  (torch on CUDA divides by a Python-float scale as x * (1/s), "
        "the kernel and the CPU reference divide correctly rounded)")


GRAM_EXTRA = ((32 * 257, 1280), (32 * 257, 5120), (32 * 197, 3072))  # ViT-H/14 tokens, fc2 inputs


def gram_shapes():
    shapes = [(n_tok, d) for n_tok in TOKENS for d in MODELS.values()]
    return shapes + [s for s in GRAM_EXTRA if s not in shapes]


def bench_gram(meta, records, args):
    """Every backend of gram_update against the eager reference, per shape and quantizer."""
    from erq_kernels import gram, gram_graph, gram_int8, reference
    from bench_fakequant import warm_up_gpu
    backends = {"triton": gram.gram_update, "int8": gram_int8.gram_update,
                "graph": gram_graph.gram_update}
    warm_up_gpu()  # the first shape must not run at idle clocks
    gen = torch.Generator(device=DEV).manual_seed(4)
    print(f"\n{'N':>7s} {'D':>5s} {'quant':7s} {'backend':7s} {'ms':>9s} {'torch ms':>9s} "
          f"{'speed-up':>9s} {'TFLOP/s':>8s} {'GB/s':>7s} {'err ata':>9s} {'err atx':>9s} "
          f"{'err torch':>9s}", flush=True)
    for n_tok, d in gram_shapes():
        x = torch.randn(n_tok, d, device=DEV, generator=gen) * 1.5 + 0.2
        for mode in (("tensor", "channel", "none") if n_tok == TOKENS[0] or d == 768
                     else ("tensor",)):
            scale, zero, qmax = quantizer(mode, x)
            if isinstance(zero, torch.Tensor):
                # as erq_kernels.gram_prepare in the pipeline: one synchronization for all
                # calls instead of one per call to learn whether the zero points are integers
                gram_int8.prime([zero])
            rbufs = [torch.zeros(d + 1, d + 1, device=DEV), torch.zeros(d + 1, d + 1, device=DEV),
                     torch.zeros(d + 1, device=DEV)]
            reference.gram_update(x, *rbufs, scale, zero, qmax)
            ra, rx = fp64_stats(x, scale, zero, qmax)
            e_t = rel(rbufs[0], ra)
            r_ms = bench_ms(lambda: reference.gram_update(x, *rbufs, scale, zero, qmax), args.rep)
            fl = 4.0 * (d + 1) ** 2 * n_tok  # A^T A and A^T X~ as the two GEMMs count them
            for name, fn in backends.items():
                if name in ("int8", "graph") and mode == "none":
                    continue  # no quantizer: the int8 path hands the call to the Triton kernel
                bufs = [torch.zeros_like(b) for b in rbufs]
                fn(x, *bufs, scale, zero, qmax)
                e_a, e_x = rel(bufs[0], ra), rel(bufs[1], rx)
                k_ms = bench_ms(lambda: fn(x, *bufs, scale, zero, qmax), args.rep)
                gbs = x.numel() * x.element_size() / k_ms / 1e6
                records.append({"op": "gram_update", "shape": f"{n_tok}x{d}", "batch": n_tok,
                                "n": d + 1, "quant": mode, "backend": name, "ms": k_ms,
                                "eager_ms": r_ms, "speedup": r_ms / k_ms,
                                "tflops_nominal": fl / k_ms / 1e9, "gbs": gbs,
                                "max_error": max(e_a, e_x), "torch_error": e_t, **meta})
                print(f"{n_tok:7d} {d:5d} {mode:7s} {name:7s} {k_ms:9.3f} {r_ms:9.3f} "
                      f"{r_ms / k_ms:8.2f}x {fl / k_ms / 1e9:8.1f} {gbs:7.0f} {e_a:9.1e} "
                      f"{e_x:9.1e} {e_t:9.1e}", flush=True)
                del bufs
            if mode != "none":
                bench_exact(x, scale, zero, qmax, ra, rx, r_ms, fl, n_tok, d, mode, meta,
                            records, args)
            del rbufs, ra, rx
        del x
        torch.cuda.empty_cache()


def bench_exact(x, scale, zero, qmax, ra, rx, r_ms, fl, n_tok, d, mode, meta, records, args):
    """``gram_update(exact=True)``: its definition (torch, fp64 products) against the int8
    path, directly and replayed from a CUDA graph, which must give the same bits."""
    from erq_kernels import gram_exact, gram_graph, gram_int8
    ebufs = [torch.zeros(d + 1, d + 1, device=DEV), torch.zeros(d + 1, d + 1, device=DEV),
             torch.zeros(d + 1, device=DEV)]
    gram_exact.gram_update(x, *ebufs, scale, zero, qmax)
    e_ms = bench_ms(lambda: gram_exact.gram_update(x, *ebufs, scale, zero, qmax), args.rep)
    for name, fn in (("int8", gram_int8.gram_update_exact),
                     ("graph", gram_graph.gram_update_exact)):
        ibufs = [torch.zeros_like(b) for b in ebufs]
        ref = [torch.zeros_like(b) for b in ebufs]
        gram_exact.gram_update(x, *ref, scale, zero, qmax)
        fn(x, *ibufs, scale, zero, qmax)
        same = all(torch.equal(a, b) for a, b in zip(ref, ibufs))
        e_a, e_x = rel(ibufs[0], ra), rel(ibufs[1], rx)
        i_ms = bench_ms(lambda: fn(x, *ibufs, scale, zero, qmax), args.rep)
        records.append({"op": "gram_update_exact", "shape": f"{n_tok}x{d}", "batch": n_tok,
                        "n": d + 1, "quant": mode, "backend": name, "ms": i_ms,
                        "exact_reference_ms": e_ms, "eager_ms": r_ms,
                        "speedup_vs_exact_reference": e_ms / i_ms, "speedup": r_ms / i_ms,
                        "tflops_nominal": fl / i_ms / 1e9, "max_error": max(e_a, e_x),
                        "bit_identical": same, **meta})
        print(f"{n_tok:7d} {d:5d} {mode:7s} {'exact/' + name:11s} {i_ms:9.3f} {r_ms:9.3f} "
              f"{r_ms / i_ms:8.2f}x   exact reference {e_ms:8.3f} ms ({e_ms / i_ms:.1f}x), "
              f"same bits: {same}", flush=True)
        del ibufs, ref
    del ebufs


def tune_gram(args):
    from erq_kernels import gram
    gen = torch.Generator(device=DEV).manual_seed(5)
    configs = [("tf32x3", 64, 32, 4, None), ("tf32x3", 64, 32, 4, 2), ("tf32x3", 64, 32, 4, 4),
               ("tf32x3", 64, 16, 4, 4), ("ieee", 64, 32, 4, None), ("ieee", 64, 32, 4, 2),
               ("ieee", 64, 16, 8, None), ("ieee", 64, 16, 4, 4), ("ieee", 32, 32, 4, None)]
    for n_tok, d in TUNE_GRAM:
        x = torch.randn(n_tok, d, device=DEV, generator=gen)
        scale, zero, qmax = quantizer("tensor", x)
        bufs = [torch.zeros(d + 1, d + 1, device=DEV), torch.zeros(d + 1, d + 1, device=DEV),
                torch.zeros(d + 1, device=DEV)]
        res = []
        for prec, bt, bk, nw, ns in configs:
            name = f"{prec}/{bt}/{bk}/w{nw}/s{ns or '-'}"
            try:
                ms = bench_ms(lambda: gram.gram_update(x, *bufs, scale, zero, qmax, precision=prec,
                                                       bt=bt, bk=bk, num_warps=nw, num_stages=ns),
                              40)
                res.append(f"{name}: {ms:.3f}")
            except Exception as exc:  # report and go on: a config may not compile
                res.append(f"{name}: FAILED {type(exc).__name__}")
        cfg = gram.launch_config(n_tok, d, x.device)
        log(f"tune gram N={n_tok} D={d} (split {cfg['split']}): " + ", ".join(res))
        del x, bufs
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------

def write_dispatch(rounding_recs, gram_recs):
    """Winner per measured shape for rounding_refine and gram_update (other ops untouched)."""
    path = ROOT / "erq_kernels" / "dispatch_table.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    for op, recs in (("rounding_refine", rounding_recs), ("gram_update", gram_recs),
                     ("gram_update_exact", gram_recs)):
        entries = {}
        for r in recs:
            if r.get("op") != op or r.get("n") is None:
                continue
            if op.startswith("gram_update") and r.get("quant") != "tensor":
                continue
            ref_ms = r["exact_reference_ms"] if op == "gram_update_exact" else r["eager_ms"]
            e = entries.setdefault((r["batch"], r["n"]), {
                "batch": r["batch"], "n": r["n"], "nrhs": None,
                "ms": {"reference": round(ref_ms, 4)}})
            e["ms"][r.get("backend", "triton")] = round(r["ms"], 4)
        for e in entries.values():
            e["backend"] = min(e["ms"], key=e["ms"].get)
        if entries:  # measured shapes replace their old records; others stay
            old = {(r["batch"], r["n"]): r for r in table.get(op, [])}
            old.update(entries)
            table[op] = [old[k] for k in sorted(old)]
    path.write_text(json.dumps(table, indent=1) + "\n")
    log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--write-dispatch", action="store_true")
    ap.add_argument("--from-json", default=None,
                    help="directory with rounding.json and gram.json: only rewrite the table")
    ap.add_argument("--tune", action="store_true", help="print block-size sweeps first")
    ap.add_argument("--only", choices=("rounding", "gram"), default=None)
    ap.add_argument("--fc2", action="store_true",
                    help="rounding at the fc2 shapes (n = 4d + 1, O = d) instead of O = 3n")
    ap.add_argument("--rep", type=float, default=60.0, help="do_bench rep (ms) per shape")
    args = ap.parse_args()
    if args.from_json:
        d = Path(args.from_json)
        write_dispatch(json.loads((d / "rounding.json").read_text()),
                       json.loads((d / "gram.json").read_text()))
        return
    import triton
    torch.backends.cuda.matmul.allow_tf32 = False
    meta = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    log("device", meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rr, gr = [], []
    want_r, want_g = args.only in (None, "rounding"), args.only in (None, "gram")
    steps = [(want_g, gram_check), (want_r and args.tune, lambda: tune_rounding(args)),
             (want_g and args.tune, lambda: tune_gram(args)),
             (want_r, lambda: bench_rounding(meta, rr, args)),
             (want_g, lambda: bench_gram(meta, gr, args))]
    failed = False
    for wanted, fn in steps:
        if not wanted:
            continue
        try:  # one failing part must not cost the others' numbers
            fn()
        except Exception:
            failed = True
            traceback.print_exc()
            sys.stdout.flush()
        if rr:
            (out / "rounding.json").write_text(json.dumps(rr, indent=1) + "\n")
        if gr:
            (out / "gram.json").write_text(json.dumps(gr, indent=1) + "\n")
    if args.write_dispatch:
        write_dispatch(rr, gr)
    log("done" + (" WITH FAILURES (see tracebacks above)" if failed else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
