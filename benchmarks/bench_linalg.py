"""Benchmark of the batched linear algebra of erq_kernels against torch.linalg (GPU).

Usage: ``python benchmarks/bench_linalg.py --out DIR [--write-dispatch] [--quick] [--tune]``.
Checks correctness first (fp64 residuals on a few matrices of every shape), then times each
shape: the Cholesky factorization against ``torch.linalg.cholesky_ex``, the ridge solve with
``3n`` right-hand sides against the fastest of ``linalg.solve``, ``cholesky_ex +
cholesky_solve`` and ``cholesky_ex + two solve_triangular``, and the inverse factor against
``cholesky + cholesky_inverse + cholesky(upper)`` and the reference's flip/cholesky/inverse.
Each also against a loop of single-matrix calls (``torch_loop``); the speed-ups are over the
fastest of all of these (torch's best, the loop included). Both Triton algorithms are
timed: the blocked one (``triton``, erq_kernels/cholesky.py) and the recursive one
(``triton_rec``, erq_kernels/cholesky_rec.py). Writes ``DIR/linalg.json``;
``--write-dispatch`` records the fastest backend per shape in ``erq_kernels/dispatch_table.json``
(``--from-json FILE`` does that from an earlier run without a GPU).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(36, 193), (12, 769), (36, 385), (12, 1537), (36, 769), (12, 3073), (72, 1025),
          (24, 4097), (96, 1281), (32, 5121)]
TUNE_SHAPES = [(12, 769), (36, 385), (12, 3073)]
SELF_SHAPES = [(3, 97), (2, 300)]
OPS = ("cholesky", "ridge_solve", "inverse_cholesky_upper")
T0 = time.time()
DEV = "cuda"


def kernels():
    """The module erq_kernels.cholesky (the package attribute of that name is the function)."""
    return importlib.import_module("erq_kernels.cholesky")


def rec_kernels():
    """The module erq_kernels.cholesky_rec (the recursive algorithm, backend ``triton_rec``)."""
    return importlib.import_module("erq_kernels.cholesky_rec")


# Settings of the recursive path timed per shape ({}: the module's default): GEMM tiles
# (BM, BN, BK, warps, stages) of the large products. The record of the backend is the default
# setting, the one the library runs; the others are kept in its "sweep".
REC_CONFIGS = [{}, {"BIG": (128, 128, 32, 8, 3)}, {"CLEAN_TRI": False},
               {"SOLVE_BIG": (128, 128, 32, 8, 3)}, {"SOLVE_BIG": (128, 128, 64, 8, 3)},
               {"SOLVE_PREC": "ieee"}, {"STRIP_BLOCKS": 1}, {"LEAF_QUARTERS": False},
               # every op with the other panel method (cholesky_rec.REFINE)
               {"REFINE": {"cholesky": True, "ridge_solve": False, "inverse_cholesky_upper": True}}]
TRITON_BACKENDS = ("triton", "triton_rec", "triton_graph", "triton_rec_graph")
GRAPHED_TORCH = "graphed_torch"  # the fastest torch composition replayed from a CUDA graph


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def flops(op: str, n: int, nrhs: int, batch: int) -> float:
    f = {"cholesky": n ** 3 / 3, "ridge_solve": n ** 3 / 3 + 2 * n * n * nrhs,
         "inverse_cholesky_upper": 2 * n ** 3 / 3}[op]
    return f * batch


def timeit(fn, budget_ms: float = 400.0) -> float:
    """Median ms of ``fn``: ``triton.testing.do_bench`` for short calls, else a few
    event-timed calls (a 1-second call would make do_bench run for a minute)."""
    import triton
    if DEV == "cpu":  # dry run of the script logic (TRITON_INTERPRET=1)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    est = s.elapsed_time(e)
    if est < 25:
        return triton.testing.do_bench(fn, warmup=min(25, 3 * est + 1),
                                       rep=max(4 * est, min(budget_ms, 100)),
                                       return_mode="median")
    if est > budget_ms:  # one more call would not change the picture much
        return est
    reps = int(max(1, min(5, budget_ms // est)))
    ts = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def make_gram(batch: int, n: int, gen) -> torch.Tensor:
    """Gram-like SPD matrices ``X X^T / n + 0.05 I`` (condition number about 100)."""
    x = torch.randn(batch, n, n, device=DEV, generator=gen)
    g = torch.empty(batch, n, n, device=DEV)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    for i in range(0, batch, 8):
        torch.bmm(x[i:i + 8], x[i:i + 8].mT, out=g[i:i + 8])
    torch.backends.cuda.matmul.allow_tf32 = prev
    g.div_(n).diagonal(dim1=-2, dim2=-1).add_(0.05)
    return g


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-matrix normwise relative error."""
    d = (x.double() - ref).flatten(-2).norm(dim=-1) / ref.flatten(-2).norm(dim=-1)
    return float(d.max())


def torch_candidates(op, g, b, lam):
    """The torch.linalg compositions that compute ``op`` (name -> callable)."""
    import erq_kernels.reference as R
    if op == "cholesky":
        return {"torch.cholesky_ex": lambda: torch.linalg.cholesky_ex(R.add_diagonal(g, lam))}
    if op == "ridge_solve":
        def two_trsm():
            L, _ = torch.linalg.cholesky_ex(R.add_diagonal(g, lam))
            y = torch.linalg.solve_triangular(L, b, upper=False)
            return torch.linalg.solve_triangular(L.mT, y, upper=True)

        def chol_solve():
            L, _ = torch.linalg.cholesky_ex(R.add_diagonal(g, lam))
            return torch.cholesky_solve(b, L)
        return {"torch.cholesky_ex+2solve_triangular": two_trsm,
                "torch.cholesky_ex+cholesky_solve": chol_solve,
                "torch.linalg.solve": lambda: torch.linalg.solve(R.add_diagonal(g, lam), b)}

    def gptq_style():
        L = torch.linalg.cholesky(R.add_diagonal(g, lam))
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    return {"torch.cholesky+cholesky_inverse+cholesky_upper": gptq_style,
            "torch.flip+cholesky_ex+solve_triangular": lambda: R.inverse_cholesky_upper(g, lam)[0]}


def graphed(fn):
    """``fn`` (no arguments, fixed inputs) captured in a CUDA graph: a callable that replays it
    and returns the graph's outputs (overwritten by the next replay)."""
    from erq_kernels import _graphs
    graph, out = _graphs.capture(torch.device(DEV, torch.cuda.current_device()), fn, fn)

    def replay():
        graph.replay()
        return out
    return replay


def fp64_reference(op, g, b, lam, k):
    """What the first ``k`` outputs are compared with (fp64)."""
    import erq_kernels.reference as R
    gd = g[:k].double() + lam * torch.eye(g.shape[-1], dtype=torch.float64, device=g.device)
    if op == "cholesky":
        return gd
    if op == "ridge_solve":
        return torch.linalg.solve(gd, b[:k].double())
    return R.inverse_cholesky_upper(gd, None)[0]


def check_error(op, out, ref):
    """Normwise error against fp64: ``||L L^T - A|| / ||A||`` for the factor, else
    ``||out - ref|| / ||ref||``."""
    k = ref.shape[0]
    if op == "cholesky":
        L = out[:k].double()
        return rel(L @ L.mT, ref)
    return rel(out[:k], ref)


def triton_configs(op, n):
    """Launch configurations of ``triton`` timed per shape (the module's overrides); the first,
    ``{}``, is the module's default and gives the backend's record, the others its "sweep"."""
    # The first H200 run also timed NB=128 (7-20x slower, 40-130 s to compile) and 1 or 2
    # diagonal warps (slower at both measured shapes); they are left out to fit the time budget.
    return [{}] if op == "cholesky" else [{}, {"TRSM_BN": 128}]


def apply(module, settings):
    """Set module-level settings (dict values copied: a sweep entry must not be changed)."""
    for key, value in settings.items():
        setattr(module, key, dict(value) if isinstance(value, dict) else value)


def set_config(C, cfg):
    for key in ("CHOL_NB", "DIAG_WARPS", "TRSM_BN"):
        setattr(C, key, cfg.get(key))


def bench_shape(batch, n, meta, records, args):
    from erq_kernels import _dispatch
    gen = torch.Generator(device=DEV).manual_seed(batch * 10007 + n)
    g = make_gram(batch, n, gen)
    lam = 0.01
    nrhs = 3 * n
    kcheck = 2 if n > 2048 else 4
    C = kernels()
    for op in OPS:
        b = torch.randn(batch, n, nrhs, device=DEV, generator=gen) if op == "ridge_solve" \
            else None
        fl = flops(op, n, nrhs if b is not None else 0, batch)
        ref = fp64_reference(op, g, b, lam, kcheck)
        rows = []

        def record(backend, fn, config=None):
            out = fn()
            if backend.endswith("_graph"):
                out = fn()  # the capture: kept out of the timing (later calls replay)
            if DEV == "cuda":
                torch.cuda.synchronize()
            err = check_error(op, out[0] if isinstance(out, tuple) else out, ref)
            ms = timeit(fn, args.budget_ms)
            row = {"op": op, "batch": batch, "n": n, "nrhs": nrhs if b is not None else None,
                   "backend": backend, "ms": ms, "tflops": fl / ms / 1e9, "max_rel_err": err,
                   **meta}
            if config is not None:
                row["config"] = dict(config)
            del out
            log(f"  {op:24s} {batch:3d}x{n:<5d} {backend:48s} {ms:9.3f} ms "
                f"{fl / ms / 1e9:7.2f} TFLOP/s  err {err:.2e}" + (f"  {config}" if config else ""))
            return row

        args_ = (g, b, lam) if b is not None else (g, lam)
        impl = _dispatch._IMPLS[op]
        graph_eligible = importlib.import_module("erq_kernels.linalg_graph").eligible(
            [g] if b is None else [g, b])
        # Triton: the default launch configuration is the "triton" record, the others its sweep
        sweep = []
        for cfg in triton_configs(op, n):
            set_config(C, cfg)
            sweep.append(record("triton", lambda: impl["triton"](*args_), cfg))
        set_config(C, {})
        tri_row = sweep[0]
        tri_row["sweep"] = [[r["config"], round(r["ms"], 4)] for r in sweep]
        rows.append(tri_row)
        RK = rec_kernels()
        defaults = {"BIG": RK.BIG, "SOLVE_BIG": RK.SOLVE_BIG, "SOLVE_PREC": RK.SOLVE_PREC,
                    "CLEAN_TRI": RK.CLEAN_TRI, "REFINE": dict(RK.REFINE),
                    "STRIP_BLOCKS": RK.STRIP_BLOCKS, "LEAF_QUARTERS": RK.LEAF_QUARTERS}
        sweep = []
        for cfg in REC_CONFIGS:
            if any(key.startswith("SOLVE") for key in cfg) and op != "ridge_solve":
                continue  # only the ridge solve has those products
            if "STRIP_BLOCKS" in cfg and defaults["REFINE"][op]:
                continue  # the refined panels have no strips
            apply(RK, {**defaults, **cfg})
            try:
                sweep.append(record("triton_rec", lambda: impl["triton_rec"](*args_), cfg))
            except Exception as e:  # a tile that does not fit the card's shared memory, say
                if not cfg:
                    raise
                log(f"  {op} {batch}x{n}: triton_rec {cfg} failed: {type(e).__name__}: "
                    f"{str(e)[:100]}")
            finally:
                apply(RK, defaults)
        rec_row = sweep[0]
        rec_row["sweep"] = [[r["config"], round(r["ms"], 4), r["max_rel_err"]] for r in sweep]
        rows.append(rec_row)
        # the two replayed from CUDA graphs (captured at their second call, inside record);
        # above the graphs' size limit they would time their eager backends again: left out
        for name in ("triton_graph", "triton_rec_graph") if graph_eligible else ():
            rows.append(record(name, lambda name=name: impl[name](*args_)))
        cands = torch_candidates(op, g, b, lam)
        for name, fn in cands.items():
            if args.skip_slow and name == "torch.cholesky_ex+cholesky_solve" and n > 2048:
                log(f"  {op} {batch}x{n}: skipping {name} (ANCHORS: 7x slower than two "
                    "solve_triangular; too slow for the time budget)")
                continue
            rows.append(record(name, fn))
        rows.append(record("torch_loop", lambda: impl["torch_loop"](*args_)))
        # the baseline: the fastest torch composition, the loop of single-matrix calls included
        best_torch = min(r["ms"] for r in rows if r["backend"].startswith("torch"))
        # For comparison only (not the baseline): the fastest composition without its host
        # cost, replayed from a graph, as a user could do with torch alone
        comp = min((r for r in rows if r["backend"].startswith("torch.")), key=lambda r: r["ms"])
        try:  # lambda as a device tensor: a Python number is copied from the host each call
            lam_t = torch.full((batch,), lam, device=DEV)
            replay = graphed(torch_candidates(op, g, b, lam_t)[comp["backend"]])
            rows.append(record(GRAPHED_TORCH, replay, {"composition": comp["backend"]}))
        except Exception as e:  # a composition that synchronizes cannot be captured
            log(f"  {op} {batch}x{n}: {comp['backend']} not capturable: {type(e).__name__}: "
                f"{str(e)[:100]}")
        for r in rows:
            r["speedup"] = best_torch / r["ms"]
        records.extend(rows)
        for name in TRITON_BACKENDS:
            tri = next((r for r in rows if r["backend"] == name), None)
            if tri is None:
                continue
            log(f"  => {op} {batch}x{n}: {name} {tri['ms']:.3f} ms, best torch.linalg "
                f"{best_torch:.3f} ms, speed-up {tri['speedup']:.2f}x")
        del b, ref
        torch.cuda.empty_cache()


def selfcheck():
    """GPU correctness of every op and case on small awkward sizes (fp64 references);
    returns False if anything is off."""
    C = kernels()
    ok = True
    gen = torch.Generator(device=DEV).manual_seed(7)
    for batch, n in SELF_SHAPES:
        g = make_gram(batch, n, gen).double()
        L = torch.linalg.cholesky(g)
        b = torch.randn(batch, n, 2 * n + 5, device=DEV, dtype=torch.float64, generator=gen)
        for upper in (False, True):
            t = L.mT if upper else L
            for left in (True, False):
                bb = b if left else b.mT
                x = C.solve_triangular(t.float(), bb.float(), upper=upper, left=left)
                xt = torch.linalg.solve_triangular(t.float(), bb.float(), upper=upper, left=left)
                xr = torch.linalg.solve_triangular(t, bb, upper=upper, left=left)
                e, et = rel(x[None], xr[None]), rel(xt[None], xr[None])
                ok &= e <= 2 * et + 1e-7
                log(f"  selfcheck solve_triangular {batch}x{n} upper={upper} left={left}: "
                    f"err {e:.2e} (torch fp32 {et:.2e})")
            xi = C.triangular_inverse(t.float(), upper=upper)
            e = rel(xi[None], torch.linalg.inv(t)[None])
            ok &= e < 1e-5
            log(f"  selfcheck triangular_inverse upper={upper}: err {e:.2e}")
        lam = torch.rand(batch, device=DEV, dtype=torch.float64, generator=gen)
        Lt, info = C.cholesky(g.float(), lam.float())
        gl = g + lam[:, None, None] * torch.eye(n, device=DEV, dtype=torch.float64)
        e = rel((Lt.double() @ Lt.double().mT)[None], gl[None])
        ok &= e < 1e-6 and int(info.abs().sum()) == 0 and float(Lt.triu(1).abs().max()) == 0
        log(f"  selfcheck cholesky per-matrix lam: residual {e:.2e}, info {info.tolist()}")
        x, info = C.ridge_solve(g.float(), b.float(), lam.float())
        xr = torch.linalg.solve(gl, b)
        e = rel(x[None], xr[None])
        ok &= e < 1e-4
        log(f"  selfcheck ridge_solve: err {e:.2e}")
        u, info = C.inverse_cholesky_upper(g.float(), 0.5)
        gi = torch.linalg.inv(g + 0.5 * torch.eye(n, device=DEV, dtype=torch.float64))
        e = rel((u.double().mT @ u.double())[None], gi[None])
        ok &= e < 1e-5 and float(u.tril(-1).abs().max()) == 0
        log(f"  selfcheck inverse_cholesky_upper: U^T U vs inverse err {e:.2e}")
        RK = rec_kernels()
        Lt, info = RK.cholesky(g.float(), lam.float())
        e = rel((Lt.double() @ Lt.double().mT)[None], gl[None])
        ok &= e < 1e-6 and int(info.abs().sum()) == 0 and float(Lt.triu(1).abs().max()) == 0
        x, _ = RK.ridge_solve(g.float(), b.float(), lam.float())
        e2 = rel(x[None], xr[None])
        ok &= e2 < 1e-4
        u, _ = RK.inverse_cholesky_upper(g.float(), 0.5)
        e3 = rel((u.double().mT @ u.double())[None], gi[None])
        ok &= e3 < 1e-5 and float(u.tril(-1).abs().max()) == 0
        log(f"  selfcheck triton_rec: cholesky residual {e:.2e}, ridge err {e2:.2e}, "
            f"inverse factor err {e3:.2e}")
        bad = g.clone()
        bad[0, n // 2, n // 2] = -1.0
        _, info = C.cholesky(bad.float())
        _, rinfo = RK.cholesky(bad.float())
        _, tinfo = torch.linalg.cholesky_ex(bad.float())
        ok &= info.tolist() == tinfo.tolist() == rinfo.tolist()
        log(f"  selfcheck info {info.tolist()} / rec {rinfo.tolist()} vs torch {tinfo.tolist()}")
    ok &= selfcheck_graphs(gen)
    log("SELFCHECK", "PASSED" if ok else "FAILED")
    return ok


def selfcheck_graphs(gen):
    """The ``*_graph`` backends return the eager backend's bits: at the first call (eager), at
    the capture, and at replays with new inputs, a new lambda and a per-matrix lambda."""
    from erq_kernels import _dispatch
    ok = True
    for batch, n in SELF_SHAPES:
        gs = [make_gram(batch, n, gen) for _ in range(2)]
        bs = [torch.randn(batch, n, 2 * n + 5, device=DEV, generator=gen) for _ in range(2)]
        lam_t = torch.rand(batch, device=DEV, generator=gen)
        calls = [(0, 0.01), (0, 0.01), (1, 0.3), (0, lam_t), (1, lam_t * 2), (1, 0.01)]
        for op in OPS:
            impl = _dispatch._IMPLS[op]
            for base in ("triton", "triton_rec"):
                same = True
                for i, lam in calls:
                    args_ = (gs[i], bs[i], lam) if op == "ridge_solve" else (gs[i], lam)
                    want = impl[base](*args_)
                    got = impl[base + "_graph"](*args_)
                    same &= all(torch.equal(x, y) for x, y in zip(got, want))
                ok &= same
                log(f"  selfcheck {op} {base}_graph {batch}x{n}: "
                    + ("bits of the eager backend" if same else "DIFFERS from the eager backend"))
    return ok


REFERENCE_OF = {"cholesky": "torch.cholesky_ex",
                "ridge_solve": "torch.cholesky_ex+2solve_triangular",
                "inverse_cholesky_upper": "torch.flip+cholesky_ex+solve_triangular"}


def write_dispatch(records):
    """Fastest available backend (triton, torch_loop, or the reference's own composition) per
    op and shape into erq_kernels/dispatch_table.json, leaving other ops' entries alone."""
    path = ROOT / "erq_kernels" / "dispatch_table.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    for op in OPS:
        shapes = sorted({(r["batch"], r["n"], r["nrhs"]) for r in records if r["op"] == op})
        entries = []
        for batch, n, nrhs in shapes:
            cand = {}
            for r in records:
                if (r["op"], r["batch"], r["n"], r["nrhs"]) != (op, batch, n, nrhs):
                    continue
                name = {**{t: t for t in TRITON_BACKENDS}, "torch_loop": "torch_loop",
                        REFERENCE_OF[op]: "reference"}.get(r["backend"])
                if name:
                    cand[name] = r["ms"]
            if cand:
                entries.append({"batch": batch, "n": n, "nrhs": nrhs,
                                "backend": min(cand, key=cand.get),
                                "ms": {k: round(v, 4) for k, v in cand.items()}})
        if entries:
            table[op] = entries
    path.write_text(json.dumps(table, indent=1) + "\n")
    log(f"wrote {path}")


def summary(records):
    """Per op and shape: every Triton backend and the fastest of them against the fastest torch
    composition of the same run (the loop included; the baseline), and against that composition
    replayed from a CUDA graph (for comparison); geometric means over the shapes."""
    print("\nop                       batch x n    triton  triton_rec  triton_graph  rec_graph"
          "  best torch  graphed torch  speed-up: eager best, best, best/graphed torch"
          "  TFLOP/s(best)  err(best)", flush=True)
    for op in OPS:
        sp_eager, sp_best, sp_graphed = [], [], []
        for batch, n in SHAPES:
            rs = [r for r in records if r["op"] == op and r["batch"] == batch and r["n"] == n]
            if not rs:
                continue
            tri = {r["backend"]: r for r in rs if r["backend"] in TRITON_BACKENDS}
            best = min(tri.values(), key=lambda r: r["ms"])
            eager = min((tri[k] for k in ("triton", "triton_rec")), key=lambda r: r["ms"])
            bt = min((r for r in rs if r["backend"].startswith("torch")), key=lambda r: r["ms"])
            gt = next((r for r in rs if r["backend"] == GRAPHED_TORCH), None)
            sp_eager.append(eager["speedup"])
            sp_best.append(best["speedup"])
            vs_graphed = gt["ms"] / best["ms"] if gt else float("nan")
            if gt:
                sp_graphed.append(vs_graphed)
            cols = "".join(f"{tri[k]['ms'] if k in tri else float('nan'):{w}.3f}"
                           for k, w in zip(TRITON_BACKENDS, (8, 12, 14, 11)))
            print(f"{op:24s} {batch:4d} x {n:<5d}{cols} {bt['ms']:11.3f} "
                  f"{gt['ms'] if gt else float('nan'):14.3f}   {eager['speedup']:6.2f}x "
                  f"{best['speedup']:6.2f}x {vs_graphed:6.2f}x  ({best['backend']:16s})"
                  f"{best['tflops']:9.2f}  {best['max_rel_err']:.1e}", flush=True)
        if sp_best:
            def gm(v):
                return math.exp(sum(math.log(s) for s in v) / len(v)) if v else float("nan")
            print(f"{op:24s} geometric-mean speed-up over {len(sp_best)} shapes: eager Triton "
                  f"{gm(sp_eager):.2f}x, fastest Triton {gm(sp_best):.2f}x (over graphed torch "
                  f"{gm(sp_graphed):.2f}x)", flush=True)


def tune(args):
    """Small sweep of the block sizes on a few shapes (results printed, nothing recorded)."""
    C = kernels()
    for batch, n in TUNE_SHAPES:
        gen = torch.Generator(device=DEV).manual_seed(1)
        g = make_gram(batch, n, gen)
        for dw in (4, 8):  # NB=128 is left out: minutes to compile, 7-20x slower (RESULTS)
            C.DIAG_WARPS = dw
            ms = timeit(lambda: C.cholesky(g, 0.01), 200)
            log(f"  tune cholesky {batch}x{n} diagonal warps={dw}: {ms:.3f} ms")
        C.DIAG_WARPS = None
        b = torch.randn(batch, n, 3 * n, device=DEV, generator=gen)
        for bn in (64, 128):
            C.TRSM_BN = bn
            ms = timeit(lambda: C.ridge_solve(g, b, 0.01), 300)
            log(f"  tune ridge {batch}x{n} BN={bn}: {ms:.3f} ms")
        C.TRSM_BN = None
        for prec in ("ieee", "tf32x3"):
            C.PREC = prec
            ms = timeit(lambda: C.ridge_solve(g, b, 0.01), 300)
            ms2 = timeit(lambda: C.cholesky(g, 0.01), 300)
            log(f"  tune {prec}: ridge {ms:.3f} ms, cholesky {ms2:.3f} ms")
        C.PREC = "tf32x3"
        del b, g
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--write-dispatch", action="store_true")
    ap.add_argument("--from-json", default=None, help="only rewrite the dispatch table")
    ap.add_argument("--quick", action="store_true", help="the four smallest shapes only")
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--budget-ms", type=float, default=400.0, help="timing budget per call")
    ap.add_argument("--no-skip-slow", dest="skip_slow", action="store_false")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="tiny shapes on the CPU through TRITON_INTERPRET=1 (script check)")
    ap.add_argument("--deadline-s", type=float, default=1e9,
                    help="skip the remaining shapes after this many seconds")
    args = ap.parse_args()
    if args.from_json:
        write_dispatch(json.loads(Path(args.from_json).read_text()))
        return
    import triton
    global DEV, SHAPES, TUNE_SHAPES, SELF_SHAPES
    if args.cpu_dry_run:
        DEV = "cpu"
        SHAPES, TUNE_SHAPES, SELF_SHAPES = [(2, 40), (1, 70)], [(2, 40)], [(2, 70)]
    torch.backends.cuda.matmul.allow_tf32 = False
    meta = {"card": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
            "torch": torch.__version__,
            "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    log("device", meta)
    records = []
    shapes = SHAPES[:4] if args.quick else SHAPES
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    selfcheck()
    if DEV == "cuda":  # clocks up before the first timing (a cold first shape ran 2x slow once)
        x = torch.randn(4096, 4096, device=DEV)
        t = time.time()
        while time.time() - t < 3.0:
            x = torch.tanh(x @ x)
        torch.cuda.synchronize()
    if args.tune:
        tune(args)
    for batch, n in shapes:
        if time.time() - T0 > args.deadline_s:
            log(f"deadline reached: shape {batch} x {n} NOT measured")
            continue
        log(f"shape {batch} x {n}")
        bench_shape(batch, n, meta, records, args)
        (out / "linalg.json").write_text(json.dumps(records, indent=1) + "\n")
    summary(records)
    if args.write_dispatch:
        write_dispatch(records)
    log("done")


if __name__ == "__main__":
    main()
