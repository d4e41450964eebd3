"""Gram statistics of a quantized input from exact int8 tensor-core products.

``gram_update`` (the statistics of :func:`reference.gram_update`) for an input quantizer of at
most 8 bits, computed with integer arithmetic wherever the quantizer makes it possible:

* The fake-quantized input is ``A = s (q - z)`` with integer codes ``q`` in ``[0, qmax]``. With
  ``zi = round(z)``, ``zf = z - zi``, an offset ``o`` that centres ``q`` in int8 and ``m`` the
  indicator of the clamped entries, ``q - z = K + beta - zf m`` exactly, where ``K = q' - o``
  (``q' = r + zi`` inside the range, ``0`` or ``qmax`` at the clamps, ``r = round(x / s)``) and
  ``beta = o - zi``. The clamping decisions are the reference's (same fp32 ``r + z``).
* ``X`` is written per column as ``sigma_j sum_t S_t 128^-t`` with int8 slices ``S_t`` and a
  power-of-two ``sigma_j`` (so the scaling is exact); four slices hold every fp32 entry to
  ``2^-22 sigma_j``.
* One Triton pass reads ``X`` once and writes ``[K; m; S_1..S_4]`` as int8, transposed so that
  every product is a K-major int8 GEMM (``torch._int_mm``, int32 accumulation: exact). The
  products ``K^T K, K^T m, m^T m, K^T S_t, m^T S_t`` are combined in fp64 with the scalars
  ``s, beta, zf, sigma`` and the column sums, then added to the fp32 accumulators.

``A^T A`` is therefore exact (to the final fp64 rounding) for the exact fake-quant values
``s (q - z)``, which differ from the reference's fp32 ``(q - z) * s`` by fp32 rounding only;
``A^T X~`` is exact for ``X`` to ``2^-22`` of each column's largest entry. When every ``zf`` is
zero (no reparameterized zero point) the ``m`` rows are skipped: 5 int8 GEMMs of ``D x D x N``
instead of 12. Rows are processed in chunks (:func:`max_chunk_rows`) so that int32 sums cannot
overflow and the workspace does not grow with ``N``.

Cases this path does not cover (no quantizer, ``qmax > 255``, fp64 or non-contiguous
accumulators) go to the Triton kernel of :mod:`erq_kernels.gram`; a ``D`` so large that the
int32 products would exceed :data:`PRODUCT_BYTES` goes to the reference.
"""
from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from . import _dispatch, gram, gram_exact, reference
from .gram_exact import ALIGN as _ALIGN, N_SLICES, WORKSPACE_BYTES, max_chunk_rows  # noqa: F401

__all__ = ["gram_update", "gram_update_exact", "prime", "max_chunk_rows", "N_SLICES"]

PRODUCT_BYTES = 1 << 31  # the int32 products of one chunk (D = 5120: 0.5 GiB, 1.2 GiB with m)

_rint = gram.rint
# FMA contraction would change roundings of the fp64 combination (products with a fractional
# zero point are not exact): every operation is rounded on its own, as in gram_exact._combine
_NO_FMA = {"enable_fp_fusion": False}


@triton.jit
def _exponent(amax):
    """``e_j`` with ``max |x_j| / 2^e_j <= 127`` (``ceil(log2(max |x_j| / 127))``, from the
    fp32 bits, so every kernel gets the same exact power of two) of the column maxima ``amax``."""
    v = tl.maximum(amax, 1e-30) / 127.0
    bits = v.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 255) - 127 + tl.where((bits & 8388607) != 0, 1, 0)
    return tl.minimum(tl.maximum(e, -126), 127)


@triton.jit
def _col_exponent(amax_ptr, cols, cm):
    """:func:`_exponent` of columns ``cols`` from their maxima ``max |x_j|``, and
    ``0 * max |x_j|`` (NaN where the column holds NaN or Inf, else 0)."""
    amax = tl.load(amax_ptr + cols, mask=cm, other=0.0)
    return _exponent(amax), amax * 0.0


@triton.jit
def _colmax_kernel(x_ptr, out_ptr, N, D, stride_x, BR: tl.constexpr, BC: tl.constexpr):
    """``out[j] = max_r |x[r, j]|`` (``out`` int32, zeroed, read as fp32): an integer maximum
    of the bits of ``|x|``, which orders every non-negative float and puts NaN above Inf
    above every finite value, as ``torch.aminmax`` propagates them."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = cols < D
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :],
                mask=(rows < N)[:, None] & cm[None, :], other=0.0).to(tl.float32)
    bits = tl.abs(x).to(tl.int32, bitcast=True)
    tl.atomic_max(out_ptr + cols, tl.max(bits, axis=0), mask=cm)


def col_max(x: torch.Tensor) -> torch.Tensor:
    """``max |x_j|`` per column of ``x`` ``(N, D)`` (unit column stride) as fp32, ``(D,)``:
    NaN for a column holding NaN, else Inf for one holding Inf."""
    n, d = x.shape
    out = torch.zeros(d, dtype=torch.int32, device=x.device)
    _colmax_kernel[(triton.cdiv(n, 256), triton.cdiv(d, 64))](x, out, n, d, x.stride(0),
                                                               BR=256, BC=64, num_warps=4)
    return out.view(torch.float32)


@triton.jit
def _pow2(e):
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def codes_tile(x, s, z, qmax, off, valid):
    """``(K, m)`` as int8 of an fp32 tile ``x`` (zeros where not ``valid``): centred codes and
    the clamp indicator, with the reference's clamp decisions (same fp32 ``round(x/s) + z``)."""
    r = _rint(tl.math.div_rn(x, s))
    v = r + z
    low = v < 0.0
    high = v > qmax
    q = tl.where(low, 0.0, tl.where(high, qmax, r + _rint(z)))
    q = tl.minimum(tl.maximum(q, 0.0), qmax)
    k = tl.where(valid, q - off, 0.0).to(tl.int8)
    m = tl.where(valid & (low | high), 1.0, 0.0).to(tl.int8)
    return k, m


@triton.jit
def first_remainder(x, e):
    """``x / 2^e`` per column, clamped to ``[-127, 127]``: what the base-128 digits expand."""
    t = x * _pow2(-e)[None, :]
    return tl.minimum(tl.maximum(t, -127.0), 127.0)


@triton.jit
def next_digit(t, valid):
    """The next base-128 digit of ``t`` (int8, zero where not ``valid``) and the remainder,
    times 128 (exact in fp32)."""
    si = _rint(t)
    return tl.where(valid, si, 0.0).to(tl.int8), (t - si) * 128.0


@triton.jit
def _codes_kernel(x_ptr, s_ptr, z_ptr, amax_ptr, out_ptr,
                  N, D, NP, DP, stride_x, s_stride, qmax, off,
                  MASK_ROWS: tl.constexpr, NSL: tl.constexpr, BR: tl.constexpr,
                  BC: tl.constexpr):
    """Write the int8 planes of rows ``[pid0 * BR, ...)`` and columns ``[pid1 * BC, ...)``,
    transposed (plane row ``c``, column ``r`` holds row ``r`` of ``X``'s column ``c``):
    ``K`` at plane 0, ``m`` at plane 1 (MASK_ROWS), then 16 rows whose first is 1 for every
    real row (its products are the column sums and the row count), then ``S_1..S_NSL``.
    Padding (rows ``>= N``, columns ``>= D``) gets zeros."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = cols < D
    valid = (rows < N)[:, None] & cm[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=valid,
                other=0.0).to(tl.float32)
    s = tl.load(s_ptr + cols * s_stride, mask=cm, other=1.0)[None, :]
    z = tl.load(z_ptr + cols * s_stride, mask=cm, other=0.0)[None, :]

    k, m = codes_tile(x, s, z, qmax, off, valid)

    plane = DP.to(tl.int64) * NP
    dst = out_ptr + cols.to(tl.int64)[None, :] * NP + rows[:, None]
    inside = (rows < NP)[:, None] & (cols < DP)[None, :]
    tl.store(dst, k, mask=inside)
    ones = dst + plane
    if MASK_ROWS:
        tl.store(dst + plane, m, mask=inside)
        ones += plane
    if tl.program_id(1) == 0:
        r16 = tl.arange(0, 16)
        one = tl.where((r16[None, :] == 0) & (rows < N)[:, None], 1, 0).to(tl.int8)
        base = out_ptr + (MASK_ROWS + 1) * plane
        tl.store(base + r16.to(tl.int64)[None, :] * NP + rows[:, None], one,
                 mask=(rows < NP)[:, None] & (r16 < 16)[None, :])
    # slices of x / sigma (|.| <= 127, sigma a power of two): every remainder is exact in fp32
    e, _ = _col_exponent(amax_ptr, cols, cm)
    t = first_remainder(x, e)
    sl = ones + 16 * NP
    for i in tl.static_range(NSL):
        si, t = next_digit(t, valid)
        tl.store(sl + i * plane, si, mask=inside)


@triton.jit
def _add_to(p, val, msk, FRESH: tl.constexpr):
    """``*p += val`` (``*p = val`` when ``FRESH``: the same as adding to ``-0.0``)."""
    if FRESH:
        tl.store(p, val, mask=msk)
    else:
        tl.store(p, tl.load(p, mask=msk, other=0.0) + val, mask=msk)


@triton.jit
def _add_one(p, val, FRESH: tl.constexpr):
    """:func:`_add_to` for one element."""
    if FRESH:
        tl.store(p, val)
    else:
        tl.store(p, tl.load(p) + val)


@triton.jit
def _sliced(ptr, step, msk, NSL: tl.constexpr):
    """``sum_t 128^-t g[ptr + t * step]`` in fp64: the int32 products of ``NSL`` slices of X
    recombined (without the column scale)."""
    acc = tl.load(ptr, mask=msk, other=0).to(tl.float64)
    w = 1.0
    for t in tl.static_range(1, NSL):
        w = w * 0.0078125
        acc += w * tl.load(ptr + t * step, mask=msk, other=0).to(tl.float64)
    return acc


@triton.jit
def _zero_parts(z_ptr, idx, msk, s_stride, off):
    """``(beta, zf)`` in fp64 for columns ``idx``: ``z = zi + zf``, ``beta = off - zi``."""
    z = tl.load(z_ptr + idx * s_stride, mask=msk, other=0.0)
    zi = _rint(z)
    return (off - zi).to(tl.float64), z.to(tl.float64) - zi.to(tl.float64)


@triton.jit
def combine_store(kk, kx, km, mk, mm, mx, ks_i, ks_j, ms_i, ms_j, xsl_i, xsl_j, nr, i, j,
                  e_i, bad_i, e_j, bad_j, s_ptr, z_ptr, s_stride, off, D,
                  ata_ptr, atx_ptr, cs_ptr, ld, border, corner, MASK_ROWS: tl.constexpr,
                  FRESH: tl.constexpr):
    """Add one chunk's products, given in fp64, to the ``ata`` and ``atx`` tile ``(i, j)`` and,
    where ``border``, to the border entries of columns ``i`` (``corner``: the row count too).
    Everything is combined in fp64 first, where the ``beta`` and ``zf`` corrections cancel most
    of the integer products exactly; each operation is rounded on its own (FMA contraction
    off), in the order of ``gram_exact._combine``: change both together.

    ``kk = K_i^T K_j``, ``km = K_i^T m_j``, ``mk = m_i^T K_j``, ``mm = m_i^T m_j``; ``kx`` and
    ``mx`` the products with X's slices recombined (:func:`_sliced`, without the column scale);
    ``ks``, ``ms``, ``xsl`` the column sums of ``K``, ``m`` and the slices; ``nr`` the row count.
    With ``C = K + beta - zf m`` (so ``A = s C``) the tile gets ``s_i (C^T C)_ij s_j`` and
    ``s_i (C^T X)_ij``.
    """
    mi = i < D
    mj = j < D
    m2 = mi[:, None] & mj[None, :]
    s_i = tl.load(s_ptr + i * s_stride, mask=mi, other=0.0).to(tl.float64)
    s_j = tl.load(s_ptr + j * s_stride, mask=mj, other=0.0).to(tl.float64)
    b_i, zf_i = _zero_parts(z_ptr, i, mi, s_stride, off)
    b_j, zf_j = _zero_parts(z_ptr, j, mj, s_stride, off)
    sig_i = _pow2(e_i).to(tl.float64)
    sig_j = _pow2(e_j).to(tl.float64)
    xs_i = xsl_i * sig_i
    xs_j = xsl_j * sig_j

    ctc = kk
    ctc += ks_i[:, None] * b_j[None, :] + b_i[:, None] * ks_j[None, :] \
        + nr * b_i[:, None] * b_j[None, :]
    ctx = kx * sig_j[None, :] + b_i[:, None] * xs_j[None, :]
    cs_i = ks_i + nr * b_i
    if MASK_ROWS:
        ctc += zf_i[:, None] * zf_j[None, :] * mm \
            - zf_j[None, :] * (km + b_i[:, None] * ms_j[None, :]) \
            - zf_i[:, None] * (mk + b_j[None, :] * ms_i[:, None])
        ctx -= zf_i[:, None] * mx * sig_j[None, :]
        cs_i -= zf_i * ms_i
    bad = bad_i[:, None] + bad_j[None, :]  # NaN in a row or column of non-finite X
    out = i[:, None] * ld + j[None, :]
    _add_to(ata_ptr + out, (s_i[:, None] * ctc * s_j[None, :]).to(tl.float32) + bad, m2, FRESH)
    _add_to(atx_ptr + out, (s_i[:, None] * ctx).to(tl.float32) + bad, m2, FRESH)
    if border:
        # the border: sums of A (A^T 1 and 1^T A), sums of X (1^T X~) and the row count
        a_sum = (s_i * cs_i).to(tl.float32) + bad_i
        _add_to(ata_ptr + i * ld + D, a_sum, mi, FRESH)
        _add_to(ata_ptr + D * ld + i, a_sum, mi, FRESH)
        _add_to(atx_ptr + i * ld + D, a_sum, mi, FRESH)
        _add_to(cs_ptr + i, a_sum, mi, FRESH)
        _add_to(atx_ptr + D * ld + i, xs_i.to(tl.float32) + bad_i, mi, FRESH)
        if corner:
            cnt = nr.to(tl.float32)
            _add_one(ata_ptr + D * ld + D, cnt, FRESH)
            _add_one(atx_ptr + D * ld + D, cnt, FRESH)
            _add_one(cs_ptr + D, cnt, FRESH)


@triton.jit
def _combine_kernel(g_ptr, ldg, ata_ptr, atx_ptr, cs_ptr, ld, s_ptr, z_ptr, amax_ptr,
                    s_stride, off, D, DP, ONE, SL0,
                    MASK_ROWS: tl.constexpr, NSL: tl.constexpr, BT: tl.constexpr,
                    FRESH: tl.constexpr):
    """:func:`combine_store` of the ``BT x BT`` tile of one chunk's int32 products ``g`` (row
    stride ``ldg``): ``[K; m; ones]^T`` times every plane. Row ``ONE`` holds the column sums of
    every plane (and the row count at ``(ONE, ONE)``), the slices start at column ``SL0``.
    """
    i = tl.program_id(0) * BT + tl.arange(0, BT)
    j = tl.program_id(1) * BT + tl.arange(0, BT)
    mi = i < D
    mj = j < D
    m2 = mi[:, None] & mj[None, :]
    g1 = g_ptr + ONE.to(tl.int64) * ldg  # the sums row
    nr = tl.load(g1 + ONE).to(tl.float64)
    ks_i = tl.load(g1 + i, mask=mi, other=0).to(tl.float64)
    ks_j = tl.load(g1 + j, mask=mj, other=0).to(tl.float64)
    e_i, bad_i = _col_exponent(amax_ptr, i, mi)
    e_j, bad_j = _col_exponent(amax_ptr, j, mj)
    xsl_i = _sliced(g1 + SL0 + i, DP, mi, NSL)
    xsl_j = _sliced(g1 + SL0 + j, DP, mj, NSL)
    gi = g_ptr + i.to(tl.int64)[:, None] * ldg + j[None, :]
    kk = tl.load(gi, mask=m2, other=0).to(tl.float64)
    kx = _sliced(gi + SL0, DP, m2, NSL)
    if MASK_ROWS:
        gm = gi + DP.to(tl.int64) * ldg  # rows of m
        km = tl.load(gi + DP, mask=m2, other=0).to(tl.float64)
        mk = tl.load(gm, mask=m2, other=0).to(tl.float64)
        mm = tl.load(gm + DP, mask=m2, other=0).to(tl.float64)
        mx = _sliced(gm + SL0, DP, m2, NSL)
        ms_i = tl.load(g1 + DP + i, mask=mi, other=0).to(tl.float64)
        ms_j = tl.load(g1 + DP + j, mask=mj, other=0).to(tl.float64)
    else:
        km, mk, mm, mx, ms_i, ms_j = kk, kk, kk, kk, ks_i, ks_j  # unused
    combine_store(kk, kx, km, mk, mm, mx, ks_i, ks_j, ms_i, ms_j, xsl_i, xsl_j, nr, i, j,
                  e_i, bad_i, e_j, bad_j, s_ptr, z_ptr, s_stride, off, D,
                  ata_ptr, atx_ptr, cs_ptr, ld, tl.program_id(1) == 0, tl.program_id(0) == 0,
                  MASK_ROWS, FRESH)


@triton.jit
def _int8_gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_a, stride_b, stride_c,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      SPLIT: tl.constexpr):
    """``c[m, n] = sum_k a[m, k] b[n, k]`` for int8 ``a`` (M x K) and ``b`` (N x K), both
    K-contiguous, in exact int32; with ``SPLIT > 1`` each of ``SPLIT`` programs adds its share
    of ``k`` to a zeroed ``c`` with integer atomics (exact, so the order does not matter)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BN)
    rm = (pid // num_n) * BM + tl.arange(0, BM)
    rn = (pid % num_n) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    k_len = tl.cdiv(tl.cdiv(K, BK), SPLIT) * BK
    k0 = tl.program_id(1) * k_len
    k1 = tl.minimum(k0 + k_len, K)
    a_rows = a_ptr + rm.to(tl.int64)[:, None] * stride_a
    b_cols = b_ptr + rn.to(tl.int64)[None, :] * stride_b
    acc = tl.zeros([BM, BN], dtype=tl.int32)
    for k in range(k0, k1, BK):
        kk = k + rk
        a = tl.load(a_rows + kk[None, :], mask=(rm < M)[:, None] & (kk < k1)[None, :], other=0)
        b = tl.load(b_cols + kk[:, None], mask=(kk < k1)[:, None] & (rn < N)[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    c = c_ptr + rm.to(tl.int64)[:, None] * stride_c + rn[None, :]
    cm = (rm < M)[:, None] & (rn < N)[None, :]
    if SPLIT == 1:
        tl.store(c, acc, mask=cm)
    else:
        tl.atomic_add(c, acc, mask=cm)


GEMM_CONFIG = {"BM": 64, "BN": 64, "BK": 128, "SPLIT": 1, "num_warps": 4, "num_stages": 4}


def gemm_plan(m: int, n: int, k: int) -> dict | None:
    """Block sizes of :func:`int8_gemm` for an ``m x n`` product over ``k`` tokens, or ``None``
    where ``torch._int_mm`` is used. From ``benchmarks/probe_int8_gemm.py`` on an H200
    (``results/probe_int8_gemm.txt``): the Triton GEMM won 1.24-1.96x on every plane shape
    of D = 192..768 except the smallest (208 x 976 x 6304: 20.3 vs 19.2 us); with 100864
    tokens it lost at D = 768 (``results/gram.json``); larger products were not measured and
    stay with cuBLASLt."""
    if m * n < 250_000 or m * n > 8_000_000:
        return None
    if k >= 32768:  # few output tiles, long sums: split the tokens
        if m * n > 2_000_000:  # 1552 x 4624 x 100864 measured 2.82 ms against cuBLASLt's 2.01
            return None
        wide = n > 1024
        return dict(BM=64, BN=128 if wide else 64, BK=128, SPLIT=4, num_warps=4,
                    num_stages=3 if wide else 4)
    if n >= 3000:
        return dict(BM=128, BN=128, BK=128, SPLIT=1, num_warps=8, num_stages=3)
    if m * n >= 1_500_000:
        return dict(BM=64, BN=128, BK=128, SPLIT=1, num_warps=4, num_stages=3)
    return dict(GEMM_CONFIG)


def int8_gemm(a: torch.Tensor, b: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """``a @ b.T`` for int8 ``a`` ``(M, K)`` and ``b`` ``(N, K)`` (unit stride along ``K``) as
    exact int32 ``(M, N)``: the Triton GEMM :func:`run` uses for small layers, where
    ``torch._int_mm`` leaves most of the GPU idle (few output tiles, long ``K``)."""
    cfg = dict(GEMM_CONFIG, **(config or {}))
    m, k = a.shape
    n = b.shape[0]
    split = cfg.pop("SPLIT")
    alloc = torch.zeros if split > 1 else torch.empty
    c = alloc((m, n), dtype=torch.int32, device=a.device)
    grid = (triton.cdiv(m, cfg["BM"]) * triton.cdiv(n, cfg["BN"]), split)
    _int8_gemm_kernel[grid](a, b, c, m, n, k, a.stride(0), b.stride(0), c.stride(0),
                            SPLIT=split, **cfg)
    return c


_ZF_CACHE: dict = {}  # id(zero tensor) -> (weakref, version, flag)


def _version(z: torch.Tensor):
    try:
        return z._version
    except RuntimeError:  # inference tensors keep no version counter: never cached
        return None


def _all_integer(z: torch.Tensor) -> bool:
    """Whether every zero point is an integer. Answered from :func:`prime` when it has seen this
    very tensor at this version during the current statistics pass, else with a host sync
    (nothing else is cached: an edit through ``.data`` does not move the version counter)."""
    hit = _ZF_CACHE.get(id(z))
    if hit is not None and hit[0]() is z and hit[1] is not None and hit[1] == _version(z):
        return hit[2]
    return bool((z == torch.round(z)).all())


def prime(zeros) -> None:
    """Decide for every zero-point tensor in ``zeros`` whether it holds only integers, with one
    host synchronization for all of them (a statistics pass over many layers would otherwise
    synchronize once per call). Replaces what an earlier call primed; ``prime(())`` forgets
    everything. Callers must not change the tensors while the answers are in use."""
    _ZF_CACHE.clear()
    zeros = [z for z in zeros if isinstance(z, torch.Tensor) and z.numel()]
    if not zeros:
        return
    flags = torch.stack([(z == torch.round(z)).all().to(zeros[0].device) for z in zeros])
    for z, flag in zip(zeros, flags.tolist()):
        _ZF_CACHE[id(z)] = (weakref.ref(z), _version(z), bool(flag))


def _params(scale, zero, d: int, device):
    s_t, z_t, s_stride = gram_exact.quant_params(scale, zero, d, device)
    integer_z = (_all_integer(zero) if isinstance(zero, torch.Tensor)
                 else gram_exact.integer_zero(zero))
    return s_t, z_t, s_stride, integer_z


def supported(x: torch.Tensor, ata, atx, colsum, scale, qmax) -> bool:
    """Whether this path handles the call (else :func:`gram.gram_update` does)."""
    return (gram_exact.has_integer_form(scale, qmax)
            and x.dim() == 2 and x.shape[1] > 0 and x.is_floating_point()
            and x.dtype != torch.float64
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in (ata, atx, colsum)))


def gram_update(x: torch.Tensor, ata: torch.Tensor, atx: torch.Tensor, colsum: torch.Tensor,
                scale=None, zero=None, qmax: int | None = None, *, chunk_rows: int | None = None,
                n_slices: int = N_SLICES, exact: bool = False) -> None:
    """Accumulate ``A^T A``, ``A^T X~`` and ``sum A`` in place from int8 products.

    Args:
        x: ``(N, D)`` fp32, bf16 or fp16.
        ata, atx: ``(D+1, D+1)`` fp32 accumulators, contiguous; colsum: ``(D+1,)`` fp32.
        scale, zero, qmax: the input quantizer, per-tensor (floats or one-element tensors) or
            per-channel (``(D,)``); ``qmax <= 255``. Without a quantizer (or with fp64
            accumulators) the call goes to :func:`erq_kernels.gram.gram_update`.
        chunk_rows: rows per int8 workspace (default and upper bound :func:`max_chunk_rows`).
        n_slices: int8 slices of ``X`` (4 hold fp32 to ``2^-22`` of each column's maximum).
        exact: the calls this path does not take go to :func:`gram_exact.gram_update` (whose
            bits this path reproduces) instead of the fp32 kernels; see
            :func:`gram_update_exact`.
    Workspace: at most :data:`WORKSPACE_BYTES` of int8 planes plus the int32 products
    (``~4 (2 + n_slices) D^2`` bytes with a fractional zero point, ``~4 (1 + n_slices) D^2``
    without); above :data:`PRODUCT_BYTES` the call goes to the reference (cuBLAS fp32).
    Non-finite ``x`` makes the statistics non-finite: NaN in the rows and columns of the
    affected features (the reference gives Inf in ``atx`` and, for Inf input, a finite ``ata``).
    Zero points beyond ``2^22`` in magnitude are outside its exact range (rounding is clamped
    there).
    """
    if not supported(x, ata, atx, colsum, scale, qmax):
        fallback = gram_exact.gram_update if exact else gram.gram_update
        return fallback(x, ata, atx, colsum, scale, zero, qmax)
    n, d = x.shape
    if n == 0:
        return None
    if x.stride(1) != 1:
        x = x.contiguous()
    s_t, z_t, s_stride, integer_z = _params(scale, zero, d, x.device)
    if product_bytes(d, integer_z, n_slices) > PRODUCT_BYTES:
        # the int32 product matrix would not fit the budget: the reference instead
        fallback = gram_exact.gram_update if exact else reference.gram_update
        return fallback(x, ata, atx, colsum, scale, zero, qmax, **(
            {"chunk_rows": chunk_rows, "n_slices": n_slices} if exact else {}))
    run(x, ata, atx, colsum, s_t, z_t, s_stride, integer_z, int(qmax), chunk_rows, n_slices)
    return None


def product_bytes(d: int, integer_z: bool, n_slices: int = N_SLICES) -> int:
    """Bytes of one chunk's int32 products."""
    dp = gram_exact.ceil_to(d, _ALIGN)
    planes_k = 1 if integer_z else 2
    return (planes_k * dp + _ALIGN) * ((planes_k + n_slices) * dp + _ALIGN) * 4


def run(x, ata, atx, colsum, s_t, z_t, s_stride: int, integer_z: bool, qmax: int,
        chunk_rows: int | None = None, n_slices: int = N_SLICES, gemm: str = "auto",
        fresh: bool = False) -> None:
    """The work of :func:`gram_update` once the quantizer is resolved: ``x`` ``(N, D)`` with
    unit column stride, ``s_t`` and ``z_t`` fp32 device tensors of 1 or ``D`` values
    (``s_stride`` 0 or 1), ``integer_z`` whether every zero point is an integer. No host
    synchronization, so it can be captured in a CUDA graph (:mod:`erq_kernels.gram_graph`).
    ``gemm``: ``"cublas"`` (``torch._int_mm``), ``"triton"`` (:func:`int8_gemm`) or ``"auto"``
    (:func:`gemm_plan`), all exact. ``fresh``: the first chunk overwrites the accumulators
    instead of adding to them (``acc = v1``, as ``-0.0 + v1``; later chunks add), saving their
    fills in :mod:`erq_kernels.gram_graph`, which uses it for single-chunk inputs only: with
    several chunks ``(v1 + v2) + acc`` is not the definition's ``(acc + v1) + v2``."""
    n, d = x.shape
    dev = x.device
    off = (qmax + 1) // 2
    planes_k = 1 if integer_z else 2
    dp = gram_exact.ceil_to(d, _ALIGN)
    chunk = gram_exact.rows_per_chunk(qmax, d, integer_z, chunk_rows, n_slices)
    planes = planes_k + n_slices
    lk = planes_k * dp + _ALIGN  # rows of the left operand: K (, m) and the ones block
    amax = col_max(x)  # -> the power-of-two column scales of X
    for r0 in range(0, n, chunk):
        rows = min(chunk, n - r0)
        np_ = gram_exact.ceil_to(rows, _ALIGN)
        buf = torch.empty((planes * dp + _ALIGN, np_), dtype=torch.int8, device=dev)
        _codes_kernel[(triton.cdiv(np_, 64), triton.cdiv(dp, 32))](
            x[r0:r0 + rows], s_t, z_t, amax, buf, rows, d, np_, dp, x.stride(0), s_stride,
            float(qmax), float(off), MASK_ROWS=not integer_z, NSL=n_slices, BR=64, BC=32,
            num_warps=4, **_NO_FMA)
        plan = gemm_plan(lk, buf.shape[0], np_) if gemm == "auto" else (
            GEMM_CONFIG if gemm == "triton" else None)
        if plan is not None:
            g = int8_gemm(buf[:lk], buf, plan)
        else:
            g = torch._int_mm(buf[:lk], buf.T)  # exact int32 sums of products
        del buf
        _combine_kernel[(triton.cdiv(d, 32), triton.cdiv(d, 32))](
            g, g.stride(0), ata, atx, colsum, d + 1, s_t, z_t, amax, s_stride, float(off), d,
            dp, planes_k * dp, lk, MASK_ROWS=not integer_z, NSL=n_slices, BT=32,
            FRESH=fresh and r0 == 0, num_warps=4, **_NO_FMA)
        del g


def gram_update_exact(x, ata, atx, colsum, scale=None, zero=None, qmax=None, **kw) -> None:
    """:func:`erq_kernels.gram_exact.gram_update` (the definition) computed on int8 tensor
    cores: the same bits, as ``tests/test_kernels_gram_exact.py`` checks. Calls without an
    integer form run the definition itself."""
    return gram_update(x, ata, atx, colsum, scale, zero, qmax, exact=True, **kw)


_dispatch.register("gram_update", "int8", gram_update)
for _name in ("triton", "int8"):
    _dispatch.register("gram_update_exact", _name, gram_update_exact)
