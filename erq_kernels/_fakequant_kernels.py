"""Triton device code of :mod:`erq_kernels.fakequant`: the quantizers, the fused matmul and
the one-pass quantize kernel. Host code, numerics and strategy choice are documented there.

Quantizer argument convention (constexpr ``QUANT``): 0 none, 1 uniform, 2 log-sqrt(2);
``PARAM``: 0 parameters are fp32 kernel scalars, 1 one value in memory, 2 one value per channel
of the last (reduction) dimension.
"""
import triton
import triton.language as tl

@triton.jit
def _rint(v):
    """Round half to even, bit-exact for |v| < 2^22: after adding 1.5 * 2^23 no fraction bit
    is left, so the hardware's round-to-nearest-even rounds (and the even constant keeps the
    parity). Larger |v| only shift a value that the callers saturate anyway. (libdevice.rint
    would be an extern call, which the interpreter cannot run.)"""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _div(x, s, r, FAST_DIV: tl.constexpr):
    """Correctly rounded ``x / s`` (as torch divides). ``r = RN(1 / s)``. FAST_DIV: one
    multiply and Markstein's FMA correction (exact for a correctly rounded ``r``), 3 ops instead
    of div.rn's ~10 with a slow-path branch; the interpreter's fma is not fused, so it divides."""
    s = tl.zeros_like(x) + s  # explicit broadcast: fma and div_rn want equal shapes
    if FAST_DIV:
        y = x * (tl.zeros_like(x) + r)
        return tl.fma(tl.fma(-y, s, x), r + tl.zeros_like(x), y)
    else:
        return tl.math.div_rn(x, s)


@triton.jit
def _uniform(x, s, r, z, qmax, FAST_DIV: tl.constexpr):
    """``(clamp(round(x / s) + z, 0, qmax) - z) * s`` in fp32 (s, r = 1/s, z broadcast).

    x is first clamped to +-2^22 s: beyond, round(x/s) + z saturates either way, and inside
    the division cannot overflow and the rounding trick is exact."""
    lim = s * 4194304.0  # 2^22 s
    x = tl.minimum(tl.maximum(x, -lim), lim)
    q = tl.minimum(tl.maximum(_rint(_div(x, s, r, FAST_DIV)) + z, 0.0), qmax)
    return (q - z) * s


@triton.jit
def _log2_quant(x, s, r, n_levels, FAST_DIV: tl.constexpr):
    """Log-sqrt(2) fake quantization (``reference.fake_quant_log2``) in fp32."""
    t = -2.0 * tl.log2(_div(x, s, r, FAST_DIV))  # log2(0) = -inf: level >= n_levels
    k = _rint(tl.minimum(t, 2.0 * n_levels))  # clamp keeps +inf out of the rounding trick
    is_zero = k >= n_levels
    k = tl.minimum(tl.maximum(k, 0.0), n_levels - 1.0)
    half = k * 0.5
    odd = k - 2.0 * tl.floor(half)
    c = tl.ceil(half).to(tl.int32)
    # 2^-c from exponent bits (exact, unlike an exp2 approximation); two factors so that c up
    # to 128 (8 bits) reaches the subnormal 2^-128 exactly, as torch.exp2 does.
    c1 = tl.minimum(c, 126)
    p = ((127 - c1) << 23).to(tl.float32, bitcast=True) * \
        ((127 - (c - c1)) << 23).to(tl.float32, bitcast=True)
    out = p * (odd * 0.41421356237309515 + 1.0) * s
    return tl.where(is_zero, 0.0, out)


@triton.jit
def _quantize(t, QUANT: tl.constexpr, s, r, z, qmax, FAST_DIV: tl.constexpr):
    if QUANT == 1:
        t = _uniform(t, s, r, z, qmax, FAST_DIV)
    elif QUANT == 2:
        t = _log2_quant(t, s, r, qmax, FAST_DIV)
    return t


@triton.jit
def _round_to(x, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """fp32 ``x`` rounded to ``dtype`` (nearest, ties to even). EMULATE (interpreter only,
    whose bf16 conversion truncates) does it on the bits and returns fp32 holding the value."""
    if EMULATE and dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    elif EMULATE:
        return x.to(dtype).to(tl.float32)
    else:
        return x.to(dtype)


@triton.jit
def tile_order(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of program ``pid`` in grouped order: GROUP_M row tiles share the
    column tiles they stream (L2 reuse)."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(grid_m - first_m, GROUP_M)
    return first_m + (pid % width) % group_m, (pid % width) // group_m


@triton.jit
def _params(s, z, PARAM: tl.constexpr):
    """Per-tensor (s, 1/s, z) as scalars; pointers are read once."""
    if PARAM == 1:
        s = tl.load(s)
        z = tl.load(z)
    return s, tl.math.div_rn(1.0, s), z


# ---------------------------------------------------------------------------------------------
# Fused matmul: C[g] = Q_a(A[g]) @ Q_b(B[g]) (+ bias)
# ---------------------------------------------------------------------------------------------

@triton.jit
def fq_matmul_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr,
    M, N, K, H,
    sa0, sa1, sam, sak,
    sb0, sb1, sbk, sbn,
    sc0, sc1, scm, scn,
    a_s, a_z, a_qmax, b_s, b_z, b_qmax,
    A_QUANT: tl.constexpr, A_PARAM: tl.constexpr,
    B_QUANT: tl.constexpr, B_PARAM: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
    FAST_DIV: tl.constexpr, SWAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Batch index g = (g0, g1) = divmod(program_id(1), H); any strides."""
    pid_m, pid_n = tile_order(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)

    g0 = (g // H).to(tl.int64)
    g1 = (g % H).to(tl.int64)
    a_ptr += g0 * sa0 + g1 * sa1
    b_ptr += g0 * sb0 + g1 * sb1
    c_ptr += g0 * sc0 + g1 * sc1

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * sam + offs_k[None, :] * sak
    b_ptrs = b_ptr + offs_k[:, None] * sbk + offs_n[None, :] * sbn

    if A_QUANT != 0 and A_PARAM != 2:
        a_s, a_r, a_z = _params(a_s, a_z, A_PARAM)
    if B_QUANT != 0:
        b_s, b_r, b_z = _params(b_s, b_z, B_PARAM)

    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < K
        b_mask = k_ok[:, None] & n_ok[None, :]
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        if A_QUANT != 0:
            if A_PARAM == 2:  # per channel along K
                sv = tl.load(a_s + kk, mask=k_ok, other=1.0)[None, :]
                zv = tl.load(a_z + kk, mask=k_ok, other=0.0)[None, :]
                a = _quantize(a.to(tl.float32), A_QUANT, sv, tl.math.div_rn(1.0, sv), zv,
                              a_qmax, FAST_DIV)
            else:
                a = _quantize(a.to(tl.float32), A_QUANT, a_s, a_r, a_z, a_qmax, FAST_DIV)
            # The K padding of a may dequantize to non-zero (zero point outside [0, qmax])
            # but stays finite; the padding of b is 0, which cancels it.
            a = _round_to(a, a_ptr.dtype.element_ty, EMULATE)
        if B_QUANT != 0:
            b = _quantize(b.to(tl.float32), B_QUANT, b_s, b_r, b_z, b_qmax, FAST_DIV)
            b = _round_to(tl.where(b_mask, b, 0.0), b_ptr.dtype.element_ty, EMULATE)
        if SWAP:  # C^T = B^T A^T: the quantized tile becomes the shared-memory operand
            lhs, rhs = tl.trans(b), tl.trans(a)
        else:
            lhs, rhs = a, b
        if EMULATE:  # interpreter: its 16-bit dot is wrong; fp32 products of them are exact
            acc = tl.dot(lhs.to(tl.float32), rhs.to(tl.float32), acc, input_precision="ieee")
        elif PRECISION == "none":  # 16-bit operands: the tensor cores' native product
            acc = tl.dot(lhs, rhs, acc)
        else:
            acc = tl.dot(lhs, rhs, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk

    if SWAP:
        acc = tl.trans(acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m[:, None] * scm + offs_n[None, :] * scn
    out = _round_to(acc, c_ptr.dtype.element_ty, EMULATE).to(c_ptr.dtype.element_ty)
    tl.store(c_ptrs, out, mask=m_ok[:, None] & n_ok[None, :])


# ---------------------------------------------------------------------------------------------
# One pass: Y = Q(X), X any strides up to 4-D, Y contiguous of X's dtype
# ---------------------------------------------------------------------------------------------

@triton.jit
def fq_tensor_kernel(
    x_ptr, y_ptr, numel, S1, S2, S3, st0, st1, st2, st3, s, z, qmax,
    QUANT: tl.constexpr, PARAM: tl.constexpr, CONTIG: tl.constexpr, EMULATE: tl.constexpr,
    FAST_DIV: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    i3 = offs % S3
    if CONTIG:
        src = offs
    else:
        t = offs // S3
        i2 = t % S2
        t = t // S2
        src = (t // S1) * st0 + (t % S1) * st1 + i2 * st2 + i3 * st3
    x = tl.load(x_ptr + src, mask=mask, other=0.0).to(tl.float32)
    if PARAM == 2:
        sv = tl.load(s + i3, mask=mask, other=1.0)
        zv = tl.load(z + i3, mask=mask, other=0.0)
        y = _quantize(x, QUANT, sv, tl.math.div_rn(1.0, sv), zv, qmax, FAST_DIV)
    else:
        ps, pr, pz = _params(s, z, PARAM)
        y = _quantize(x, QUANT, ps, pr, pz, qmax, FAST_DIV)
    y = _round_to(y, y_ptr.dtype.element_ty, EMULATE).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)


@triton.jit
def fq_flat_kernel(x_ptr, y_ptr, numel, s_ptr, z_ptr, qmax,
                   EMULATE: tl.constexpr, FAST_DIV: tl.constexpr, BLOCK: tl.constexpr):
    """``fq_tensor_kernel`` for a contiguous ``x`` and a per-tensor uniform quantizer whose
    parameters are in memory: six runtime arguments, because on small tensors issuing the
    launch from Python costs more than the pass itself."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ps = tl.load(s_ptr).to(tl.float32)  # parameters may be stored in x's dtype
    pz = tl.load(z_ptr).to(tl.float32)
    y = _uniform(x, ps, tl.math.div_rn(1.0, ps), pz, qmax, FAST_DIV)
    y = _round_to(y, y_ptr.dtype.element_ty, EMULATE).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)
