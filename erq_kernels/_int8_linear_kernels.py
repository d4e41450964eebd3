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
def int8_codes_kernel(x_ptr, v_ptr, perm_ptr, M, K, KP, stride_x, s_ptr, z_ptr, qmax, mult,
                      PERM: tl.constexpr, FAST_DIV: tl.constexpr,
                      BM: tl.constexpr, BK: tl.constexpr):
    """``v[m, j] = _codes(x[m, perm[j]])`` as int8 for packed column ``j`` (source column
    ``perm[j]``, or ``j`` without PERM; 0 for padding); one program per ``BM x BK`` tile."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    row_ok = rows < M
    col_ok = cols < KP
    if PERM:
        src = tl.load(perm_ptr + cols, mask=col_ok, other=-1)
        valid = row_ok[:, None] & (src >= 0)[None, :]
    else:  # contiguous: the loads vectorize
        src = cols
        valid = row_ok[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + src[None, :], mask=valid,
                other=0.0).to(tl.float32)
    v = _codes(x, s_ptr, z_ptr, qmax, mult, valid, FAST_DIV)
    tl.store(v_ptr + rows.to(tl.int64)[:, None] * KP + cols[None, :], v,
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def int8_codes_rows_kernel(x_ptr, v_ptr, perm_ptr, M, K, KP, stride_x, s_ptr, z_ptr, qmax, mult,
                           FAST_DIV: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """The gathered ``int8_codes_kernel`` with one program per ``BM`` rows, looping over the
    packed columns: the gathers of one tile touch nearly every sector of its rows, which the
    next tiles then find in L1 instead of fetching them again."""
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
def int8_codes_gather_kernel(x_ptr, v_ptr, perm_ptr, M, K, KP, stride_x, s_ptr, z_ptr, qmax,
                             mult, FAST_DIV: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """The gathered ``int8_codes_kernel`` with whole rows (``BK >= max(K, KP)``) loaded
    contiguously and permuted in the program (``tl.gather``)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < M
    cols = tl.arange(0, BK)
    in_ok = row_ok[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=in_ok,
                other=0.0).to(tl.float32)
    v = _codes(x, s_ptr, z_ptr, qmax, mult, in_ok, FAST_DIV).to(tl.int32)
    src = tl.load(perm_ptr + cols, mask=cols < KP, other=-1)
    idx = tl.zeros([BM, BK], dtype=tl.int32) + tl.maximum(src, 0)[None, :]
    out = tl.where((src >= 0)[None, :], tl.gather(v, idx, 1), 0)
    tl.store(v_ptr + rows.to(tl.int64)[:, None] * KP + cols[None, :], out.to(tl.int8),
             mask=row_ok[:, None] & (cols < KP)[None, :])


@triton.jit
def int8_codes_scatter_kernel(x_ptr, v_ptr, dest_ptr, M, K, KP, stride_x, s_ptr, z_ptr, qmax,
                              mult, FAST_DIV: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """The gathered ``int8_codes_kernel`` from contiguous loads: source column ``k`` goes to
    packed column ``dest[k]`` (increasing within each group, so a warp's stores stay within two
    short runs). Padding columns are not written (the packed weight is 0 there)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    row_ok = rows < M
    valid = row_ok[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=valid,
                other=0.0).to(tl.float32)
    v = _codes(x, s_ptr, z_ptr, qmax, mult, valid, FAST_DIV)
    dst = tl.load(dest_ptr + cols, mask=cols < K, other=0)
    tl.store(v_ptr + rows.to(tl.int64)[:, None] * KP + dst[None, :], v, mask=valid)


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
                       HAS_BIAS: tl.constexpr, TWO_GROUPS: tl.constexpr, RESCALE: tl.constexpr,
                       ONE_LOOP: tl.constexpr, EMULATE: tl.constexpr,
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
    if not (TWO_GROUPS and RESCALE and ONE_LOOP):
        acc = _segment(tl.zeros([BM, BN], dtype=tl.int32), a_rows, b_cols, rm_ok, rn_ok, 0, K0,
                       BK)
        rs = tl.load(rowsum_ptr + 2 * rn, mask=rn_ok, other=0)
        ws = tl.load(wscale_ptr + 2 * rn, mask=rn_ok, other=0.0)
    if TWO_GROUPS and RESCALE and ONE_LOOP:
        acc = tl.zeros([BM, BN], dtype=tl.int32)
        ws1 = tl.load(wscale_ptr + 2 * rn + 1, mask=rn_ok, other=1.0)
        r = tl.math.div_rn(tl.load(wscale_ptr + 2 * rn, mask=rn_ok, other=0.0), ws1)
        rk = tl.arange(0, BK)
        for k in range(0, KP, BK):
            if k == K0:
                acc = tl.floor(acc.to(tl.float32) * r[None, :] + 0.5).to(tl.int32)
            kk = k + rk
            a = tl.load(a_rows + kk[None, :], mask=rm_ok[:, None] & (kk < KP)[None, :], other=0)
            b = tl.load(b_cols + kk[:, None], mask=(kk < KP)[:, None] & rn_ok[None, :], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        rs = tl.load(rowsum_ptr + 2 * rn, mask=rn_ok, other=0)
        ws = tl.load(wscale_ptr + 2 * rn, mask=rn_ok, other=0.0)
        rs1 = tl.load(rowsum_ptr + 2 * rn + 1, mask=rn_ok, other=0)
        y = (acc - off * rs1[None, :]).to(tl.float32) * ws1[None, :] \
            - (off * rs[None, :]).to(tl.float32) * ws[None, :]
    elif TWO_GROUPS and RESCALE:
        # one accumulator: group 0's sum in units of group 1's scale, rounded to an integer
        # (the packer checked that it stays within int32); keeps the 128 x 256 tile's registers
        ws1 = tl.load(wscale_ptr + 2 * rn + 1, mask=rn_ok, other=1.0)
        r = tl.math.div_rn(ws, ws1)  # IEEE, as the reference computes it
        acc = tl.floor(acc.to(tl.float32) * r[None, :] + 0.5).to(tl.int32)
        acc = _segment(acc, a_rows, b_cols, rm_ok, rn_ok, K0, KP, BK)
        rs1 = tl.load(rowsum_ptr + 2 * rn + 1, mask=rn_ok, other=0)
        y = (acc - off * rs1[None, :]).to(tl.float32) * ws1[None, :] \
            - (off * rs[None, :]).to(tl.float32) * ws[None, :]
    elif TWO_GROUPS:
        y = (acc - off * rs[None, :]).to(tl.float32) * ws[None, :]
        acc = _segment(tl.zeros([BM, BN], dtype=tl.int32), a_rows, b_cols, rm_ok, rn_ok, K0, KP, BK)
        rs = tl.load(rowsum_ptr + 2 * rn + 1, mask=rn_ok, other=0)
        ws = tl.load(wscale_ptr + 2 * rn + 1, mask=rn_ok, other=0.0)
        y += (acc - off * rs[None, :]).to(tl.float32) * ws[None, :]
    else:
        y = (acc - off * rs[None, :]).to(tl.float32) * ws[None, :]
    y = y * (s / mult)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=rn_ok, other=0.0).to(tl.float32)[None, :]
    out = _round_to(y, out_ptr.dtype.element_ty, EMULATE).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * stride_out + rn[None, :], out,
             mask=rm_ok[:, None] & rn_ok[None, :])
