"""Recursive Cholesky, ridge solve and inverse factor whose flops run in one batched GEMM kernel.

The backend ``triton_rec`` of ``cholesky``, ``ridge_solve`` and ``inverse_cholesky_upper``
(same contracts as :mod:`erq_kernels.reference`, fp32). Why a second algorithm beside
:mod:`erq_kernels.cholesky`: that one updates the trailing matrix in 64 x 64 tiles after every
64-column panel and substitutes one 64-column strip per program, so at n >= 1025 it runs at
5-10 TFLOP/s, below cuSOLVER. Here the matrix is split in two halves recursively,

    L11 = chol(A11),  L21 = A21 L11^-T,  A22 -= L21 L21^T,  L22 = chol(A22),
    L^-1 = [[L11^-1, 0], [-L22^-1 L21 L11^-1, L22^-1]],

down to 64 x 64 leaves that the register kernel of ``cholesky.py`` factors and inverts in one
launch. Everything else is a product of large blocks in :func:`_bmm_kernel` (``tf32x3``, every
B operand K-major: see ``_LAYOUT``), which skips the zero half of a triangular operand. The
ridge solve is then two triangular products, ``X = L^-T (L^-1 B)``, and the inverse factor is
``J M^-1 J`` for ``J H J = M M^T``.

Matrices are padded to a multiple of 64 with the identity, so every leaf is whole and the
factor of the padded matrix is ``diag(L, I)``. ``info`` stays on the device (the leaves write
the first failing pivot in factorization order, as cuSOLVER reports it).

Numerics: the panel ``L21 = A21 L11^-T`` from the explicit inverse alone left residuals
``||L L^T - A|| / ||A||`` 2.5x torch's at cond 1e6, so it takes one step of refinement,
``P + (A21 - P L11^T) L11^-T`` (as the panel of ``cholesky.py`` does), which brings them back to
torch's level. The explicit ``L^-1`` in the solve adds rounding of order
``cond(L) u = sqrt(cond(A)) u``, below the ``cond(A) u`` the factorization costs: solve errors
0.6-0.9x torch's on the CPU (tests: ``tests/test_kernels_linalg.py``, cond up to 1e6) and at
most 1.5x the lowest of the torch compositions' on the H200 benchmark shapes.

Speed (H200, ``benchmarks/RESULTS.md`` section 4, run of 2026-11-29 03:59 UTC,
``results/linalg_log_eager_only.txt``, against the fastest torch path of the same run): the
solve's products run at about 55 TFLOP/s (Triton's ``tf32x3`` ceiling on this card was 78,
cuBLAS SGEMM 51). This path wins the ridge solve at every shape but 36 x 193
(1.4-2.0x), the inverse factor at n >= 769 but 12 x 769 (1.2-3.1x) and the factorization from
12 x 3073 up and at 72 x 1025 and 96 x 1281 (1.3-1.9x); at small n its launches dominate and the
blocked kernels of ``cholesky.py`` win. Those launches also make its eager times swing with
the host's speed (up to 2x between runs); :mod:`erq_kernels.linalg_graph` replays them from a
CUDA graph. The dispatch table picks per shape.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _dispatch, reference
from .cholesky import PREC, _chol_diag_kernel, _fp32, _lam_vec

__all__ = ["cholesky", "ridge_solve", "inverse_cholesky_upper", "bmm"]

_LEAF = 64
# GEMM tiles (the benchmark may override them): large products use BIG, products with a side of
# at most 64 use SMALL. (BM, BN, BK, warps, stages). 128 x 64 with 4 warps beat 128 x 128 with
# 8 in 23 of the 30 op x shape cases of issue 4 (H200; benchmarks/RESULTS.md section 4).
BIG: tuple | None = None
SMALL: tuple | None = None
_BIG = (128, 64, 32, 4, 4)
_SMALL = (64, 64, 32, 4, 3)
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
# 3n = 15363) the ridge solve's products stayed at 26 TFLOP/s, so its buffers are padded.
# Before this, the ridge solve used IEEE products, which beat tf32x3 on an N-major B.

# Products whose triangular operand is a block of L^-1 (zero above the diagonal: ``linv`` starts
# zeroed and the leaves store exact zeros there) skip its K range without masking the diagonal
# tiles (bmm's zero_half); False masks them anyway (for the benchmark's comparison).
CLEAN_TRI = True

# Triangular skipping of the K loop (a tile only reads the K range where both operands can be
# nonzero): which operand is triangular, and how.
K_FULL, K_A_LOWER, K_A_UPPER, K_B_LOWER, K_B_UPPER = 0, 1, 2, 3, 4


@triton.jit
def _bmm_kernel(A, B, C, M, N, K, alpha,
                s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn,
                TRI: tl.constexpr, MASK_TRI: tl.constexpr, LOWER_C: tl.constexpr,
                ACC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                PREC_: tl.constexpr):
    """``C = alpha A B (+ C if ACC)`` for one ``BM x BN`` tile of one matrix of the batch.

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
            out += tl.load(C + pc, mask=cmask, other=0.0)
        tl.store(C + pc, out, mask=cmask)


def bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, alpha: float = 1.0,
        accumulate: bool = False, tri: int = K_FULL, lower_out: bool = False,
        precision: str | None = None, tile: tuple | None = None,
        zero_half: bool = False) -> torch.Tensor:
    """Batched ``out = alpha * a @ b (+ out)`` in fp32 with ``tf32x3`` (or ``precision``:
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
    Returns:
        ``out``.
    """
    batch, m, k = a.shape
    n = b.shape[-1]
    if batch == 0 or m == 0 or n == 0:
        return out
    bm, bn, bk, warps, stages = (SMALL or _SMALL) if min(m, n) <= 64 else (tile or BIG or _BIG)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), batch)
    _bmm_kernel[grid](a, b, out, m, n, k, float(alpha), *a.stride(), *b.stride(), *out.stride(),
                      TRI=tri, MASK_TRI=not (zero_half and CLEAN_TRI), LOWER_C=lower_out,
                      ACC=accumulate, BM=bm, BN=bn, BK=bk,
                      PREC_=precision or PREC, num_warps=warps, num_stages=stages)
    return out


class _Work:
    """Padded copy of the matrices, their inverse factor, and the scratch for the products."""

    def __init__(self, src: torch.Tensor, lam, flip: bool):
        n = src.shape[-1]
        bshape = src.shape[:-2]
        batch = math.prod(bshape)
        p = triton.cdiv(n, _LEAF) * _LEAF
        dev = src.device
        self.n, self.p, self.batch = n, p, batch
        self.a = (torch.zeros if p > n else torch.empty)((batch, p, p), dtype=torch.float32,
                                                         device=dev)
        body = self.a[:, :n, :n]
        s = src.reshape(batch, n, n)
        body.copy_(s.flip(-1, -2) if flip else s)
        diag = self.a.diagonal(dim1=-2, dim2=-1)
        if lam is not None:
            diag[:, :n] += _lam_vec(lam, bshape, batch, dev)[:, None]
        diag[:, n:] = 1.0
        self.linv = torch.zeros((batch, p, p), dtype=torch.float32, device=dev)
        self.info = torch.zeros(batch, dtype=torch.int32, device=dev)
        self.ws = torch.empty((batch, 2 * (p // _LEAF), _LEAF // 2, _LEAF // 2),
                              dtype=torch.float32, device=dev)
        self.zero_lam = torch.zeros(batch, dtype=torch.float32, device=dev)
        half = (p // _LEAF + 1) // 2 * _LEAF
        # two buffers, each as large as the root's panel (every deeper panel is smaller)
        self.scratch = torch.empty((2, batch * half * (p - half)), dtype=torch.float32,
                                   device=dev)

    def tmp(self, i: int, rows: int, cols: int) -> torch.Tensor:
        """Scratch buffer ``i`` (0 or 1) as a ``(batch, rows, cols)`` tensor."""
        return self.scratch[i, :self.batch * rows * cols].view(self.batch, rows, cols)

    def leaf(self, off: int) -> None:
        """Factor the 64 x 64 diagonal block at ``off`` and write its inverse into ``linv``."""
        a, w = self.a, self.linv
        _chol_diag_kernel[(self.batch,)](a, w, self.ws, self.info, self.zero_lam, off // _LEAF,
                                         self.p, a.stride(0), a.stride(1), w.stride(0),
                                         w.stride(1), _LEAF * (w.stride(1) + 1),
                                         self.ws.stride(0), NB=_LEAF, DPREC="ieee", num_warps=4)

    def factor(self, off: int, m: int, need_inv: bool) -> None:
        """Factor the diagonal block ``[off, off + m)`` in place (its trailing updates from the
        columns before ``off`` already applied); with ``need_inv`` also its inverse in ``linv``
        (the leaves' inverses are always there)."""
        if m == _LEAF:
            self.leaf(off)
            return
        m1 = (m // _LEAF + 1) // 2 * _LEAF
        m2 = m - m1
        o2 = off + m1
        self.factor(off, m1, True)
        a, li = self.a, self.linv
        a21 = a[:, o2:off + m, off:o2]
        x11 = li[:, off:o2, off:o2]
        # L21 = A21 L11^-T with one step of refinement (module docstring, Numerics):
        # P = A21 L11^-T, then L21 = P + (A21 - P L11^T) L11^-T
        t = self.tmp(0, m2, m1)
        t.copy_(a21)
        r = self.tmp(1, m2, m1)
        bmm(t, x11.mT, r, tri=K_B_UPPER, zero_half=True)
        bmm(r, a[:, off:o2, off:o2].mT, t, alpha=-1.0, accumulate=True, tri=K_B_UPPER)
        a21.copy_(r)
        bmm(t, x11.mT, a21, accumulate=True, tri=K_B_UPPER, zero_half=True)
        bmm(a21, a21.mT, a[:, o2:off + m, o2:off + m], alpha=-1.0, accumulate=True,
            lower_out=True)  # A22 -= L21 L21^T
        self.factor(o2, m2, need_inv)
        if need_inv:
            # (L21 L11^-1)^T = L11^-T L21^T, stored transposed so that both products read
            # their B operand K-major (see _LAYOUT)
            tt = self.tmp(0, m1, m2)
            bmm(x11.mT, a21.mT, tt, tri=K_A_UPPER, zero_half=True)
            bmm(li[:, o2:off + m, o2:off + m], tt.mT, li[:, o2:off + m, off:o2], alpha=-1.0,
                tri=K_A_LOWER, zero_half=True)

    def lower(self) -> torch.Tensor:
        """``L`` (upper triangle zeroed), ``(batch, n, n)`` contiguous."""
        return torch.tril(self.a[:, :self.n, :self.n])


def _run(src: torch.Tensor, lam, *, flip: bool = False, need_inv: bool = True) -> _Work:
    w = _Work(src, lam, flip)
    if w.batch > 0 and w.n > 0:
        w.factor(0, w.p, need_inv)
    return w


def cholesky(a: torch.Tensor, lam=None):
    """Recursive version of :func:`erq_kernels.reference.cholesky` (fp32)."""
    if not _fp32(a):
        return reference.cholesky(a, lam)
    w = _run(a, lam, need_inv=False)
    return w.lower().reshape(a.shape), w.info.reshape(a.shape[:-2])


def ridge_solve(g: torch.Tensor, b: torch.Tensor, lam=None):
    """Recursive version of :func:`erq_kernels.reference.ridge_solve` (fp32):
    ``X = L^-T (L^-1 B)`` with the explicit ``L^-1``."""
    if not (_fp32(g, b)):
        return reference.ridge_solve(g, b, lam)
    w = _run(g, lam)
    n = w.n
    bb = b.reshape(-1, n, b.shape[-1])
    x = torch.empty(bb.shape, dtype=torch.float32, device=b.device)
    if x.numel() > 0 and w.batch > 0:
        linv = w.linv[:, :n, :n]
        # Y^T = B^T L^-T, then X = L^-T Y: both B operands K-major and every operand's row
        # stride a multiple of 64 (see _LAYOUT), so B^T is copied when B's is not
        o = bb.shape[-1]
        bt = bb.mT
        if bb.stride(-2) % 64 or bb.stride(-1) != 1:
            bt = torch.empty((w.batch, o, w.p), dtype=torch.float32, device=b.device)[..., :n]
            bt.copy_(bb.mT)
        yt = torch.empty((w.batch, o, w.p), dtype=torch.float32, device=b.device)[..., :n]
        tile = SOLVE_BIG or _SOLVE_BIG
        bmm(bt, linv.mT, yt, tri=K_B_UPPER, precision=SOLVE_PREC, tile=tile, zero_half=True)
        del bt
        bmm(linv.mT, yt.mT, x, tri=K_A_UPPER, precision=SOLVE_PREC, tile=tile, zero_half=True)
    return x.reshape(b.shape), w.info.reshape(g.shape[:-2])


def inverse_cholesky_upper(g: torch.Tensor, lam=None):
    """Recursive version of :func:`erq_kernels.reference.inverse_cholesky_upper` (fp32)."""
    if not _fp32(g):
        return reference.inverse_cholesky_upper(g, lam)
    w = _run(g, lam, flip=True)
    u = w.linv[:, :w.n, :w.n].flip(-1, -2)
    return u.reshape(g.shape), w.info.reshape(g.shape[:-2])


for _op, _fn in (("cholesky", cholesky), ("ridge_solve", ridge_solve),
                 ("inverse_cholesky_upper", inverse_cholesky_upper)):
    _dispatch.register(_op, "triton_rec", _fn)
