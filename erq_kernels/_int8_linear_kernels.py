"""Triton device code of :mod:`erq_kernels.int8_linear`: the activation codes pass and the
int8 GEMM with the dequantizing epilogue. Numerics and layout are documented there."""
import triton
import triton.language as tl

from ._fakequant_kernels import _div, _rint, _round_to, tile_order


@triton.jit
def _offset(z, qmax, mult):
    """The integer that centres ``mult * (q - z)`` on 0 (both kernels compute it alike)."""
    return _rint(mult * (z - qmax * 0.5))


@triton.jit
def _codes(x, s_ptr, z_ptr, qmax, mult, valid, FAST_DIV: tl.constexpr):
    """int8 values ``rint(mult * (q - z) + off)`` of the fp32 activations ``x``, ``q =
    clamp(rint(x / s) + z, 0, qmax)`` computed as the reference does; 0 where not ``valid``."""
    s = tl.load(s_ptr).to(tl.float32)
    z = tl.load(z_ptr).to(tl.float32)
    lim = s * 4194304.0  # 2^22 s, as _uniform: the rounding trick stays exact
    x = tl.minimum(tl.maximum(x, -lim), lim)
    q = tl.minimum(tl.maximum(_rint(_div(x, s, tl.math.div_rn(1.0, s), FAST_DIV)) + z, 0.0), qmax)
    v = _rint(mult * (q - z) + _offset(z, qmax, mult))
    return tl.where(valid, tl.minimum(tl.maximum(v, -127.0), 127.0), 0.0).to(tl.int8)


@triton.jit
def int8_codes_kernel(x_ptr, v_ptr, M, K, KP, stride_x, s_ptr, z_ptr, qmax, mult,
                      FAST_DIV: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """``v[m, j] = _codes(x[m, j])`` as int8 (0 for the padding ``j >= K``), one program per
    ``BM x BK`` tile: the contiguous layout of a weight in one group."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    row_ok = rows < M
    valid = row_ok[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=valid,
                other=0.0).to(tl.float32)
    v = _codes(x, s_ptr, z_ptr, qmax, mult, valid, FAST_DIV)
    tl.store(v_ptr + rows.to(tl.int64)[:, None] * KP + cols[None, :], v,
             mask=row_ok[:, None] & (cols < KP)[None, :])


@triton.jit
def int8_codes_gather_kernel(x_ptr, v_ptr, perm_ptr, M, KP, stride_x, s_ptr, z_ptr, qmax, mult,
                             FAST_DIV: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """``v[m, j] = _codes(x[m, perm[j]])`` (0 where ``perm[j] < 0``, the padding) for the two
    groups' layout, one program per ``BM`` rows looping over the packed columns: a tile's
    gathers touch nearly every sector of its rows, which the next tiles then find in L1. (A 2-D
    grid of tiles fetched the rows once per tile: 2.3x slower on the H200,
    ``benchmarks/results/probe_int8_two_groups.json``.)"""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < M
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    v_rows = v_ptr + rows.to(tl.int64)[:, None] * KP
    for c in range(0, KP, BK):
        cols = c + tl.arange(0, BK)
        col_ok = cols < KP
        src = tl.load(perm_ptr + cols, mask=col_ok, other=-1)
        valid = row_ok[:, None] & (src >= 0)[None, :]
        x = tl.load(x_rows + src[None, :], mask=valid, other=0.0).to(tl.float32)
        v = _codes(x, s_ptr, z_ptr, qmax, mult, valid, FAST_DIV)
        tl.store(v_rows + cols[None, :], v, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _segment(acc, a_rows, b_cols, rm_ok, rn_ok, k_lo, k_hi, BK: tl.constexpr):
    """``acc += a[:, k_lo:k_hi] @ b[:, k_lo:k_hi]^T`` in exact int32."""
    rk = tl.arange(0, BK)
    for k in range(k_lo, k_hi, BK):
        kk = k + rk
        k_ok = kk < k_hi
        a = tl.load(a_rows + kk[None, :], mask=rm_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(b_cols + kk[:, None], mask=k_ok[:, None] & rn_ok[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    return acc


@triton.jit
def int8_linear_kernel(v_ptr, w_ptr, wscale_ptr, rowsum_ptr, bias_ptr, out_ptr, s_ptr, z_ptr,
                       M, N, K0, KP, stride_out, qmax, mult,
                       HAS_BIAS: tl.constexpr, TWO_GROUPS: tl.constexpr, EMULATE: tl.constexpr,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       GROUP_M: tl.constexpr):
    """``out = s / mult * sum_g wscale[:, g] * (V_g @ W_g^T - off * rowsum[:, g]) + bias`` for
    the two column segments ``g`` of the packed ``V`` ``(M, KP)`` and ``W`` ``(N, KP)`` (int8,
    rows of KP bytes): group 0 in ``[0, K0)``, group 1 in ``[K0, KP)``."""
    pid_m, pid_n = tile_order(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rm_ok = rm < M
    rn_ok = rn < N
    a_rows = v_ptr + rm.to(tl.int64)[:, None] * KP
    b_cols = w_ptr + rn.to(tl.int64)[None, :] * KP
    s = tl.load(s_ptr).to(tl.float32)
    z = tl.load(z_ptr).to(tl.float32)
    off = _offset(z, qmax, mult).to(tl.int32)
    # integer until the conversion: the codes' products and the offset's correction are exact
    acc = _segment(tl.zeros([BM, BN], dtype=tl.int32), a_rows, b_cols, rm_ok, rn_ok, 0, K0, BK)
    rs = tl.load(rowsum_ptr + 2 * rn, mask=rn_ok, other=0)
    ws = tl.load(wscale_ptr + 2 * rn, mask=rn_ok, other=0.0)
    y = (acc - off * rs[None, :]).to(tl.float32) * ws[None, :]
    if TWO_GROUPS:
        acc = _segment(tl.zeros([BM, BN], dtype=tl.int32), a_rows, b_cols, rm_ok, rn_ok, K0, KP, BK)
        rs = tl.load(rowsum_ptr + 2 * rn + 1, mask=rn_ok, other=0)
        ws = tl.load(wscale_ptr + 2 * rn + 1, mask=rn_ok, other=0.0)
        y += (acc - off * rs[None, :]).to(tl.float32) * ws[None, :]
    y = y * (s / mult)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=rn_ok, other=0.0).to(tl.float32)[None, :]
    out = _round_to(y, out_ptr.dtype.element_ty, EMULATE).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * stride_out + rn[None, :], out,
             mask=rm_ok[:, None] & rn_ok[None, :])
