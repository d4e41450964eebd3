"""Recursive Cholesky, ridge solve and inverse factor whose flops run in one batched GEMM kernel.

The backend ``triton_rec`` of ``cholesky``, ``ridge_solve`` and ``inverse_cholesky_upper``
(same contracts as :mod:`erq_kernels.reference`, fp32). Why a second algorithm beside
:mod:`erq_kernels.cholesky`: that one updates the trailing matrix in 64 x 64 tiles after every
64-column panel and substitutes one 64-column strip per program, so at n >= 1025 it runs at
5-10 TFLOP/s, below cuSOLVER. Here the matrix is split in two halves recursively,

    L11 = chol(A11),  L21 = A21 L11^-T,  A22 -= L21 L21^T,  L22 = chol(A22),
    L^-1 = [[L11^-1, 0], [-L22^-1 L21 L11^-1, L22^-1]],

down to 64 x 64 leaves that one launch factors and inverts in registers, one program per
matrix (:func:`_leaf_quarters_kernel`, or the two-tile kernel of ``cholesky.py``; ``L^-1`` is
assembled only where the op needs it). The panels are solved by halving
``L11`` down to strips of at most :data:`STRIP_BLOCKS` leaves, one :func:`_strip_kernel` launch
each; everything else is a product of large blocks in :func:`_bmm_kernel` (``tf32x3``, every
B operand K-major: see ``_LAYOUT``), which skips the zero half of a triangular operand. The
ridge solve is then two triangular products, ``X = L^-T (L^-1 B)``, and the inverse factor is
``J M^-1 J`` for ``J H J = M M^T``.

Matrices are padded to a multiple of 64 with the identity, so every leaf is whole and the
factor of the padded matrix is ``diag(L, I)``. ``info`` stays on the device (the leaves write
the first failing pivot in factorization order, as cuSOLVER reports it).

Numerics: the panel ``L21 = A21 L11^-T`` is solved by recursive halving of ``L11`` down to its
64 x 64 leaves, each applied through its explicit inverse (:meth:`_Work.solve_panel`; as
MAGMA's triangular solves do with inverted diagonal blocks), so no large inverse enters the
factor and the factorization costs its nominal ``n^3 / 3`` flops. The earlier panel, from the
explicit ``L11^-1`` of the whole left half, needed one step of refinement,
``P + (A21 - P L11^T) L11^-T``, to keep the residual at torch's level at cond 1e6, and with it
the factorization did about 2.1x the nominal flops. Without refinement the ridge solve's
error rose from at most 1.5x to 1.9x torch's on the H200 benchmark shapes, so the ridge solve
keeps the refined panels (:data:`REFINE`, per op). The explicit ``L^-1`` in the solve adds
rounding of order ``cond(L) u = sqrt(cond(A)) u``, below the ``cond(A) u`` the factorization
costs: solve errors 0.6-0.9x torch's on the CPU (tests: ``tests/test_kernels_linalg.py``,
cond up to 1e6) and at most 1.5x the lowest of the torch compositions' on the H200 benchmark
shapes.

Speed (H200, ``benchmarks/RESULTS.md`` section 4, run of 2026-11-29 11:46 UTC, against the
fastest torch path of the same run): the factorization runs at 8-44 TFLOP/s from n >= 1025
(2.0-3.7x torch, counting its graph replays), the ridge solve's products at 43-57 TFLOP/s
there and 13-37 below (Triton's ``tf32x3`` ceiling on this card was 79.5, cuBLAS SGEMM 51;
``benchmarks/probe_solve_tiles.py``), the inverse factor at 2.1-4.8x torch. At small n its
launches dominate: they make its eager times swing with the host's speed (up to 2x between
runs), and :mod:`erq_kernels.linalg_graph` replays them from a
CUDA graph, where the serial column steps of the leaf kernel are half the GPU time or more
(``benchmarks/profile_linalg_small.py``). The dispatch table picks per shape.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import _dispatch, reference
from . import _limits
from .cholesky import (PREC, _chol_diag_kernel, _factor_block, _fits, _fp32, _lam_vec,
                       _load_sym, _solve_right)

__all__ = ["cholesky", "ridge_solve", "inverse_cholesky_upper", "bmm", "solve_with_inverse"]

_LEAF = 64
# GEMM tiles (the benchmark may override them): large products use BIG, products with a side of
# at most 64 use SMALL. (BM, BN, BK, warps, stages). 128 x 64 with 4 warps beat 128 x 128 with
# 8 in 23 of the 30 op x shape cases of issue 4 (H200; benchmarks/RESULTS.md section 4).
BIG: tuple | None = None
SMALL: tuple | None = None
_BIG = (128, 64, 32, 4, 4)
_SMALL = (64, 64, 32, 4, 3)
# Warps of the 64 x 64 leaf kernel (factor and inverse in registers): its 64 serial column steps
# are most of the GPU time at small n (benchmarks/profile_linalg_small.py).
LEAF_WARPS = 4
# The leaf as four 16-column tiles (_leaf_quarters_kernel) instead of two of 32: a column step
# on a 16 x 16 register tile is cheaper than on a 32 x 32 one. H200, 36 leaves at 4 warps: 35.0
# against 39.7 us per launch (benchmarks/probe_leaf_size.py); graph replays 4-7 % faster at
# n = 193..769 (benchmarks/profile_linalg_small.py --quarters 0 1; RESULTS.md section 4).
LEAF_QUARTERS = True
# Tiles of the ridge solve's two products (3n columns): 128 x 128 with 8 warps was 4-11 % faster
# than _BIG at every n >= 769 in the sweeps of two H200 runs, and BK = 64 (2 stages) another
# 3-8 % at n >= 1025 (RESULTS.md section 4).
SOLVE_BIG: tuple | None = None
_SOLVE_BIG = (128, 128, 64, 8, 2)
# Precision of the ridge solve's two products (3n columns).
SOLVE_PREC = "tf32x3"
# _LAYOUT: every product is arranged so that its B operand is K-major (stride 1 along K). With
# B N-major, Triton 3.6's tf32x3 GEMM ran at 20-52 TFLOP/s on the H200; with B K-major at
# 60-80, above cuBLAS SGEMM's 40-51 and with a smaller error (2e-7 against 9e-7 normwise), and
# an M-major A costs nothing (benchmarks/probe_gemm_prec.py, results/probe_gemm_prec.txt).
# That probe's operands had row strides that are multiples of 16; with odd ones (n = 5121,
# 3n = 15363) the ridge solve's products then stayed at 26 TFLOP/s, so its intermediate is
# padded. Its input B no longer is: read in place as the M-major A operand it runs at the
# same rate as an aligned copy (56.7 TFLOP/s at 32 x 5121; probe_solve_tiles.py).
# Before this, the ridge solve used IEEE products, which beat tf32x3 on an N-major B.

# Products whose triangular operand is a block of L^-1 (zero above the diagonal: ``linv`` starts
# zeroed and the leaves store exact zeros there) skip its K range without masking the diagonal
# tiles (bmm's zero_half); False masks them anyway (for the benchmark's comparison).
CLEAN_TRI = True

# Panels from the explicit inverse with one step of refinement (True), or by solve_panel's
# recursive halving (False), per op; both measured (RESULTS.md section 4): the refined
# panels cost two more products per split, and without them the ridge solve's error rose
# from at most 1.5x to 1.9x torch's on the H200 benchmark shapes.
REFINE = {"cholesky": False, "ridge_solve": True, "inverse_cholesky_upper": False}

# Triangular skipping of the K loop (a tile only reads the K range where both operands can be
# nonzero): which operand is triangular, and how.
K_FULL, K_A_LOWER, K_A_UPPER, K_B_LOWER, K_B_UPPER = 0, 1, 2, 3, 4


@triton.jit
def _bmm_kernel(A, B, C, D, M, N, K, alpha,
                s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_db, s_dm, s_dn,
                TRI: tl.constexpr, MASK_TRI: tl.constexpr, LOWER_C: tl.constexpr,
                ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PREC_: tl.constexpr):
    """``C = alpha A B (+ D if ACC)`` for one ``BM x BN`` tile of one matrix of the batch.

    TRI makes one operand triangular: A lower (``k <= i``), A upper (``k >= i``), B lower
    (``k >= j``), B upper (``k <= j``); the K loop skips the steps outside the triangle and the
    loads mask the rest (unless not MASK_TRI: the other half is known to hold zeros), so the
    other half of that operand is never used. LOWER_C skips tiles entirely above the diagonal
    (a symmetric update of which only the lower triangle is kept).
    """
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    go = True
    if LOWER_C:
        go = pn * BN < (pm + 1) * BM
    if go:
        A += b * s_ab
        B += b * s_bb
        C += b * s_cb
        D += b * s_db
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        k_lo = 0
        k_hi = K
        if TRI == 1:
            k_hi = tl.minimum(K, (pm + 1) * BM)
        elif TRI == 2:
            k_lo = (pm * BM // BK) * BK
        elif TRI == 3:
            k_lo = (pn * BN // BK) * BK
        elif TRI == 4:
            k_hi = tl.minimum(K, (pn + 1) * BN)
        mmask = rm < M
        nmask = rn < N
        acc = tl.zeros([BM, BN], tl.float32)
        for k0 in range(k_lo, k_hi, BK):
            kk = k0 + rk
            kmask = kk < k_hi
            am = mmask[:, None] & kmask[None, :]
            bm = kmask[:, None] & nmask[None, :]
            # the triangle itself is masked too: the other half may hold stale values
            if MASK_TRI:
                if TRI == 1:
                    am &= kk[None, :] <= rm[:, None]
                elif TRI == 2:
                    am &= kk[None, :] >= rm[:, None]
                elif TRI == 3:
                    bm &= kk[:, None] >= rn[None, :]
                elif TRI == 4:
                    bm &= kk[:, None] <= rn[None, :]
            pa = rm[:, None] * s_am + kk[None, :] * s_ak
            pb = kk[:, None] * s_bk + rn[None, :] * s_bn
            a = tl.load(A + pa, mask=am, other=0.0)
            bt = tl.load(B + pb, mask=bm, other=0.0)
            acc = tl.dot(a, bt, acc, input_precision=PREC_)
        out = acc * alpha
        pc = rm[:, None] * s_cm + rn[None, :] * s_cn
        cmask = mmask[:, None] & nmask[None, :]
        if ACC:
            out += tl.load(D + rm[:, None] * s_dm + rn[None, :] * s_dn, mask=cmask, other=0.0)
        tl.store(C + pc, out, mask=cmask)


def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, alpha: float = 1.0,
        accumulate: bool = False, tri: int = K_FULL, lower_out: bool = False,
        precision: str | None = None, tile: tuple | None = None,
        zero_half: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
    """Batched ``out = alpha * a @ b (+ out, or + add)`` in fp32 with ``tf32x3`` (or ``precision``:
    "ieee") products.

    Args:
        a: ``(B, M, K)``, b: ``(B, K, N)``, out: ``(B, M, N)``, fp32 CUDA (or interpreted CPU)
            tensors with any strides (views of larger matrices are fine; ``out`` must not
            overlap ``a`` or ``b``).
        tri: ``K_A_LOWER`` / ``K_A_UPPER`` / ``K_B_LOWER`` / ``K_B_UPPER``: use only that
            triangle (diagonal included) of that operand, as if the other half were zero.
        lower_out: only tiles touching the lower triangle of ``out`` are computed (square
            ``out``; the rest of the upper triangle is left as it was).
        precision: ``tl.dot``'s ``input_precision`` (default ``PREC``, "tf32x3").
        tile: ``(BM, BN, BK, warps, stages)`` when both sides exceed 64 (default ``BIG``).
        zero_half: the other half of the triangular operand holds zeros, so its K range is
            skipped but the diagonal tiles are read unmasked (cheaper in ``tf32x3``).
        add: ``(B, M, N)`` added to the product instead of ``out`` (saves a copy where the
            sum goes elsewhere; must not overlap ``out``). Not with ``accumulate``.
    Returns:
        ``out``.
    """
    batch, m, k = a.shape
    n = b.shape[-1]
    if batch == 0 or m == 0 or n == 0:
        return out
    bm, bn, bk, warps, stages = (SMALL or _SMALL) if min(m, n) <= 64 else (tile or BIG or _BIG)
    if add is not None and accumulate:
        raise ValueError("bmm: add and accumulate exclude each other")
    d = out if add is None else add
    # offsets within a matrix are 32-bit (the library's callers stay far below: _limits)
    span = max(_limits.matrix_span(a), _limits.matrix_span(b), _limits.matrix_span(out),
               _limits.matrix_span(d))
    if span >= _limits.INT32:
        raise ValueError("bmm: a matrix spans 2^31 elements or more, past the kernel's 32-bit "
                         "offsets")
    step = _limits.MAX_GRID_YZ  # the batch is a grid axis of at most 65535 programs
    for b0 in range(0, batch, step):
        aa, bb, oo, dd = a, b, out, d
        if batch > step:
            aa, bb, oo, dd = (t[b0:b0 + step] for t in (a, b, out, d))
        grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), aa.shape[0])
        _bmm_kernel[grid](aa, bb, oo, dd, m, n, k, float(alpha), *aa.stride(), *bb.stride(),
                          *oo.stride(), *dd.stride(),
                          TRI=tri, MASK_TRI=not (zero_half and CLEAN_TRI), LOWER_C=lower_out,
                          ACC=accumulate or add is not None, BM=bm, BN=bn, BK=bk,
                          PREC_=precision or PREC, num_warps=warps, num_stages=stages)
    return out


@triton.jit
def _strip_kernel(X, L, LI, M, s_xb, s_xr, s_lb, s_lr, s_lib, s_lik, s_lir,
                  NBLK: tl.constexpr, BM: tl.constexpr, PREC_: tl.constexpr):
    """``X <- X L^-T`` in place for ``BM`` rows of one matrix and a lower ``L`` of ``NBLK``
    64-column blocks, block by block: ``X_j = (X_j - sum_i<j X_i L_ji^T) L_jj^-T`` with the
    leaves' inverses ``L_jj^-1`` (at ``LI + j s_lik``). Rows are independent, so one program
    owns its rows from first read to last write; the K operands are read K-major."""
    pm = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    X += b * s_xb
    L += b * s_lb
    LI += b * s_lib
    rows = pm * BM + tl.arange(0, BM)
    rmask = rows[:, None] < M
    r64 = tl.arange(0, 64)
    for j in tl.static_range(NBLK):
        acc = tl.load(X + rows[:, None] * s_xr + (j * 64 + r64)[None, :], mask=rmask, other=0.0)
        for i in tl.static_range(j):
            xi = tl.load(X + rows[:, None] * s_xr + (i * 64 + r64)[None, :], mask=rmask,
                         other=0.0)
            lt = tl.load(L + (j * 64 + r64)[None, :] * s_lr + (i * 64 + r64)[:, None])  # L_ji^T
            acc -= tl.dot(xi, lt, input_precision=PREC_)
        ut = tl.load(LI + j * s_lik + r64[None, :] * s_lir + r64[:, None])  # L_jj^-T
        tl.store(X + rows[:, None] * s_xr + (j * 64 + r64)[None, :],
                 tl.dot(acc, ut, input_precision=PREC_), mask=rmask)
        tl.debug_barrier()  # block j, written by other threads of this program, is read next


@triton.jit
def _leaf_quarters_kernel(A, W, INFO, k, n, s_ab, s_ar, s_wb, s_wr, s_wk,
                          DPREC: tl.constexpr):
    """What ``_chol_diag_kernel`` does for the 64 x 64 leaf ``k`` of ``cholesky_rec`` (no
    lambda, no half inverses), with each 32-column half factored by ``_factor_block`` as two
    16 x 16 tiles: the halves meet through memory (the factor and the inverse are stored, then
    read back after a barrier), the 64 column steps run on 16 x 16 tiles."""
    H: tl.constexpr = 32
    b = tl.program_id(0)
    A += b.to(tl.int64) * s_ab
    k0 = k * 2 * H
    nv = n - k0
    nv1 = tl.minimum(nv, H)
    nv2 = tl.minimum(tl.maximum(nv - H, 0), H)
    r = tl.arange(0, H)
    rr = r[:, None]
    cc = r[None, :]
    p11 = A + k0 * s_ar + k0
    p21 = p11 + H * s_ar
    w = W + b.to(tl.int64) * s_wb + k * s_wk
    m21 = (rr < nv2) & (cc < nv1)
    _, _, f1 = _factor_block(p11, s_ar, w, s_wr, nv1, 0.0, 16, DPREC)
    tl.debug_barrier()  # L11 and its inverse were stored by other threads
    l11 = tl.load(p11 + rr * s_ar + cc, mask=(rr < nv1) & (cc < nv1), other=0.0)
    x11 = tl.load(w + rr * s_wr + cc)
    l21 = _solve_right(tl.load(p21 + rr * s_ar + cc, mask=m21, other=0.0), l11, x11, DPREC)
    a22 = _load_sym(p21 + H, s_ar, 1, nv2, 0.0, H) - tl.dot(l21, tl.trans(l21),
                                                            input_precision=DPREC)
    tl.debug_barrier()  # every thread has read A22 before it is overwritten
    tl.store(p21 + H + rr * s_ar + cc, a22, mask=(rr < nv2) & (cc <= rr))
    tl.store(p21 + rr * s_ar + cc, l21, mask=m21)
    tl.store(p11 + rr * s_ar + (cc + H), tl.zeros([H, H], tl.float32),
             mask=(rr < nv1) & (cc < nv2))
    tl.debug_barrier()  # the updated A22 is read by other threads
    _, _, f2 = _factor_block(p21 + H, s_ar, w + H * s_wr + H, s_wr, nv2, 0.0, 16, DPREC)
    tl.debug_barrier()
    x22 = tl.load(w + (rr + H) * s_wr + (cc + H))
    x21 = -tl.dot(x22, tl.dot(l21, x11, input_precision=DPREC), input_precision=DPREC)
    tl.store(w + (rr + H) * s_wr + cc, x21)
    tl.store(w + rr * s_wr + (cc + H), tl.zeros([H, H], tl.float32))
    f = tl.where(f1 < H, f1, tl.where(f2 < H, H + f2, 2 * H))
    old = tl.load(INFO + b)
    tl.store(INFO + b, tl.where((old == 0) & (f < 2 * H), k0 + f + 1, old))


@triton.jit
def _prep_kernel(S, A, LAM, n, p, s_sb, s_sr, s_sc, s_ab, s_ar,
                 FLIP: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """``A[b] = [[S[b] + lam_b I, 0], [0, I]]`` padded to ``p x p`` (``S`` index-reversed in
    both dimensions with ``FLIP``), for ``BR`` rows of one matrix: the copy, the reversal, the
    padding and the shift in one pass instead of five small launches."""
    # the batch on grid axis 0 (axis 1 stops at 65535); the source's offsets in int64 (its
    # strides are arbitrary, e.g. a permuted tensor whose row stride spans the batch)
    b = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    lam = tl.load(LAM + b)
    src_r = (n - 1 - rows if FLIP else rows).to(tl.int64)
    for c0 in range(0, p, BC):
        cols = c0 + tl.arange(0, BC)
        src_c = (n - 1 - cols if FLIP else cols).to(tl.int64)
        inside = (rows[:, None] < n) & (cols[None, :] < n)
        v = tl.load(S + b * s_sb + src_r[:, None] * s_sr + src_c[None, :] * s_sc, mask=inside,
                    other=0.0)
        diag = rows[:, None] == cols[None, :]
        v = tl.where(diag, tl.where(inside, v + lam, 1.0), v)
        tl.store(A + b * s_ab + rows[:, None] * s_ar + cols[None, :], v,
                 mask=(rows[:, None] < p) & (cols[None, :] < p))


# Panels up to this many 64-column blocks are solved by one _strip_kernel launch; wider ones are
# halved first (their products run in bmm). Fewer launches matter where a call is host-bound.
STRIP_BLOCKS = 4


class _Work:
    """Padded copy of the matrices, their inverse factor, and the scratch for the products."""

    def __init__(self, src: torch.Tensor, lam, flip: bool, need_inv: bool, refine: bool):
        n = src.shape[-1]
        bshape = src.shape[:-2]
        batch = math.prod(bshape)
        p = triton.cdiv(n, _LEAF) * _LEAF
        dev = src.device
        self.n, self.p, self.batch, self.dev = n, p, batch, dev
        # every pass over a (batch, p, p) buffer counts at small n (a tenth of a graph
        # replay's time at 36 x 769): only the padding is zeroed, not the whole buffer
        self.a = torch.empty((batch, p, p), dtype=torch.float32, device=dev)
        if batch > 0 and n > 0:
            s = src.reshape(batch, n, n)
            lam_v = self.zero_lam if lam is None else _lam_vec(lam, bshape, batch, dev)
            _prep_kernel[(batch, p // 32)](s, self.a, lam_v, n, p, *s.stride(), self.a.stride(0),
                                           self.a.stride(1), FLIP=flip, BR=32, BC=64,
                                           num_warps=4)
        # L^-1 as a whole (zero above the diagonal) where the op or the refined panels need
        # it; otherwise only the leaves' inverses, which the leaf kernel writes in full
        if need_inv or refine:
            self.linv = torch.zeros((batch, p, p), dtype=torch.float32, device=dev)
        else:
            self.linv = None
            self.leaf_invs = torch.empty((batch, p // _LEAF, _LEAF, _LEAF),
                                         dtype=torch.float32, device=dev)
        self.info = torch.zeros(batch, dtype=torch.int32, device=dev)
        half = (p // _LEAF + 1) // 2 * _LEAF
        # two buffers as large as the root's panel (every deeper one is smaller): the
        # inverse uses the first, the refined panels both
        self.scratch = torch.empty((2 if refine else int(need_inv), batch * half * (p - half)),
                                   dtype=torch.float32, device=dev)

    @functools.cached_property
    def zero_lam(self) -> torch.Tensor:
        """Lambda 0 per matrix, for the prep without lambda and the two-tile leaf kernel (made
        only there: a fill per call otherwise)."""
        return torch.zeros(self.batch, dtype=torch.float32, device=self.dev)

    def tmp(self, i: int, rows: int, cols: int) -> torch.Tensor:
        """Scratch buffer ``i`` as a ``(batch, rows, cols)`` tensor."""
        return self.scratch[i, :self.batch * rows * cols].view(self.batch, rows, cols)

    def leaf(self, off: int) -> None:
        """Factor the 64 x 64 diagonal block at ``off`` and write its inverse (into ``linv``
        when it is kept whole)."""
        a, w = self.a, self.leaf_inv(0)  # the kernel steps from leaf 0 to leaf off // 64
        # no WS: the halves' inverses are for the blocked algorithm's panels (a stands in).
        # The true order n, not p: the kernel runs column steps only for the rows below n, and
        # the identity padding needs none. At n = 64k + 1 (every D + 1 of issue 4) the last
        # leaf is one column and 63 of padding: one step instead of 64 (a quarter of the
        # leaves' time at n = 193).
        if LEAF_QUARTERS:
            _leaf_quarters_kernel[(self.batch,)](a, w, self.info, off // _LEAF, self.n,
                                                 a.stride(0), a.stride(1), w.stride(0),
                                                 w.stride(1), self.leaf_stride(), DPREC="ieee",
                                                 num_warps=LEAF_WARPS)
            return
        _chol_diag_kernel[(self.batch,)](a, w, a, self.info, self.zero_lam, off // _LEAF,
                                         self.n, a.stride(0), a.stride(1), w.stride(0),
                                         w.stride(1), self.leaf_stride(), 0, NB=_LEAF,
                                         DPREC="ieee", STORE_WS=False, num_warps=LEAF_WARPS)

    def leaf_stride(self) -> int:
        """Elements from one leaf's inverse to the next one's."""
        if self.linv is not None:
            return _LEAF * (self.linv.stride(1) + 1)
        return self.leaf_invs.stride(1)

    def leaf_inv(self, off: int) -> torch.Tensor:
        """The inverse of the factored leaf at ``off``, ``(batch, 64, 64)``."""
        if self.linv is not None:
            return self.linv[:, off:off + _LEAF, off:off + _LEAF]
        return self.leaf_invs[:, off // _LEAF]

    def factor(self, off: int, m: int, need_inv: bool, refine: bool = False) -> None:
        """Factor the diagonal block ``[off, off + m)`` in place (its trailing updates from the
        columns before ``off`` already applied); with ``need_inv`` also its inverse in ``linv``
        (the leaves' inverses are always kept: :meth:`leaf_inv`). ``refine``: the panels from
        the explicit inverse plus one step of refinement instead of :meth:`solve_panel` (see
        Numerics)."""
        if m == _LEAF:
            self.leaf(off)
            return
        m1 = (m // _LEAF + 1) // 2 * _LEAF
        o2 = off + m1
        self.factor(off, m1, need_inv or refine, refine)
        a, li = self.a, self.linv
        a21 = a[:, o2:off + m, off:o2]
        if refine:
            self.refined_panel(a21, off, m1)
        else:
            self.solve_panel(a21, off, m1)  # L21 = A21 L11^-T
        bmm(a21, a21.mT, a[:, o2:off + m, o2:off + m], alpha=-1.0, accumulate=True,
            lower_out=True)  # A22 -= L21 L21^T
        self.factor(o2, m - m1, need_inv, refine)
        if need_inv:
            # L^-1's lower left block -L22^-1 L21 L11^-1; (L21 L11^-1)^T = L11^-T L21^T is
            # stored transposed so that both products read their B operand K-major (_LAYOUT)
            tt = self.tmp(0, m1, m - m1)
            bmm(li[:, off:o2, off:o2].mT, a21.mT, tt, tri=K_A_UPPER, zero_half=True)
            bmm(li[:, o2:off + m, o2:off + m], tt.mT, li[:, o2:off + m, off:o2], alpha=-1.0,
                tri=K_A_LOWER, zero_half=True)

    def refined_panel(self, a21: torch.Tensor, off: int, m1: int) -> None:
        """``A21 <- A21 L11^-T`` from the explicit ``L11^-1`` in ``linv``, with one step of
        refinement: ``P = A21 L11^-T``, then ``P + (A21 - P L11^T) L11^-T`` (no copies: the
        sums go to other buffers through ``bmm``'s ``add``)."""
        a, x11 = self.a, self.linv[:, off:off + m1, off:off + m1]
        p = self.tmp(0, *a21.shape[1:])
        t = self.tmp(1, *a21.shape[1:])
        bmm(a21, x11.mT, p, tri=K_B_UPPER, zero_half=True)
        bmm(p, a[:, off:off + m1, off:off + m1].mT, t, alpha=-1.0, add=a21, tri=K_B_UPPER)
        bmm(t, x11.mT, a21, add=p, tri=K_B_UPPER, zero_half=True)

    def solve_panel(self, x: torch.Tensor, off: int, c: int) -> None:
        """``X <- X L^-T`` in place for the factored diagonal block ``L`` at ``[off, off + c)``
        (``x``: ``(batch, rows, c)``), by recursive halving of ``L`` down to strips of at most
        :data:`STRIP_BLOCKS` leaves, which :func:`_strip_kernel` solves block by block through
        the leaves' explicit inverses (see Numerics)."""
        nblk = c // _LEAF
        if STRIP_BLOCKS < 1:
            raise ValueError(f"STRIP_BLOCKS must be at least 1, got {STRIP_BLOCKS}")
        if nblk <= STRIP_BLOCKS:
            batch, m = x.shape[0], x.shape[1]  # panels are views of rows of a: unit col stride
            li = self.leaf_inv(off)
            lblk = self.a[:, off:off + c, off:off + c]
            bm = 64
            _strip_kernel[(triton.cdiv(m, bm), batch)](
                x, lblk, li, m, x.stride(0), x.stride(1), lblk.stride(0), lblk.stride(1),
                li.stride(0), self.leaf_stride(), li.stride(1), NBLK=nblk, BM=bm,
                PREC_=PREC, num_warps=4)
            return
        c1 = (nblk + 1) // 2 * _LEAF
        self.solve_panel(x[..., :c1], off, c1)
        bmm(x[..., :c1], self.a[:, off + c1:off + c, off:off + c1].mT, x[..., c1:], alpha=-1.0,
            accumulate=True)  # X2 -= X1 L21^T
        self.solve_panel(x[..., c1:], off + c1, c - c1)

    def lower(self) -> torch.Tensor:
        """``L`` (upper triangle zeroed), ``(batch, n, n)`` contiguous."""
        return torch.tril(self.a[:, :self.n, :self.n])


def _run(src: torch.Tensor, lam, *, flip: bool = False, need_inv: bool = True,
         refine: bool = False) -> _Work:
    w = _Work(src, lam, flip, need_inv, refine)
    if w.batch > 0 and w.n > 0:
        w.factor(0, w.p, need_inv, refine)
    return w


def cholesky(a: torch.Tensor, lam=None):
    """Recursive version of :func:`erq_kernels.reference.cholesky` (fp32)."""
    if not (_fp32(a) and _fits(a)):
        return reference.cholesky(a, lam)
    w = _run(a, lam, need_inv=False, refine=REFINE["cholesky"])
    return w.lower().reshape(a.shape), w.info.reshape(a.shape[:-2])


def solve_with_inverse(linv: torch.Tensor, b: torch.Tensor, *, tile: tuple | None = None,
                       copy_b: bool = False) -> torch.Tensor:
    """``X = L^-T (L^-1 B)``: the ridge solve's two triangular products.

    Args:
        linv: ``(batch, n, n)`` fp32, ``L^-1`` with exact zeros above the diagonal, row stride
            a multiple of 64 (a view of ``_Work.linv``).
        b: ``(batch, n, o)`` fp32, any strides.
        tile: the products' ``(BM, BN, BK, warps, stages)`` (default ``SOLVE_BIG``).
        copy_b: copy ``b`` into a contiguous buffer with an aligned row stride first when its
            row stride is not a multiple of 64 or its columns are not contiguous (the library's
            earlier way, kept for the probe). ``b`` is copied anyway when an offset within one
            of its matrices would not fit the GEMM kernel's 32-bit index arithmetic.
    Returns:
        ``(batch, n, o)`` contiguous fp32.
    """
    batch, n, o = b.shape
    x = torch.empty((batch, n, o), dtype=torch.float32, device=b.device)
    # Y^T = B^T L^-T, then X = L^-T Y: both B operands K-major (see _LAYOUT). B^T is an
    # M-major A operand, read where it is: with the default tile, an aligned copy of B (3n
    # columns, so an odd row stride at every n = 64k + 1) made the products no faster at any
    # shape of issue 4 and cost 4-11 % at n <= 1537 (H200: benchmarks/probe_solve_tiles.py,
    # RESULTS.md section 4).
    bt = b.mT
    # _bmm_kernel's offsets within a matrix are int32 (a row stride that spans the batch,
    # e.g. a transposed (n, batch, o) tensor, could overflow them)
    if ((copy_b and (b.stride(-2) % 64 or b.stride(-1) != 1))
            or _limits.matrix_span(b) >= _limits.INT32):
        po = triton.cdiv(o, 64) * 64
        bc = torch.empty((batch, n, po), dtype=torch.float32, device=b.device)[..., :o]
        bc.copy_(b)
        bt = bc.mT
    yt = torch.empty((batch, o, triton.cdiv(n, 64) * 64), dtype=torch.float32,
                     device=b.device)[..., :n]
    tile = tile or SOLVE_BIG or _SOLVE_BIG
    bmm(bt, linv.mT, yt, tri=K_B_UPPER, precision=SOLVE_PREC, tile=tile, zero_half=True)
    del bt
    bmm(linv.mT, yt.mT, x, tri=K_A_UPPER, precision=SOLVE_PREC, tile=tile, zero_half=True)
    return x


def ridge_solve(g: torch.Tensor, b: torch.Tensor, lam=None):
    """Recursive version of :func:`erq_kernels.reference.ridge_solve` (fp32):
    ``X = L^-T (L^-1 B)`` with the explicit ``L^-1``."""
    if not (_fp32(g, b) and _fits(g, b, width=b.shape[-1])):
        return reference.ridge_solve(g, b, lam)
    w = _run(g, lam, refine=REFINE["ridge_solve"])
    n = w.n
    bb = b.reshape(w.batch, n, b.shape[-1])  # not -1: ambiguous for n = 0
    if bb.numel() > 0:
        x = solve_with_inverse(w.linv[:, :n, :n], bb)
    else:
        x = torch.empty(bb.shape, dtype=torch.float32, device=b.device)
    return x.reshape(b.shape), w.info.reshape(g.shape[:-2])


def inverse_cholesky_upper(g: torch.Tensor, lam=None):
    """Recursive version of :func:`erq_kernels.reference.inverse_cholesky_upper` (fp32)."""
    if not (_fp32(g) and _fits(g)):
        return reference.inverse_cholesky_upper(g, lam)
    w = _run(g, lam, flip=True, refine=REFINE["inverse_cholesky_upper"])
    u = w.linv[:, :w.n, :w.n].flip(-1, -2)
    return u.reshape(g.shape), w.info.reshape(g.shape[:-2])


for _op, _fn in (("cholesky", cholesky), ("ridge_solve", ridge_solve),
                 ("inverse_cholesky_upper", inverse_cholesky_upper)):
    _dispatch.register(_op, "triton_rec", _fn)
