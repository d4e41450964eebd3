"""Exact Gram statistics in one kernel launch, for small layers.

:mod:`erq_kernels.gram_int8` computes the exact statistics (:mod:`erq_kernels.gram_exact`) in
four launches and a column reduction: a pass that writes int8 planes, one int8 GEMM, the fp64
combination. At ViT-Ti's calibration shape (32 images: 6304 x 192) that is ~54 us of GPU work
behind ~220 us of host time per call, and the eager fp32 path it replaces is itself only
~115 us. This module does the same arithmetic in **one** launch:

* one program per ``BT x BT`` output tile ``(i, j)`` of ``A^T A`` and ``A^T X~``;
* a first sweep over the rows of column block ``j`` finds its maxima (the power-of-two column
  scales of the base-128 digits of ``X``);
* a second sweep forms, in registers, the int8 codes ``K`` and clamp indicator ``m`` of both
  column blocks and the four digit slices of block ``j``, and accumulates every product
  (``K^T K``, ``K^T m``, ``m^T K``, ``m^T m``, ``K^T S_t``, ``m^T S_t``) with int8 ``tl.dot``
  into int32 (exact, in any order) together with the column sums;
* the epilogue is :func:`gram_int8.combine_store`, the fp64 combination the int8 path runs.

So the result is bit-identical to the definition and to the int8 path. Every program reads
its two column blocks from L2 (the input of a small layer is a few MB), and the work grows with
``D^2 N``; the dispatcher takes this path where the benchmark measured it faster.

Only one chunk (:func:`gram_exact.max_chunk_rows`) per call and :data:`N_SLICES` = 4 slices;
other calls go to :func:`gram_int8.gram_update`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _dispatch, gram_exact, gram_int8
from .gram_exact import N_SLICES, max_chunk_rows
from .gram_int8 import _NO_FMA, _exponent, codes_tile, combine_store, first_remainder, next_digit

__all__ = ["gram_update", "gram_update_exact", "BLOCK_T", "BLOCK_N"]

BLOCK_T = 32  # output tile edge
BLOCK_N = 64  # rows per step (int8 dot: K dimension, at least 32)


@triton.jit
def _recombine(g0, g1, g2, g3):
    """``sum_t 128^-t g_t`` in fp64, as :func:`gram_int8._sliced` adds four slices."""
    acc = g0.to(tl.float64)
    w = 1.0
    w = w * 0.0078125
    acc += w * g1.to(tl.float64)
    w = w * 0.0078125
    acc += w * g2.to(tl.float64)
    w = w * 0.0078125
    acc += w * g3.to(tl.float64)
    return acc


@triton.jit
def _fused_kernel(x_ptr, N, NR, D, stride_x, s_ptr, z_ptr, s_stride, qmax, off,
                  ata_ptr, atx_ptr, cs_ptr, ld,
                  MASK_ROWS: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr):
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    i = pid_i * BT + tl.arange(0, BT)
    j = pid_j * BT + tl.arange(0, BT)
    mi = i < D
    mj = j < D
    s_i = tl.load(s_ptr + i * s_stride, mask=mi, other=1.0)[None, :]
    z_i = tl.load(z_ptr + i * s_stride, mask=mi, other=0.0)[None, :]
    s_j = tl.load(s_ptr + j * s_stride, mask=mj, other=1.0)[None, :]
    z_j = tl.load(z_ptr + j * s_stride, mask=mj, other=0.0)[None, :]
    r = tl.arange(0, BN)

    # sweep 1: the maxima of block j (the scales of its digits)
    amax_j = tl.zeros([BT], dtype=tl.float32)
    for r0 in range(0, N, BN):
        rows = r0 + r
        xj = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + j[None, :],
                     mask=(rows < N)[:, None] & mj[None, :], other=0.0).to(tl.float32)
        amax_j = tl.maximum(amax_j, tl.max(tl.abs(xj), axis=0))
    e_j = _exponent(amax_j)

    # sweep 2: exact int32 products and sums
    kk = tl.zeros([BT, BT], dtype=tl.int32)
    kx0 = tl.zeros([BT, BT], dtype=tl.int32)
    kx1 = tl.zeros([BT, BT], dtype=tl.int32)
    kx2 = tl.zeros([BT, BT], dtype=tl.int32)
    kx3 = tl.zeros([BT, BT], dtype=tl.int32)
    km = tl.zeros([BT, BT], dtype=tl.int32)
    mk = tl.zeros([BT, BT], dtype=tl.int32)
    mm = tl.zeros([BT, BT], dtype=tl.int32)
    mx0 = tl.zeros([BT, BT], dtype=tl.int32)
    mx1 = tl.zeros([BT, BT], dtype=tl.int32)
    mx2 = tl.zeros([BT, BT], dtype=tl.int32)
    mx3 = tl.zeros([BT, BT], dtype=tl.int32)
    ks_i = tl.zeros([BT], dtype=tl.int32)
    ks_j = tl.zeros([BT], dtype=tl.int32)
    ms_i = tl.zeros([BT], dtype=tl.int32)
    ms_j = tl.zeros([BT], dtype=tl.int32)
    xs0 = tl.zeros([BT], dtype=tl.int32)
    xs1 = tl.zeros([BT], dtype=tl.int32)
    xs2 = tl.zeros([BT], dtype=tl.int32)
    xs3 = tl.zeros([BT], dtype=tl.int32)
    fin_i = tl.zeros([BT], dtype=tl.float32)
    fin_j = tl.zeros([BT], dtype=tl.float32)
    for r0 in range(0, N, BN):
        rows = r0 + r
        base = x_ptr + rows.to(tl.int64)[:, None] * stride_x
        vi = (rows < N)[:, None] & mi[None, :]
        vj = (rows < N)[:, None] & mj[None, :]
        xi = tl.load(base + i[None, :], mask=vi, other=0.0).to(tl.float32)
        xj = tl.load(base + j[None, :], mask=vj, other=0.0).to(tl.float32)
        fin_i += tl.sum(tl.abs(xi) * 0.0, axis=0)  # NaN for a column with NaN or Inf
        fin_j += tl.sum(tl.abs(xj) * 0.0, axis=0)
        k_i, m_i = codes_tile(xi, s_i, z_i, qmax, off, vi)
        k_j, m_j = codes_tile(xj, s_j, z_j, qmax, off, vj)
        t = first_remainder(xj, e_j)
        d0, t = next_digit(t, vj)
        d1, t = next_digit(t, vj)
        d2, t = next_digit(t, vj)
        d3, t = next_digit(t, vj)
        k_t = tl.trans(k_i)
        kk = tl.dot(k_t, k_j, kk, out_dtype=tl.int32)
        kx0 = tl.dot(k_t, d0, kx0, out_dtype=tl.int32)
        kx1 = tl.dot(k_t, d1, kx1, out_dtype=tl.int32)
        kx2 = tl.dot(k_t, d2, kx2, out_dtype=tl.int32)
        kx3 = tl.dot(k_t, d3, kx3, out_dtype=tl.int32)
        ks_i += tl.sum(k_i.to(tl.int32), axis=0)
        ks_j += tl.sum(k_j.to(tl.int32), axis=0)
        xs0 += tl.sum(d0.to(tl.int32), axis=0)
        xs1 += tl.sum(d1.to(tl.int32), axis=0)
        xs2 += tl.sum(d2.to(tl.int32), axis=0)
        xs3 += tl.sum(d3.to(tl.int32), axis=0)
        if MASK_ROWS:
            m_t = tl.trans(m_i)
            km = tl.dot(k_t, m_j, km, out_dtype=tl.int32)
            mk = tl.dot(m_t, k_j, mk, out_dtype=tl.int32)
            mm = tl.dot(m_t, m_j, mm, out_dtype=tl.int32)
            mx0 = tl.dot(m_t, d0, mx0, out_dtype=tl.int32)
            mx1 = tl.dot(m_t, d1, mx1, out_dtype=tl.int32)
            mx2 = tl.dot(m_t, d2, mx2, out_dtype=tl.int32)
            mx3 = tl.dot(m_t, d3, mx3, out_dtype=tl.int32)
            ms_i += tl.sum(m_i.to(tl.int32), axis=0)
            ms_j += tl.sum(m_j.to(tl.int32), axis=0)

    xsl_j = _recombine(xs0, xs1, xs2, xs3)
    diagonal = pid_i == pid_j
    # the border (column sums, sums of X) is written by the diagonal tiles, where block i is
    # block j: its digit sums and exponent are those of block j
    combine_store(kk.to(tl.float64), _recombine(kx0, kx1, kx2, kx3), km.to(tl.float64),
                  mk.to(tl.float64), mm.to(tl.float64), _recombine(mx0, mx1, mx2, mx3),
                  ks_i.to(tl.float64), ks_j.to(tl.float64), ms_i.to(tl.float64),
                  ms_j.to(tl.float64), xsl_j, xsl_j, tl.cast(NR, tl.float64), i, j,
                  e_j, fin_i, e_j, fin_j, s_ptr, z_ptr, s_stride, off, D,
                  ata_ptr, atx_ptr, cs_ptr, ld, diagonal, diagonal & (pid_i == 0), MASK_ROWS)


def _fits(x, ata, atx, colsum, scale, qmax, n_slices, chunk_rows) -> bool:
    if n_slices != N_SLICES or not gram_int8.supported(x, ata, atx, colsum, scale, qmax):
        return False
    limit = max_chunk_rows(int(qmax), x.shape[1], 2 + n_slices)
    if chunk_rows:
        limit = min(limit, chunk_rows // gram_exact.ALIGN * gram_exact.ALIGN)
    return x.shape[0] <= max(limit, gram_exact.ALIGN) and x.shape[0] < 2 ** 31


def gram_update(x: torch.Tensor, ata: torch.Tensor, atx: torch.Tensor, colsum: torch.Tensor,
                scale=None, zero=None, qmax: int | None = None, *, chunk_rows: int | None = None,
                n_slices: int = N_SLICES, exact: bool = False, bt: int = BLOCK_T,
                bn: int = BLOCK_N, num_warps: int = 4) -> None:
    """Accumulate the exact ``A^T A``, ``A^T X~`` and ``sum A`` (:func:`gram_exact.gram_update`)
    in place, in one launch.

    Args:
        x: ``(N, D)`` fp32, bf16 or fp16 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        ata, atx: ``(D+1, D+1)`` fp32 accumulators, contiguous; colsum: ``(D+1,)`` fp32.
        scale, zero, qmax: the input quantizer (per tensor or per channel, ``qmax <= 255``).
        chunk_rows, n_slices, exact: as :func:`gram_int8.gram_update`, which takes the calls
            this kernel does not: more rows than one chunk, other slice counts, no quantizer.
        bt, bn, num_warps: tile edge, rows per step (at least 32), warps (tuning only).
    """
    if not _fits(x, ata, atx, colsum, scale, qmax, n_slices, chunk_rows):
        return gram_int8.gram_update(x, ata, atx, colsum, scale, zero, qmax,
                                     chunk_rows=chunk_rows, n_slices=n_slices, exact=exact)
    n, d = x.shape
    if n == 0:
        return None
    if x.stride(1) != 1:
        x = x.contiguous()
    s_t, z_t, s_stride, integer_z = gram_int8._params(scale, zero, d, x.device)
    qmax = int(qmax)
    _fused_kernel[(triton.cdiv(d, bt), triton.cdiv(d, bt))](
        x, n, float(n), d, x.stride(0), s_t, z_t, s_stride, float(qmax), float((qmax + 1) // 2),
        ata, atx, colsum, d + 1, MASK_ROWS=not integer_z, BT=bt, BN=bn, num_warps=num_warps,
        **_NO_FMA)
    return None


def gram_update_exact(x, ata, atx, colsum, scale=None, zero=None, qmax=None, **kw) -> None:
    """:func:`erq_kernels.gram_exact.gram_update` in one launch: the same bits."""
    return gram_update(x, ata, atx, colsum, scale, zero, qmax, exact=True, **kw)


_dispatch.register("gram_update", "fused", gram_update)
_dispatch.register("gram_update_exact", "fused", gram_update_exact)
