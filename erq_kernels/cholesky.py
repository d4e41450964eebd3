"""Batched Cholesky, triangular solves and inverses, ridge solves and the inverse factor (Triton).

Every function computes what its namesake in :mod:`erq_kernels.reference` defines, for fp32
inputs (other dtypes fall back to the reference). Matrices are ``(..., n, n)``; the batch
dimensions are flattened to ``B``.

Algorithms (all products ``tl.dot`` with ``input_precision`` "ieee" or "tf32x3", never TF32):

* Cholesky: right-looking, blocked by ``NB`` (64; 128 is supported) so that small batches still fill the
  GPU. Per block column ``k``: one program per matrix factors the diagonal block (two halves,
  each by rank-1 updates in registers) and also forms its inverse ``W_k``; then the panel
  ``L_ik = A_ik W_k^T`` (one program per block row and matrix); then the trailing update
  ``A_ij -= L_ik L_jk^T`` over the lower tiles x batch. ``info`` is kept on the device.
* Triangular solves with many right-hand sides: one program per strip of ``BN`` columns and
  matrix runs blocked forward (and/or backward) substitution, ``Y_i = W_i (B_i - sum L_ij Y_j)``
  with ``W_i`` the inverted 64 x 64 diagonal blocks; the strips are independent, so no launch
  per block row is needed. The triangular inverse is the same kernel with ``B = I`` (skipping
  the zero rows above each strip).
* Ridge solve: Cholesky, then one launch that does both substitutions per strip.
* Inverse factor: Cholesky of ``J H J`` (reversed copy) and the inverse of its factor written
  through reversed strides, which is ``U = J M^-1 J``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _dispatch, reference
from ._limits import linalg_fits

__all__ = ["cholesky", "solve_triangular", "triangular_inverse", "ridge_solve",
           "inverse_cholesky_upper", "cholesky_workspace"]

# Precision of the large products (panel, trailing update, substitutions). The small products
# inside a diagonal block always use "ieee". Changing it recompiles the kernels.
PREC = "tf32x3"
_PANEL_ROWS = 64  # rows per program of the Cholesky panel
_SB = 64  # block size of the substitutions (size of the inverted diagonal blocks they use)


# ---------------------------------------------------------------------------------------------
# Register-tile building blocks
# ---------------------------------------------------------------------------------------------

@triton.jit
def _load_sym(ptr, s_r, s_c, nvalid, lam, H: tl.constexpr):
    """Full symmetric ``H x H`` tile from the lower triangle at ``ptr``, plus ``lam`` on the
    diagonal; rows/cols ``>= nvalid`` are padded with the identity so they never fail."""
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    inside = (rr < nvalid) & (cc < nvalid)
    lo = tl.load(ptr + rr * s_r + cc * s_c, mask=inside & (rr >= cc), other=0.0)
    up = tl.load(ptr + cc * s_r + rr * s_c, mask=inside & (rr < cc), other=0.0)
    a = lo + up
    return tl.where(rr == cc, tl.where(rr < nvalid, a + lam, 1.0), a)


@triton.jit
def _load_lower(ptr, s_r, s_c, nvalid, UNIT: tl.constexpr, H: tl.constexpr):
    """Lower triangle of an ``H x H`` tile (upper part zero), identity-padded past ``nvalid``."""
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    inside = (rr < nvalid) & (cc < nvalid)
    lo = tl.load(ptr + rr * s_r + cc * s_c, mask=inside & (rr >= cc), other=0.0)
    if UNIT:
        lo = tl.where(rr == cc, 1.0, lo)
    return tl.where((rr == cc) & (rr >= nvalid), 1.0, lo)


@triton.jit
def _factor_tile(a, out, s_r, s_c, nvalid, H: tl.constexpr):
    """Cholesky of the symmetric register tile ``a`` by ``H`` rank-1 updates.

    Column ``j`` of ``L`` is stored at ``out + r*s_r + j*s_c`` (zeros above the diagonal) for
    ``r, j < nvalid``. Returns ``(L^-1, first)``: the inverse as a register tile (built in the
    same loop, applying the inverse of each elementary column factor of ``L`` in turn) and the
    index of the first non-positive (or NaN) pivot, ``H`` if none.
    """
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    x = tl.where(rr == cc, 1.0, 0.0)
    first = tl.min(tl.full([H], H, tl.int32), axis=0)
    optr = out + r * s_r
    omask = r < nvalid
    # padded rows/columns (>= nvalid) are identity in a, L and L^-1: no step needed for them
    for j in range(0, nvalid):
        colj = tl.sum(tl.where(cc == j, a, 0.0), axis=1)
        piv = tl.sum(tl.where(r == j, colj, 0.0), axis=0)
        first = tl.minimum(first, tl.where(piv > 0.0, H, j))
        d = tl.sqrt(piv)
        lcol = tl.where(r >= j, colj / d, 0.0)
        tl.store(optr + j * s_c, lcol, mask=omask)
        a = a - lcol[:, None] * lcol[None, :]
        xrow = tl.sum(tl.where(rr == j, x, 0.0), axis=0)
        cvec = tl.where(r > j, lcol / d, 0.0)
        # row j is scaled, not updated with 1 - 1/d: that form cancels badly for large d
        x = tl.where(rr == j, x * (1.0 / d), x - cvec[:, None] * xrow[None, :])
    return x, first


@triton.jit
def _inv_tile(lo, nvalid, H: tl.constexpr):
    """Inverse of a lower-triangular register tile that is the identity past ``nvalid`` (same
    elimination as :func:`_factor_tile`)."""
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    x = tl.where(rr == cc, 1.0, 0.0)
    for j in range(0, nvalid):
        lcol = tl.sum(tl.where(cc == j, lo, 0.0), axis=1)
        d = tl.sum(tl.where(r == j, lcol, 0.0), axis=0)
        xrow = tl.sum(tl.where(rr == j, x, 0.0), axis=0)
        cvec = tl.where(r > j, lcol / d, 0.0)
        x = tl.where(rr == j, x * (1.0 / d), x - cvec[:, None] * xrow[None, :])
    return x


@triton.jit
def _solve_right(a, lo, xinv, PREC_: tl.constexpr):
    """``a L^-T`` from ``L`` and ``X = L^-1``: ``a X^T`` plus one step of refinement with the
    fp32 residual, which brings the error of the inverse-based product (it grows with
    cond(L)) back to that of substitution."""
    p = tl.dot(a, tl.trans(xinv), input_precision=PREC_)
    r = a - tl.dot(p, tl.trans(lo), input_precision=PREC_)
    return p + tl.dot(r, tl.trans(xinv), input_precision=PREC_)


# ---------------------------------------------------------------------------------------------
# Cholesky kernels (in place on a contiguous (B, n, n) copy)
# ---------------------------------------------------------------------------------------------

@triton.jit
def _factor_block(p, s_r, w, s_wr, nv, lam, H: tl.constexpr, DPREC: tl.constexpr):
    """Factor the ``2H x 2H`` diagonal block at ``p`` (row stride ``s_r``; its lower triangle
    is read, ``lam`` added to the diagonal, rows and columns ``>= nv`` taken as the identity)
    in place as two ``H x H`` register tiles, its upper part zeroed, and store its inverse at
    ``w`` (row stride ``s_wr``, all ``2H x 2H``). Returns ``(X11, X22, first)``: the inverses
    of the two halves and the first failing pivot (``2H`` if none)."""
    nv1 = tl.minimum(nv, H)
    nv2 = tl.minimum(tl.maximum(nv - H, 0), H)
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    p21 = p + H * s_r
    p22 = p21 + H
    m21 = (rr < nv2) & (cc < nv1)
    a11 = _load_sym(p, s_r, 1, nv1, lam, H)
    x11, f1 = _factor_tile(a11, p, s_r, 1, nv1, H)
    tl.debug_barrier()  # L11 was stored column by column by other threads
    l11 = tl.load(p + rr * s_r + cc, mask=(rr < nv1) & (cc < nv1), other=0.0)
    a21 = tl.load(p21 + rr * s_r + cc, mask=m21, other=0.0)
    l21 = _solve_right(a21, l11, x11, DPREC)
    a22 = _load_sym(p22, s_r, 1, nv2, lam, H)
    a22 = a22 - tl.dot(l21, tl.trans(l21), input_precision=DPREC)
    x22, f2 = _factor_tile(a22, p22, s_r, 1, nv2, H)
    x21 = -tl.dot(x22, tl.dot(l21, x11, input_precision=DPREC), input_precision=DPREC)

    tl.store(p21 + rr * s_r + cc, l21, mask=m21)
    tl.store(p + rr * s_r + (cc + H), tl.zeros([H, H], tl.float32),
             mask=(rr < nv1) & (cc < nv2))
    tl.store(w + rr * s_wr + cc, x11)
    tl.store(w + rr * s_wr + (cc + H), tl.zeros([H, H], tl.float32))
    tl.store(w + (rr + H) * s_wr + cc, x21)
    tl.store(w + (rr + H) * s_wr + (cc + H), x22)
    return x11, x22, tl.where(f1 < H, f1, tl.where(f2 < H, H + f2, 2 * H))


@triton.jit
def _chol_diag_kernel(A, W, WS, INFO, LAM, k, n, s_ab, s_ar, s_wb, s_wr, s_wk, s_wsb,
                      NB: tl.constexpr, DPREC: tl.constexpr, STORE_WS: tl.constexpr):
    """Factor diagonal block ``k`` of every matrix (one program each), store ``L_kk`` (upper
    part zeroed), its inverse at ``W + b*s_wb + k*s_wk`` (row stride ``s_wr``), with
    ``STORE_WS`` the inverses of its halves into ``WS`` (for :func:`_chol_panel_kernel`), and
    the first failing pivot into ``INFO`` unless an earlier block already failed."""
    H: tl.constexpr = NB // 2
    b = tl.program_id(0)
    A += b.to(tl.int64) * s_ab
    k0 = k * NB
    w = W + b.to(tl.int64) * s_wb + k * s_wk
    x11, x22, f = _factor_block(A + k0 * s_ar + k0, s_ar, w, s_wr, n - k0, tl.load(LAM + b),
                                H, DPREC)
    if STORE_WS:
        r = tl.arange(0, H)
        ws = WS + b.to(tl.int64) * s_wsb + (2 * k) * H * H
        tl.store(ws + r[:, None] * H + r[None, :], x11)
        tl.store(ws + H * H + r[:, None] * H + r[None, :], x22)
    old = tl.load(INFO + b)
    tl.store(INFO + b, tl.where((old == 0) & (f < NB), k0 + f + 1, old))


@triton.jit
def _chol_panel_kernel(A, WS, k, n, s_ab, s_ar, s_wsb, NB: tl.constexpr, PR: tl.constexpr,
                       PREC_: tl.constexpr):
    """Panel ``L_ik = A_ik L_kk^-T`` for ``PR`` rows below diagonal block ``k``, by its two
    halves: ``P1 = A_i1 L11^-T``, ``P2 = (A_i2 - P1 L21^T) L22^-T``; zeroes the mirrored
    upper part."""
    H: tl.constexpr = NB // 2
    b = tl.program_id(1).to(tl.int64)
    A += b * s_ab
    ws = WS + b * s_wsb + (2 * k) * H * H
    k0 = k * NB
    ah = tl.arange(0, H)
    rows = (k + 1) * NB + tl.program_id(0) * PR + tl.arange(0, PR)
    rmask = rows[:, None] < n
    pd = A + k0 * s_ar + k0
    l11 = tl.load(pd + ah[:, None] * s_ar + ah[None, :])
    l21 = tl.load(pd + (H + ah)[:, None] * s_ar + ah[None, :])
    l22 = tl.load(pd + (H + ah)[:, None] * s_ar + (H + ah)[None, :])
    x11 = tl.load(ws + ah[:, None] * H + ah[None, :])
    x22 = tl.load(ws + H * H + ah[:, None] * H + ah[None, :])
    p1_ptr = A + rows[:, None] * s_ar + (k0 + ah)[None, :]
    p2_ptr = p1_ptr + H
    p1 = _solve_right(tl.load(p1_ptr, mask=rmask, other=0.0), l11, x11, PREC_)
    a2 = tl.load(p2_ptr, mask=rmask, other=0.0) - tl.dot(p1, tl.trans(l21), input_precision=PREC_)
    p2 = _solve_right(a2, l22, x22, PREC_)
    tl.store(p1_ptr, p1, mask=rmask)
    tl.store(p2_ptr, p2, mask=rmask)
    up = A + (k0 + ah)[:, None] * s_ar + rows[None, :]
    zero = tl.zeros([H, PR], tl.float32)
    tl.store(up, zero, mask=rows[None, :] < n)
    tl.store(up + H * s_ar, zero, mask=rows[None, :] < n)


@triton.jit
def _chol_update_kernel(A, TI, TJ, k, n, s_ab, s_ar, NB: tl.constexpr, BK: tl.constexpr,
                        PREC_: tl.constexpr):
    """Trailing update ``A_ij -= L_ik L_jk^T`` for one lower tile (table ``TI, TJ``)."""
    b = tl.program_id(1).to(tl.int64)
    t = tl.program_id(0)
    i = k + 1 + tl.load(TI + t)
    j = k + 1 + tl.load(TJ + t)
    A += b * s_ab
    ar = tl.arange(0, NB)
    ak = tl.arange(0, BK)
    rows = i * NB + ar
    cols = j * NB + ar
    rmask = rows < n
    cmask = cols < n
    k0 = k * NB
    acc = tl.zeros([NB, NB], tl.float32)
    for kk in range(0, NB, BK):
        kc = k0 + kk + ak
        li = tl.load(A + rows[:, None] * s_ar + kc[None, :], mask=rmask[:, None], other=0.0)
        lj = tl.load(A + cols[None, :] * s_ar + kc[:, None], mask=cmask[None, :], other=0.0)
        acc += tl.dot(li, lj, input_precision=PREC_)
    ptr = A + rows[:, None] * s_ar + cols[None, :]
    m = rmask[:, None] & cmask[None, :]
    tl.store(ptr, tl.load(ptr, mask=m, other=0.0) - acc, mask=m)


# ---------------------------------------------------------------------------------------------
# Triangular kernels
# ---------------------------------------------------------------------------------------------

@triton.jit
def _tri_diag_inv_kernel(T, s_tb, s_tr, s_tc, W, s_wb, n, SB: tl.constexpr,
                         UNIT: tl.constexpr):
    """Inverse of diagonal block ``program_id(0)`` (``SB x SB``) of a lower-triangular matrix
    given through strides, as two halves: ``[[X11, 0], [-X22 L21 X11, X22]]``."""
    H: tl.constexpr = SB // 2
    i = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    base = T + b * s_tb + i * SB * (s_tr + s_tc)
    nv = n - i * SB
    nv1 = tl.minimum(nv, H)
    nv2 = tl.minimum(tl.maximum(nv - H, 0), H)
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    x11 = _inv_tile(_load_lower(base, s_tr, s_tc, nv1, UNIT, H), nv1, H)
    x22 = _inv_tile(_load_lower(base + H * (s_tr + s_tc), s_tr, s_tc, nv2, UNIT, H), nv2, H)
    l21 = tl.load(base + H * s_tr + rr * s_tr + cc * s_tc, mask=(rr < nv2) & (cc < nv1),
                  other=0.0)
    x21 = -tl.dot(x22, tl.dot(l21, x11, input_precision="ieee"), input_precision="ieee")
    w = W + b * s_wb + i * SB * SB
    tl.store(w + rr * SB + cc, x11)
    tl.store(w + rr * SB + (cc + H), tl.zeros([H, H], tl.float32))
    tl.store(w + (rr + H) * SB + cc, x21)
    tl.store(w + (rr + H) * SB + (cc + H), x22)


@triton.jit
def _trsm_strip_kernel(L, s_lb, s_lr, s_lc, W, s_wb, S, s_sb, s_sr, s_sc,
                       X, s_xb, s_xr, s_xc, n, m,
                       SB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       FWD: tl.constexpr, BWD: tl.constexpr, IDENT: tl.constexpr,
                       PREC_: tl.constexpr):
    """Blocked substitution on one strip of ``BN`` right-hand-side columns of one matrix.

    ``L`` is lower triangular (any strides), ``W`` holds the inverses of its ``SB x SB``
    diagonal blocks. FWD: ``X = L^-1 S`` (``S = I`` when IDENT, rows above the strip are zero).
    BWD: ``X = L^-T X`` (or ``L^-T S`` without FWD). Each block row of ``X`` is read back by the
    same program after a barrier, so strips need no launch per block row.
    """
    pc = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    L += b * s_lb
    W += b * s_wb
    S += b * s_sb
    X += b * s_xb
    cols = pc * BN + tl.arange(0, BN)
    cmask = cols < m
    ar = tl.arange(0, SB)
    ak = tl.arange(0, BK)
    nb = tl.cdiv(n, SB)
    if FWD:
        i0 = 0
        if IDENT:
            i0 = (pc * BN) // SB
            for i in range(0, i0):
                rows = i * SB + ar
                tl.store(X + rows[:, None] * s_xr + cols[None, :] * s_xc,
                         tl.zeros([SB, BN], tl.float32), mask=cmask[None, :])
        for i in range(i0, nb):
            rows = i * SB + ar
            rmask = rows < n
            if IDENT:
                acc = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
            else:
                acc = tl.load(S + rows[:, None] * s_sr + cols[None, :] * s_sc,
                              mask=rmask[:, None] & cmask[None, :], other=0.0)
            for kk in range(i0 * SB, i * SB, BK):
                kc = kk + ak
                lt = tl.load(L + rows[:, None] * s_lr + kc[None, :] * s_lc, mask=rmask[:, None],
                             other=0.0)
                yt = tl.load(X + kc[:, None] * s_xr + cols[None, :] * s_xc, mask=cmask[None, :],
                             other=0.0)
                acc -= tl.dot(lt, yt, input_precision=PREC_)
            w = tl.load(W + i * SB * SB + ar[:, None] * SB + ar[None, :])
            y = tl.dot(w, acc, input_precision=PREC_)
            tl.store(X + rows[:, None] * s_xr + cols[None, :] * s_xc, y,
                     mask=rmask[:, None] & cmask[None, :])
            tl.debug_barrier()
    if BWD:
        for ii in range(0, nb):
            i = nb - 1 - ii
            rows = i * SB + ar
            rmask = rows < n
            if FWD:
                acc = tl.load(X + rows[:, None] * s_xr + cols[None, :] * s_xc,
                              mask=rmask[:, None] & cmask[None, :], other=0.0)
            else:
                acc = tl.load(S + rows[:, None] * s_sr + cols[None, :] * s_sc,
                              mask=rmask[:, None] & cmask[None, :], other=0.0)
            for kk in range((i + 1) * SB, n, BK):
                kc = kk + ak
                kmask = kc < n
                lt = tl.load(L + kc[None, :] * s_lr + rows[:, None] * s_lc,
                             mask=rmask[:, None] & kmask[None, :], other=0.0)
                xt = tl.load(X + kc[:, None] * s_xr + cols[None, :] * s_xc,
                             mask=kmask[:, None] & cmask[None, :], other=0.0)
                acc -= tl.dot(lt, xt, input_precision=PREC_)
            wt = tl.load(W + i * SB * SB + ar[None, :] * SB + ar[:, None])
            y = tl.dot(wt, acc, input_precision=PREC_)
            tl.store(X + rows[:, None] * s_xr + cols[None, :] * s_xc, y,
                     mask=rmask[:, None] & cmask[None, :])
            tl.debug_barrier()


# ---------------------------------------------------------------------------------------------
# Launch configuration (tuned on the GPU by benchmarks/bench_linalg.py; see RESULTS.md)
# ---------------------------------------------------------------------------------------------

# Overrides (None: the defaults below); the benchmark sweeps them. Measured on an H200
# (benchmarks/RESULTS_linalg.md): NB = 128 was 7-20x slower than NB = 64 at 12 x 769 (its 64-wide
# diagonal tiles are slow in registers and took minutes to compile), 4 diagonal warps beat 1
# and 2, and 64 right-hand-side columns per program beat 128 at both measured shapes.
CHOL_NB: int | None = None  # Cholesky block size, 64 or 128
DIAG_WARPS: int | None = None  # warps of the diagonal-block program (its latency is serial)
TRSM_BN: int | None = None  # right-hand-side columns per substitution program


def _chol_block(n: int) -> int:
    return CHOL_NB or 64


def _diag_warps() -> int:
    return DIAG_WARPS or 4


def _trsm_bn() -> int:
    return TRSM_BN or 64


_TILE_TABLES: dict = {}


def _tile_table(nb: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower tiles (i, j), i >= j, of an (nb x nb) grid in row order: a prefix serves any
    smaller trailing matrix."""
    key = (nb, str(device))
    if key not in _TILE_TABLES:
        ii, jj = [], []
        for i in range(nb):
            for j in range(i + 1):
                ii.append(i)
                jj.append(j)
        _TILE_TABLES[key] = (torch.tensor(ii, dtype=torch.int32, device=device),
                             torch.tensor(jj, dtype=torch.int32, device=device))
    return _TILE_TABLES[key]


def _lam_vec(lam, bshape, batch: int, device) -> torch.Tensor:
    if lam is None:
        return torch.zeros(batch, dtype=torch.float32, device=device)
    if isinstance(lam, torch.Tensor):
        return lam.to(device=device, dtype=torch.float32).expand(bshape).reshape(batch).contiguous()
    return torch.full((batch,), float(lam), dtype=torch.float32, device=device)


def cholesky_workspace(a: torch.Tensor, lam_v: torch.Tensor, info: torch.Tensor):
    """Factor the contiguous ``(B, n, n)`` fp32 tensor ``a`` in place (lower ``L`` of
    ``a + lam I``, upper part zeroed), write ``info``, and return the inverses of the 64 x 64
    diagonal blocks of ``L`` as a ``(B, ceil(n/64) rounded, 64, 64)`` tensor for the solves."""
    batch, n = a.shape[0], a.shape[-1]
    nbk = _chol_block(n)
    nb = triton.cdiv(n, nbk)
    w = torch.empty((batch, nb, nbk, nbk), dtype=torch.float32, device=a.device)
    ws = torch.empty((batch, 2 * nb, nbk // 2, nbk // 2), dtype=torch.float32, device=a.device)
    ti, tj = _tile_table(max(nb - 1, 1), a.device)
    diag_warps = _diag_warps()
    upd_warps = 4 if nbk <= 64 else 8
    for k in range(nb):
        _chol_diag_kernel[(batch,)](a, w, ws, info, lam_v, k, n, a.stride(0), a.stride(1),
                                    w.stride(0), nbk, nbk * nbk, ws.stride(0), NB=nbk,
                                    DPREC="ieee", STORE_WS=True,
                                    num_warps=diag_warps)
        t = nb - k - 1
        if t == 0:
            break
        _chol_panel_kernel[(triton.cdiv(n - (k + 1) * nbk, _PANEL_ROWS), batch)](
            a, ws, k, n, a.stride(0), a.stride(1), ws.stride(0), NB=nbk, PR=_PANEL_ROWS,
            PREC_=PREC, num_warps=4)
        _chol_update_kernel[(t * (t + 1) // 2, batch)](a, ti, tj, k, n, a.stride(0),
                                                      a.stride(1), NB=nbk, BK=32, PREC_=PREC,
                                                      num_warps=upd_warps)
    return w if nbk == _SB else ws


def _strip(lmat, s_l, w, src, s_s, x, s_x, n, m, *, fwd, bwd, ident):
    """Launch the substitution kernel; ``s_*`` are (batch, row, col) strides."""
    batch = w.shape[0]
    bn = _trsm_bn()
    grid = (triton.cdiv(m, bn), batch)
    _trsm_strip_kernel[grid](lmat, *s_l, w, w.stride(0), src, *s_s, x, *s_x, n, m,
                             SB=_SB, BN=bn, BK=32, FWD=fwd, BWD=bwd, IDENT=ident, PREC_=PREC,
                             num_warps=4 if bn <= 64 else 8)


def _diag_inverses(t: torch.Tensor, s_t, n: int, unit: bool) -> torch.Tensor:
    batch = t.shape[0]
    nb = triton.cdiv(n, _SB)
    w = torch.empty((batch, nb, _SB, _SB), dtype=torch.float32, device=t.device)
    _tri_diag_inv_kernel[(nb, batch)](t, *s_t, w, w.stride(0), n, SB=_SB, UNIT=unit,
                                      num_warps=2)
    return w


# ---------------------------------------------------------------------------------------------
# Public functions (same signatures as the reference)
# ---------------------------------------------------------------------------------------------

def _fp32(*ts) -> bool:
    return all(t.dtype == torch.float32 for t in ts)


def _fits(t: torch.Tensor, *others: torch.Tensor, width: int = 0) -> bool:
    """The systems of ``t`` (``(..., n, n)``), with right-hand sides ``width`` wide, within the
    kernels' indexing (:mod:`erq_kernels._limits`); ``others`` are read in place too."""
    batch = math.prod(torch.broadcast_shapes(*(x.shape[:-2] for x in (t, *others))))
    return linalg_fits(batch, t.shape[-1], width, tensors=(t, *others))


def _factor_copy(src: torch.Tensor, lam):
    """Contiguous fp32 copy of ``src`` (``(..., n, n)``) factored in place: (L, info, W)."""
    n = src.shape[-1]
    bshape = src.shape[:-2]
    a = torch.empty((math.prod(bshape), n, n), dtype=torch.float32, device=src.device)
    a.copy_(src.reshape(a.shape[0], n, n))
    batch = a.shape[0]
    info = torch.zeros(batch, dtype=torch.int32, device=src.device)
    w = None
    if batch > 0 and n > 0:
        w = cholesky_workspace(a, _lam_vec(lam, bshape, batch, src.device), info)
    return a, info, w


def cholesky(a: torch.Tensor, lam=None):
    """Triton version of :func:`erq_kernels.reference.cholesky` (fp32)."""
    if not (_fp32(a) and _fits(a)):
        return reference.cholesky(a, lam)
    out, info, _ = _factor_copy(a, lam)
    return out.reshape(a.shape), info.reshape(a.shape[:-2])


def _bstrides(t: torch.Tensor, transpose: bool = False):
    s_b = t.stride(0)
    return (s_b, t.stride(2), t.stride(1)) if transpose else (s_b, t.stride(1), t.stride(2))


def solve_triangular(t, b, *, upper=False, left=True, unitriangular=False):
    """Triton version of :func:`erq_kernels.reference.solve_triangular` (fp32)."""
    if not (_fp32(t, b) and _fits(t, b, width=max(b.shape[-2:]))):
        return reference.solve_triangular(t, b, upper=upper, left=left,
                                          unitriangular=unitriangular)
    n = t.shape[-1]
    bshape = torch.broadcast_shapes(t.shape[:-2], b.shape[:-2])
    tb = t.expand(*bshape, n, n).reshape(math.prod(bshape), n, n)
    bb = b.expand(*bshape, *b.shape[-2:]).reshape(math.prod(bshape), *b.shape[-2:])
    batch = tb.shape[0]
    x = torch.empty(bb.shape, dtype=torch.float32, device=b.device)
    if batch == 0 or x.numel() == 0:
        return x.reshape(*bshape, *b.shape[-2:])
    # Reduce every case to a lower-triangular L (through strides) on the left:
    # T X = B, T lower: L = T, forward.    T upper: T = L^T with L = T^T, backward.
    # X T = B  <=>  T^T X^T = B^T: T lower gives an upper T^T = L^T with L = T (backward);
    # T upper gives a lower T^T = L (forward); B^T and X^T are strided views.
    l_transposed = upper
    fwd = (not upper) if left else upper
    s_l = _bstrides(tb, transpose=l_transposed)
    s_s = _bstrides(bb, transpose=not left)
    s_x = _bstrides(x, transpose=not left)
    m = bb.shape[-1] if left else bb.shape[-2]
    w = _diag_inverses(tb, s_l, n, unitriangular)
    _strip(tb, s_l, w, bb, s_s, x, s_x, n, m, fwd=fwd, bwd=not fwd, ident=False)
    return x.reshape(*bshape, *b.shape[-2:])


def triangular_inverse(t, *, upper=False):
    """Triton version of :func:`erq_kernels.reference.triangular_inverse` (fp32)."""
    if not (_fp32(t) and _fits(t)):
        return reference.triangular_inverse(t, upper=upper)
    n = t.shape[-1]
    tb = t.reshape(math.prod(t.shape[:-2]), n, n)
    x = torch.empty(tb.shape, dtype=torch.float32, device=t.device)
    if x.numel() == 0:
        return x.reshape(t.shape)
    # the inverse of an upper T is the transpose of the inverse of the lower T^T
    s_l = _bstrides(tb, transpose=upper)
    s_x = _bstrides(x, transpose=upper)
    w = _diag_inverses(tb, s_l, n, False)
    _strip(tb, s_l, w, x, s_x, x, s_x, n, n, fwd=True, bwd=False, ident=True)
    return x.reshape(t.shape)


def ridge_solve(g, b, lam=None):
    """Triton version of :func:`erq_kernels.reference.ridge_solve` (fp32)."""
    if not (_fp32(g, b) and _fits(g, b, width=b.shape[-1])):
        return reference.ridge_solve(g, b, lam)
    n = g.shape[-1]
    lmat, info, w = _factor_copy(g, lam)
    bb = b.reshape(math.prod(b.shape[:-2]), n, b.shape[-1])  # -1 is ambiguous for n = 0
    x = torch.empty(bb.shape, dtype=torch.float32, device=b.device)
    if w is not None and x.numel() > 0:
        _strip(lmat, _bstrides(lmat), w, bb, _bstrides(bb), x, _bstrides(x), n, bb.shape[-1],
               fwd=True, bwd=True, ident=False)
    return x.reshape(b.shape), info.reshape(g.shape[:-2])


def inverse_cholesky_upper(g, lam=None):
    """Triton version of :func:`erq_kernels.reference.inverse_cholesky_upper` (fp32)."""
    if not (_fp32(g) and _fits(g)):
        return reference.inverse_cholesky_upper(g, lam)
    n = g.shape[-1]
    m, info, w = _factor_copy(g.flip(-1, -2), lam)
    u = torch.empty(m.shape, dtype=torch.float32, device=g.device)
    if w is not None:
        # U = J M^-1 J: write M^-1 through reversed row and column order, starting at U[n-1, n-1]
        base = u.view(-1)[n * n - 1:]
        s_x = (u.stride(0), -u.stride(1), -u.stride(2))
        _strip(m, _bstrides(m), w, base, s_x, base, s_x, n, n, fwd=True, bwd=False, ident=True)
    return u.reshape(g.shape), info.reshape(g.shape[:-2])


# ---------------------------------------------------------------------------------------------
# A loop of single-matrix torch.linalg calls (cuSOLVER's batched potrf is slow at large n)
# ---------------------------------------------------------------------------------------------

def _each_matrix(g, lam, out_like, solve_one):
    """``solve_one(i, h_i) -> (out_i, info_i)`` on every matrix ``h_i`` of ``g + lam I``, one
    call at a time; the outputs take ``out_like``'s shape and dtype, ``info`` ``g``'s batch."""
    n = g.shape[-1]
    h = reference.add_diagonal(g, lam).reshape(math.prod(g.shape[:-2]), n, n)
    out = torch.empty((h.shape[0], *out_like.shape[-2:]), dtype=out_like.dtype, device=g.device)
    info = torch.empty(h.shape[0], dtype=torch.int32, device=g.device)
    for i in range(h.shape[0]):
        out[i], info[i] = solve_one(i, h[i])
    return out.reshape(out_like.shape), info.reshape(g.shape[:-2])


def _loop_cholesky(a, lam=None):
    return _each_matrix(a, lam, a, lambda i, h: torch.linalg.cholesky_ex(h))


def _loop_ridge_solve(g, b, lam=None):
    bb = b.reshape(math.prod(b.shape[:-2]), *b.shape[-2:])

    def solve_one(i, h):
        li, info = torch.linalg.cholesky_ex(h)
        y = torch.linalg.solve_triangular(li, bb[i], upper=False)
        return torch.linalg.solve_triangular(li.mT, y, upper=True), info
    return _each_matrix(g, lam, b, solve_one)


def _loop_inverse_cholesky_upper(g, lam=None):
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)

    def solve_one(i, h):
        mi, info = torch.linalg.cholesky_ex(h.flip(-1, -2))
        return torch.linalg.solve_triangular(mi, eye, upper=False).flip(-1, -2), info
    return _each_matrix(g, lam, g, solve_one)


for _op, _fn in (("cholesky", cholesky), ("solve_triangular", solve_triangular),
                 ("triangular_inverse", triangular_inverse), ("ridge_solve", ridge_solve),
                 ("inverse_cholesky_upper", inverse_cholesky_upper)):
    _dispatch.register(_op, "triton", _fn)
for _op, _fn in (("cholesky", _loop_cholesky), ("ridge_solve", _loop_ridge_solve),
                 ("inverse_cholesky_upper", _loop_inverse_cholesky_upper)):
    _dispatch.register(_op, "torch_loop", _fn)
