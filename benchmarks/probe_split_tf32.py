"""Probe: tf32x3 products done by cuBLAS on operands split beforehand into exact TF32 parts.

``x = hi + lo`` with ``hi`` and ``lo`` exactly representable in TF32 (``lo`` keeps the 13
bits ``hi`` drops, rounded to 11), so a TF32 tensor-core product of two parts is exact and
``hi_a hi_b + hi_a lo_b + lo_a hi_b`` is the tf32x3 product (relative error about 2^-21 per
term, as Triton's ``input_precision="tf32x3"``). This script asks whether cuBLAS running those
three TF32 GEMMs beats its own IEEE fp32 SGEMM at the shapes of ERQ's Gram statistics and of
a blocked Cholesky's updates, before any of it goes into the library. Prototype code in plain
torch, timings and errors against fp64; nothing here is used by the package.

    python benchmarks/probe_split_tf32.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

DEV = "cuda"


class _tf32:
    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.prev


def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 to the nearest TF32 value (ties away from zero), returned as fp32."""
    return ((x.view(torch.int32) + 0x1000) & -8192).view(torch.float32)


def split(x: torch.Tensor):
    hi = _round_tf32(x)
    return hi, _round_tf32(x - hi)


def ms_of(fn, reps=5) -> float:
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def bench(fn, budget_ms=200.0) -> float:
    est = ms_of(fn, 1)
    reps = int(max(3, min(50, budget_ms / max(est, 1e-3))))
    return ms_of(fn, reps)


def rel(x, ref) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------

def fake_quant(x, s, z, qmax):
    return (torch.clamp(torch.round(x / s) + z, 0, qmax) - z) * s


def gram_eager(x, s, z, qmax):
    a = fake_quant(x, s, z, qmax)
    with _tf32(False):
        return a.T @ a, a.T @ x


def gram_split(x, s, z, qmax):
    a = fake_quant(x, s, z, qmax)
    ah, al = split(a)
    xh, xl = split(x)
    d = x.shape[1]
    r = torch.cat([ah, al, xh, xl], 1)
    with _tf32(True):
        g = ah.T @ r
        g2 = al.T @ xh
    p = g[:, d:2 * d]
    return g[:, :d] + p + p.T, g[:, 2 * d:3 * d] + g[:, 3 * d:] + g2


def gram_case(gen, n, d):
    """Random ``X`` (N x D), a per-tensor 4-bit quantizer with a fractional zero point, and the
    fp64 statistics ``A^T A``, ``A^T X`` of its fake-quantized values."""
    x = torch.randn(n, d, device=DEV, generator=gen) * 1.5 + 0.2
    lo, hi = x.min().item(), x.max().item()
    s = torch.tensor((hi - lo) / 15, device=DEV)
    z = torch.tensor(-lo / s.item() + 0.37, device=DEV)
    a = fake_quant(x, s, z, 15)
    return x, s, z, a, a.double().T @ a.double(), a.double().T @ x.double()


def probe_gram(out, quick):
    shapes = [(6304, 192), (6304, 384), (6304, 768), (6304, 1280), (100864, 768),
              (100864, 1280), (8224, 5120)]
    if quick:
        shapes = shapes[:3]
    gen = torch.Generator(device=DEV).manual_seed(0)
    print(f"\n{'N':>7s} {'D':>5s} {'eager ms':>9s} {'split ms':>9s} {'ratio':>6s} "
          f"{'gemm-only sgemm':>15s} {'tf32':>7s} {'err eager':>9s} {'err split':>9s}")
    for n, d in shapes:
        x, s, z, a, ref_a, ref_x = gram_case(gen, n, d)
        ea, ex = gram_eager(x, s, z, 15)
        sa, sx = gram_split(x, s, z, 15)
        e_e = max(rel(ea, ref_a), rel(ex, ref_x))
        e_s = max(rel(sa, ref_a), rel(sx, ref_x))
        del ref_a, ref_x, ea, ex, sa, sx
        t_e = bench(lambda: gram_eager(x, s, z, 15))
        t_s = bench(lambda: gram_split(x, s, z, 15))
        with _tf32(False):
            t_g32 = bench(lambda: a.T @ a)
        with _tf32(True):
            t_gtf = bench(lambda: a.T @ a)
        fl = 2.0 * n * d * d
        print(f"{n:7d} {d:5d} {t_e:9.3f} {t_s:9.3f} {t_e / t_s:5.2f}x {fl / t_g32 / 1e9:12.1f}TF "
              f"{fl / t_gtf / 1e9:6.1f}TF {e_e:9.1e} {e_s:9.1e}", flush=True)
        out.append({"probe": "gram", "N": n, "D": d, "eager_ms": t_e, "split_ms": t_s,
                    "sgemm_tflops": fl / t_g32 / 1e9, "tf32_tflops": fl / t_gtf / 1e9,
                    "err_eager": e_e, "err_split": e_s})
        del x, a
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------

def split_mm(a, b):
    """a @ b in tf32x3 (batched), as one TF32 GEMM over the concatenated inner dimension."""
    ah, al = split(a)
    bh, bl = split(b)
    with _tf32(True):
        return torch.cat([ah, ah, al], -1) @ torch.cat([bh, bl, bh], -2)


def chol_blocked(a, nb, panel="trsm"):
    a = a.clone()
    n = a.shape[-1]
    info = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    for k0 in range(0, n, nb):
        k1 = min(n, k0 + nb)
        l11, inf = torch.linalg.cholesky_ex(a[:, k0:k1, k0:k1])
        info = torch.where((info == 0) & (inf > 0), inf + k0, info)
        a[:, k0:k1, k0:k1] = l11
        if k1 < n:
            with _tf32(False):
                if panel == "trsm":
                    l21 = torch.linalg.solve_triangular(l11.mT, a[:, k1:, k0:k1], upper=True,
                                                        left=False)
                else:
                    w = torch.linalg.solve_triangular(
                        l11, torch.eye(k1 - k0, device=a.device).expand_as(l11), upper=False)
                    l21 = split_mm(a[:, k1:, k0:k1], w.mT)
            a[:, k1:, k0:k1] = l21
            h, lo = split(l21)
            with _tf32(True):
                g = h @ torch.cat([h, lo], -2).mT
            m = n - k1
            p = g[:, :, m:]
            a[:, k1:, k1:] -= g[:, :, :m] + p + p.mT
    return a.tril(), info


def trsm_blocked(l, b, nb, transpose=False):
    """Solve L Y = B (or L^T Y = B) with diagonal blocks by torch and updates by split_mm."""
    y = b.clone()
    n = l.shape[-1]
    starts = list(range(0, n, nb))
    if transpose:
        starts = starts[::-1]
    for k0 in starts:
        k1 = min(n, k0 + nb)
        with _tf32(False):
            if not transpose:
                y[:, k0:k1] = torch.linalg.solve_triangular(l[:, k0:k1, k0:k1], y[:, k0:k1],
                                                            upper=False)
            else:
                y[:, k0:k1] = torch.linalg.solve_triangular(l[:, k0:k1, k0:k1].mT, y[:, k0:k1],
                                                            upper=True)
        if not transpose and k1 < n:
            y[:, k1:] -= split_mm(l[:, k1:, k0:k1], y[:, k0:k1])
        if transpose and k0 > 0:
            y[:, :k0] -= split_mm(l[:, k0:k1, :k0].mT, y[:, k0:k1])
    return y


def ridge_torch(g, b):
    with _tf32(False):
        l, info = torch.linalg.cholesky_ex(g)
        y = torch.linalg.solve_triangular(l, b, upper=False)
        return torch.linalg.solve_triangular(l.mT, y, upper=True)


def ridge_blocked(g, b, nb):
    l, _ = chol_blocked(g, nb)
    return trsm_blocked(l, trsm_blocked(l, b, nb), nb, transpose=True)


def probe_linalg(out, quick):
    shapes = [(36, 769), (12, 3073), (24, 4097), (32, 5121), (96, 1281), (72, 1025)]
    if quick:
        shapes = shapes[:2]
    gen = torch.Generator(device=DEV).manual_seed(1)
    print(f"\n{'op':10s} {'B x n':>10s} {'nb':>4s} {'torch ms':>9s} {'split ms':>9s} {'ratio':>6s}"
          f" {'err torch':>9s} {'err split':>9s}")
    for batch, n in shapes:
        x = torch.randn(batch, n, n + 64, device=DEV, generator=gen)
        with _tf32(False):
            g = x @ x.mT / (n + 64) + 0.05 * torch.eye(n, device=DEV)
        del x
        g64 = g[:2].double()
        l64 = torch.linalg.cholesky(g64)
        with _tf32(False):
            t_t = bench(lambda: torch.linalg.cholesky_ex(g))
            lt = torch.linalg.cholesky_ex(g)[0]
        e_t = rel(lt[:2], l64)
        del lt
        for nb in (256, 512):
            if nb >= n:
                continue
            for panel in ("trsm", "inv"):
                t_s = bench(lambda: chol_blocked(g, nb, panel))
                ls = chol_blocked(g, nb, panel)[0]
                e_s = rel(ls[:2], l64)
                del ls
                print(f"{'chol/' + panel:10s} {batch:4d}x{n:<5d} {nb:4d} {t_t:9.3f} {t_s:9.3f} "
                      f"{t_t / t_s:5.2f}x {e_t:9.1e} {e_s:9.1e}", flush=True)
                out.append({"probe": "cholesky", "panel": panel, "batch": batch, "n": n,
                            "nb": nb, "torch_ms": t_t, "split_ms": t_s, "err_torch": e_t,
                            "err_split": e_s})
        b = torch.randn(batch, n, 3 * n, device=DEV, generator=gen)
        x64 = torch.linalg.solve(g64, b[:2].double())
        t_t = bench(lambda: ridge_torch(g, b), budget_ms=2000)
        e_t = rel(ridge_torch(g, b)[:2], x64)
        for nb in (256, 512):
            if nb >= n:
                continue
            t_s = bench(lambda: ridge_blocked(g, b, nb), budget_ms=2000)
            e_s = rel(ridge_blocked(g, b, nb)[:2], x64)
            print(f"{'ridge':10s} {batch:4d}x{n:<5d} {nb:4d} {t_t:9.3f} {t_s:9.3f} "
                  f"{t_t / t_s:5.2f}x {e_t:9.1e} {e_s:9.1e}", flush=True)
            out.append({"probe": "ridge", "batch": batch, "n": n, "nb": nb, "torch_ms": t_t,
                        "split_ms": t_s, "err_torch": e_t, "err_split": e_s})
        del g, b, g64, l64, x64
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# int8 tensor cores: exact integer products (Ozaki-style slices for the real-valued operand)
# ---------------------------------------------------------------------------------------------

def slices(x, n_slices):
    """Columns of ``x`` ``(N, D)`` as int8 slices ``(n_slices, D, N)`` (transposed, K-major) and
    the power-of-two column scales: ``x ~= sigma * sum_t S_t 128^-t`` with ``|S_0| <= 127``."""
    amax = x.abs().amax(0).clamp_min(1e-30)
    sigma = torch.exp2(torch.ceil(torch.log2(amax / 127.0)))
    r = x / sigma
    out = []
    for _ in range(n_slices):
        q = torch.round(r)
        out.append(q.T.to(torch.int8))
        r = (r - q) * 128.0
    return torch.stack(out).contiguous(), sigma


def gram_int8(x, s, z, qmax, n_slices=3):
    """A^T A and A^T X for A = fake_quant(x) with a per-tensor (s, z), from int8 GEMMs."""
    r = torch.round(x / s)
    v = r + z
    lo, hi = v < 0, v > qmax
    zi = torch.round(z)
    zf = (z - zi).item()
    k = torch.where(lo, -zi, torch.where(hi, qmax - zi, r))
    km = torch.cat([k.T, (lo | hi).T.to(k.dtype)], 0).to(torch.int8).contiguous()  # 2D x N
    sx, sigma = slices(x, n_slices)
    d = x.shape[1]
    g = torch._int_mm(km, km.T).double()  # (2D, 2D)
    kk, km_, mm = g[:d, :d], g[:d, d:], g[d:, d:]
    ata = (kk - zf * (km_ + km_.T) + zf * zf * mm) * (s.double() ** 2)
    gx = torch._int_mm(km, sx.reshape(-1, x.shape[0]).T).double()  # (2D, n_slices * D)
    w = torch.tensor([128.0 ** -t for t in range(n_slices)], dtype=torch.float64,
                     device=x.device)
    gx = (gx.reshape(2 * d, n_slices, d) * w[None, :, None]).sum(1) * sigma.double()[None]
    atx = (gx[:d] - zf * gx[d:]) * s.double()
    return ata.float(), atx.float()


def probe_int8(out, quick):
    shapes = [(6304, 192), (6304, 384), (6304, 768), (6304, 1280), (100864, 768),
              (100864, 1280), (8224, 1280), (8224, 5120)]
    if quick:
        shapes = shapes[:3]
    gen = torch.Generator(device=DEV).manual_seed(0)
    print(f"\n{'N':>7s} {'D':>5s} {'sgemm TF':>9s} {'i8 DxD TOPS':>12s} {'i8 2Dx3D':>9s} "
          f"{'eager ms':>9s} {'int8 ms':>8s} {'ratio':>6s} {'err eager':>9s} {'err int8':>9s}")
    for n, d in shapes:
        x, s, z, a, ref_a, ref_x = gram_case(gen, n, d)
        ea, ex = gram_eager(x, s, z, 15)
        ia, ix = gram_int8(x, s, z, 15)
        e_e = max(rel(ea, ref_a), rel(ex, ref_x))
        e_i = max(rel(ia, ref_a), rel(ix, ref_x))
        del ref_a, ref_x, ea, ex, ia, ix
        k8 = torch.randint(-15, 16, (2 * d, n), device=DEV, dtype=torch.int8)
        s8 = torch.randint(-127, 128, (3 * d, n), device=DEV, dtype=torch.int8)
        with _tf32(False):
            t_g32 = bench(lambda: a.T @ a)
        t_i1 = bench(lambda: torch._int_mm(k8[:d], k8[:d].T))
        t_i6 = bench(lambda: torch._int_mm(k8, s8.T))
        t_e = bench(lambda: gram_eager(x, s, z, 15))
        t_i = bench(lambda: gram_int8(x, s, z, 15))
        fl = 2.0 * n * d * d
        print(f"{n:7d} {d:5d} {fl / t_g32 / 1e9:9.1f} {fl / t_i1 / 1e9:12.1f} "
              f"{6 * fl / t_i6 / 1e9:9.1f} {t_e:9.3f} {t_i:8.3f} {t_e / t_i:5.2f}x "
              f"{e_e:9.1e} {e_i:9.1e}", flush=True)
        out.append({"probe": "int8", "N": n, "D": d, "sgemm_tflops": fl / t_g32 / 1e9,
                    "int8_tops_dxd": fl / t_i1 / 1e9, "int8_tops_2dx3d": 6 * fl / t_i6 / 1e9,
                    "eager_ms": t_e, "int8_ms": t_i, "err_eager": e_e, "err_int8": e_i})
        del x, a, k8, s8
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["gram", "linalg", "int8"])
    ap.add_argument("--json")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__, time.strftime("%Y-%m-%d %H:%M"),
          flush=True)
    out = []
    if args.only in (None, "gram"):
        probe_gram(out, args.quick)
    if args.only in (None, "linalg"):
        probe_linalg(out, args.quick)
    if args.only == "int8":
        probe_int8(out, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "records": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
