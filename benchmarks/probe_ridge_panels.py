"""What the ridge solve of ``triton_rec`` pays for its refined panels, and what it gains in error.

For every shape of issue 4 (or ``--shapes``), in one run: the ridge solve (3n right-hand sides,
lambda 0.01, the benchmark's Gram matrices of condition about 100) under each setting of
``VARIANTS`` (``cholesky_rec.REFINE["ridge_solve"]`` and the precision of the products), timed
as the dispatcher runs it at that size (the CUDA-graph replay where the graph helper takes the
call, else eager), with its normwise error against fp64 next to the error of torch's
``cholesky_ex + 2 solve_triangular`` on the same inputs; then the same errors on
ill-conditioned matrices (``--cond``, lambda 0) at the smaller shapes.

    python benchmarks/probe_ridge_panels.py --out DIR [--shapes 36x193 12x769] [--cond 1e5]
        [--variants "refined (default)" "plain panels"] [--name probe_ridge_panels]

(Without CUDA it runs on the CPU, for a dry run of the logic under ``TRITON_INTERPRET=1``.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_linalg as BL  # noqa: E402

from erq_kernels import linalg_graph  # noqa: E402
from erq_kernels._dispatch import _IMPLS  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BL.DEV = DEV

VARIANTS = {
    "refined (default)": {},
    "plain panels": {"REFINE": {"ridge_solve": False}},
    "plain, solve ieee": {"REFINE": {"ridge_solve": False}, "SOLVE_PREC": "ieee"},
    "plain, factor ieee": {"REFINE": {"ridge_solve": False}, "PREC": "ieee"},
    "plain, all ieee": {"REFINE": {"ridge_solve": False}, "PREC": "ieee", "SOLVE_PREC": "ieee"},
    "refined, solve ieee": {"SOLVE_PREC": "ieee"},
}


def ill_gram(batch, n, cond, gen):
    """SPD matrices with eigenvalues spread log-uniformly over ``[1 / cond, 1]``."""
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, device=DEV, generator=gen,
                                       dtype=torch.float64))
    ev = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, device=DEV,
                        dtype=torch.float64)
    return ((q * ev) @ q.mT).float()


def torch_two_trsm(g, b, lam):
    return BL.torch_candidates("ridge_solve", g, b, lam)["torch.cholesky_ex+2solve_triangular"]()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", nargs="*", default=[f"{b}x{n}" for b, n in BL.SHAPES])
    ap.add_argument("--cond", type=float, default=1e5)
    ap.add_argument("--cond-max-n", type=int, default=1025)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--name", default="probe_ridge_panels", help="the JSON file's name")
    args = ap.parse_args()
    RC = BL.rec_kernels()
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    print(card, torch.__version__, triton.__version__, flush=True)
    defaults = {k: getattr(RC, k) for k in ("REFINE", "PREC", "SOLVE_PREC")}
    defaults["REFINE"] = dict(defaults["REFINE"])
    records = []
    out_dir = Path(args.out)
    ridge = _IMPLS["ridge_solve"]["triton_rec_graph"]  # eager above the graphs' size limit
    for shape in args.shapes:
        batch, n = map(int, shape.split("x"))
        gen = torch.Generator(device=DEV).manual_seed(batch * 10007 + n)
        g = BL.make_gram(batch, n, gen)
        b = torch.randn(batch, n, 3 * n, device=DEV, generator=gen)
        lam = 0.01
        k = min(batch, 2 if n > 2048 else 4)
        ref = BL.fp64_reference("ridge_solve", g, b, lam, k)
        t_torch = BL.timeit(lambda: torch_two_trsm(g, b, lam))
        e_torch = BL.rel(torch_two_trsm(g, b, lam)[:k], ref)
        ill = None
        if n <= args.cond_max_n:
            gi = ill_gram(k, n, args.cond, gen)
            bi = b[:k].clone()
            # lambda 0: any shift would bound the condition number by 1 / lambda
            ref_i = torch.linalg.solve(gi.double(), bi.double())
            ill = (gi, bi, ref_i, BL.rel(torch_two_trsm(gi, bi, 0.0), ref_i))
        print(f"\nridge_solve {shape}: torch cholesky_ex+2solve_triangular {t_torch:.3f} ms, "
              f"err {e_torch:.2e}" + (f"; cond {args.cond:.0e}: err {ill[3]:.2e}" if ill else ""),
              flush=True)
        for name in args.variants:
            setting = VARIANTS[name]
            cfg = dict(setting)
            cfg["REFINE"] = {**defaults["REFINE"], **setting.get("REFINE", {})}
            BL.apply(RC, {**defaults, **cfg})
            try:
                out = ridge(g, b, lam)[0]
                out = ridge(g, b, lam)[0]  # the graph's capture (later calls replay)
                if DEV == "cuda":
                    torch.cuda.synchronize()
                err = BL.rel(out[:k], ref)
                ms = BL.timeit(lambda: ridge(g, b, lam))
                rec = {"batch": batch, "n": n, "variant": name, "settings": cfg, "ms": ms,
                       "speedup": t_torch / ms, "err": err, "err_vs_torch": err / e_torch,
                       "torch_ms": t_torch, "torch_err": e_torch, "card": card,
                       "torch": torch.__version__, "triton": triton.__version__}
                line = (f"  {name:22s} {ms:9.3f} ms  {t_torch / ms:5.2f}x torch  err {err:.2e} "
                        f"({err / e_torch:4.2f}x torch's)")
                if ill:
                    gi, bi, ref_i, e_ti = ill
                    xi = _IMPLS["ridge_solve"]["triton_rec"](gi, bi, 0.0)[0]
                    rec["ill_err_vs_torch"] = BL.rel(xi, ref_i) / e_ti
                    line += f"  cond {args.cond:.0e}: {rec['ill_err_vs_torch']:4.2f}x torch's"
                print(line, flush=True)
                records.append(rec)
            except Exception as e:  # one failing setting does not lose the others
                print(f"  {name:22s} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            finally:
                BL.apply(RC, defaults)
                linalg_graph.clear()
        # written after every shape: a run cut short by its time limit keeps what it measured
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{args.name}.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
