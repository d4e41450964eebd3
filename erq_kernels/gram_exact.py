"""Exact Gram statistics of a quantized input: the definition, in plain PyTorch.

:func:`gram_update` (``erq_kernels.gram_update(..., exact=True)``) accumulates the same
``A^T A``, ``A^T X~`` and ``sum A`` as :func:`reference.gram_update`, but from the integer
decomposition that :mod:`erq_kernels.gram_int8` evaluates on int8 tensor cores, so that the
two produce **the same bits**. Why it matters: a W4A4 ViT is chaotic at the ulp level (an
ulp in one bias changes hundreds of predictions, see ``benchmarks/RESULTS.md`` section 2), so a
fast path can only leave the quantized model unchanged if every statistic it feeds the
solvers is bit-identical to the reference's. Floating-point sums in a different order cannot
give that; exact integer sums can, in any order, on any device.

For ``A = s (q - z)`` with integer codes ``q`` (quantizer of at most 8 bits), ``zi = round(z)``,
``zf = z - zi``, ``off = (qmax + 1) // 2`` and ``m`` the indicator of clamped entries,
``q - z = K + beta - zf m`` with ``K = q' - off`` (``q' = round(x / s) + zi`` inside the range,
``0`` or ``qmax`` at the clamps) and ``beta = off - zi``. ``X`` is taken per column as
``sigma_j X''`` with a power of two ``sigma_j`` (``max |x_j| / sigma_j <= 127``) and ``X''``
the first :data:`N_SLICES` base-128 digits of ``x / sigma`` (every fp32 entry to ``2^-22``
of its column's largest). Every product of ``K``, ``m``, ``1`` and ``X''`` is then an integer
multiple of ``2^-21`` below ``2^52`` of it, so any summation order gives the exact value (here:
fp64 matmuls; there: int32 tensor-core sums). The products are combined in fp64 by the fixed
sequence of correctly rounded operations in :func:`_combine` (the Triton kernel performs the
same operations, in the same order, with FMA contraction off) and added to the accumulators
once per chunk of :func:`max_chunk_rows` rows.

Inputs without a quantizer, or with ``qmax > 255``, have no integer form; their products are
formed in fp64 by :func:`_fp64_update`, which every backend calls, so they too are the same
in every backend on one device.
"""
from __future__ import annotations

import torch

from .reference import fake_quant

__all__ = ["gram_update", "max_chunk_rows", "quant_params", "N_SLICES"]

WORKSPACE_BYTES = 1 << 29  # int8 planes of one chunk of rows (the int8 backend's workspace)
N_SLICES = 4
ALIGN = 16  # torch._int_mm wants dimensions that are multiples of 8; 16 also keeps rows aligned
MAX_QMAX = 255


def ceil_to(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def max_chunk_rows(qmax: int, d: int, planes: int) -> int:
    """Rows per chunk: no int32 product sum may overflow (every plane entry is at most 128 in
    magnitude, ``K`` at most ``qmax + 1 - off``), and the int8 planes of the fast backend stay
    within :data:`WORKSPACE_BYTES`. Part of the definition: the fp32 accumulators are rounded
    once per chunk."""
    k_max = max((qmax + 1) // 2, qmax - (qmax + 1) // 2)
    exact = (2 ** 31 - 1) // (max(k_max, 1) * 128)
    memory = WORKSPACE_BYTES // (planes * ceil_to(d, ALIGN) + ALIGN)
    return max(ALIGN, min(exact, memory) // ALIGN * ALIGN)


def rows_per_chunk(qmax: int, d: int, integer_z: bool, chunk_rows: int | None = None,
                   n_slices: int = N_SLICES) -> int:
    """Rows per chunk: :func:`max_chunk_rows` for the planes of this quantizer (the clamp
    indicator only with a fractional zero point), capped by ``chunk_rows`` (a multiple of
    :data:`ALIGN`, at least one)."""
    chunk = max_chunk_rows(qmax, d, (1 if integer_z else 2) + n_slices)
    if chunk_rows:
        chunk = max(ALIGN, min(chunk, chunk_rows // ALIGN * ALIGN))
    return chunk


def _param(v, d: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """A quantizer parameter as an fp32 device tensor and its stride over channels (0 or 1)."""
    if isinstance(v, torch.Tensor):
        t = v.detach().to(device=device, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            return t, 0
        if t.numel() == d:
            return t.contiguous(), 1
        raise ValueError(f"quantizer parameter of {t.numel()} values for D = {d}")
    return torch.full((1,), float(v), dtype=torch.float32, device=device), 0


def quant_params(scale, zero, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(scale, zero, stride)`` as fp32 device tensors sharing one stride over channels (0 for
    per-tensor, 1 for per-channel; a per-tensor one beside a per-channel one is expanded)."""
    s_t, s_stride = _param(scale, d, device)
    z_t, z_stride = _param(0.0 if zero is None else zero, d, device)
    if s_stride != z_stride:
        s_t, z_t = s_t.expand(d).contiguous(), z_t.expand(d).contiguous()
        s_stride = 1
    return s_t, z_t, s_stride


def integer_zero(zero) -> bool:
    """Whether every zero point is an integer (then the clamp indicator ``m`` is not needed)."""
    if zero is None:
        return True
    if isinstance(zero, torch.Tensor):
        return bool((zero == torch.round(zero)).all())
    return float(zero) == round(float(zero))


def col_exponent(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``e_j = ceil(log2(max |x_j| / 127))`` from the fp32 bits (int32, clamped to
    ``[-126, 127]``) and ``0 * max |x_j|`` (NaN for a column holding NaN or Inf)."""
    amax = torch.maximum(lo.abs(), hi.abs())
    bits = (amax.clamp_min(1e-30) / 127.0).view(torch.int32)
    e = ((bits >> 23) & 255) - 127 + ((bits & 8388607) != 0).to(torch.int32)
    return e.clamp(-126, 127), amax * 0.0


def pow2(e: torch.Tensor) -> torch.Tensor:
    """``2^e`` (fp32) for int32 ``e`` in ``[-126, 127]``, exactly."""
    return ((e + 127) << 23).view(torch.float32)


def codes(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int, off: float):
    """``(K, m)``: centred integer codes (fp32) and the clamp indicator (bool) of fp32 ``x``;
    the clamping decisions are :func:`reference.fake_quant`'s (same fp32 ``round(x/s) + z``)."""
    r = torch.round(x / s)
    v = r + z
    low, high = v < 0.0, v > qmax
    q = torch.where(low, 0.0, torch.where(high, float(qmax), r + torch.round(z)))
    return q.clamp(0.0, qmax) - off, low | high


def digits(x: torch.Tensor, e: torch.Tensor, n_slices: int) -> torch.Tensor:
    """``X''`` (fp64): the first ``n_slices`` base-128 digits of ``x / 2^e``, recombined
    (exact: each digit and remainder is exact in fp32)."""
    t = (x * pow2(-e)).clamp(-127.0, 127.0)
    out = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
    w = 1.0
    for _ in range(n_slices):
        si = torch.round(t)
        out += si.double() * w
        t = (t - si) * 128.0
        w /= 128.0
    return out


def _combine(p: dict, s, z, off: float, sig, bad, ata, atx, colsum, d: int) -> None:
    """Add one chunk to the accumulators. ``p`` holds the exact products (fp64): ``KK``,
    ``KX``, ``ks``, ``xs``, ``nr`` and, with a fractional zero point, ``Km``, ``mK``, ``mm``,
    ``mX``, ``ms``. Each line is one correctly rounded fp64 operation per element, in the
    order of ``gram_int8._combine_kernel``: change both together."""
    f64 = torch.float64
    s64 = s.to(f64)
    zi = torch.round(z)
    b = (off - zi).to(f64)
    zf = z.to(f64) - zi.to(f64)
    s_i, s_j = s64[:, None], s64[None, :]
    b_i, b_j = b[:, None], b[None, :]
    nr = p["nr"]
    ks_i, ks_j = p["ks"][:, None], p["ks"][None, :]
    xs = p["xs"] * sig
    ctc = p["KK"] + (ks_i * b_j + b_i * ks_j + nr * b_i * b_j)
    ctx = p["KX"] * sig[None, :] + b_i * xs[None, :]
    cs = p["ks"] + nr * b
    if "mm" in p:
        zf_i, zf_j = zf[:, None], zf[None, :]
        ms_i, ms_j = p["ms"][:, None], p["ms"][None, :]
        ctc = ctc + (zf_i * zf_j * p["mm"] - zf_j * (p["Km"] + b_i * ms_j)
                     - zf_i * (p["mK"] + b_j * ms_i))
        ctx = ctx - zf_i * p["mX"] * sig[None, :]
        cs = cs - zf * p["ms"]
    bad2 = bad[:, None] + bad[None, :]
    dt = ata.dtype
    ata[:d, :d] += (s_i * ctc * s_j).to(dt) + bad2
    atx[:d, :d] += (s_i * ctx).to(dt) + bad2
    a_sum = (s64 * cs).to(dt) + bad
    ata[:d, d] += a_sum
    ata[d, :d] += a_sum
    atx[:d, d] += a_sum
    colsum[:d] += a_sum
    atx[d, :d] += xs.to(dt) + bad
    cnt = float(nr)  # an integer below 2^24: exact in fp32
    ata[d, d] += cnt
    atx[d, d] += cnt
    colsum[d] += cnt


def _fp64_update(x, ata, atx, colsum, scale, zero, qmax) -> None:
    """Inputs with no integer form (no quantizer, ``qmax > 255``): products in fp64, rounded
    once to the accumulators' dtype. Every backend runs this same code."""
    x32 = x.float()
    ones = torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)
    xt = torch.cat([x32.double(), ones], dim=1)
    a = xt if scale is None else torch.cat([fake_quant(x32, scale, zero, qmax).double(), ones], 1)
    aa = a.T @ a
    ata += aa.to(ata.dtype)
    atx += (aa if scale is None else a.T @ xt).to(atx.dtype)
    colsum += a.sum(0).to(colsum.dtype)


def has_integer_form(scale, qmax) -> bool:
    """Whether the input quantizer gives integer codes that fit the int8 decomposition."""
    return scale is not None and qmax is not None and int(qmax) <= MAX_QMAX


def gram_update(x: torch.Tensor, ata: torch.Tensor, atx: torch.Tensor, colsum: torch.Tensor,
                scale=None, zero=None, qmax: int | None = None, *, chunk_rows: int | None = None,
                n_slices: int = N_SLICES) -> None:
    """Accumulate ``A^T A``, ``A^T X~`` and ``sum A`` in place, exactly (see the module).

    Args:
        x: ``(N, D)`` float (fp32, bf16, fp16; fp64 is rounded to fp32 first).
        ata, atx: ``(D+1, D+1)`` accumulators (fp32 or fp64); colsum: ``(D+1,)``.
        scale, zero, qmax: the input quantizer, per-tensor (floats or one-element tensors) or
            per-channel ``(D,)``; without one, or with ``qmax > 255``, products in fp64.
        chunk_rows, n_slices: as :func:`erq_kernels.gram_int8.gram_update` (equal arguments
            give equal bits).
    The result is the exact statistic of the exact fake-quant values ``s (q - z)`` and of ``X``
    to ``2^-22`` of each column's largest entry, rounded once per chunk; non-finite ``x``
    gives NaN in the rows and columns of the affected features.
    """
    n, d = x.shape
    if n == 0:
        return None
    if not has_integer_form(scale, qmax):
        return _fp64_update(x, ata, atx, colsum, scale, zero, qmax)
    x = x.float()
    s, z, _ = quant_params(scale, zero, d, x.device)
    qmax = int(qmax)
    off = float((qmax + 1) // 2)
    frac = not integer_zero(zero)
    chunk = rows_per_chunk(qmax, d, not frac, chunk_rows, n_slices)
    lo, hi = torch.aminmax(x, dim=0)
    e, bad = col_exponent(lo, hi)
    sig = pow2(e).double()
    for r0 in range(0, n, chunk):
        xc = x[r0:r0 + chunk]
        k, clamped = codes(xc, s, z, qmax, off)
        k = k.double()
        xd = digits(xc, e, n_slices)
        ones = torch.ones(xc.shape[0], 1, dtype=torch.float64, device=x.device)
        left = [k, clamped.double()] if frac else [k]
        prod = torch.cat(left + [ones], 1).T @ torch.cat(left + [xd], 1)  # exact: see module
        kk, rest = prod[:d], prod[-1]
        p = {"nr": float(xc.shape[0]), "KK": kk[:, :d], "ks": rest[:d], "KX": kk[:, -d:], "xs": rest[-d:]}
        if frac:
            mrows = prod[d:2 * d]
            p.update(Km=kk[:, d:2 * d], mK=mrows[:, :d], mm=mrows[:, d:2 * d],
                     mX=mrows[:, -d:], ms=rest[d:2 * d])
        _combine(p, s.expand(d), z.expand(d), off, sig, bad, ata, atx, colsum, d)
    return None
