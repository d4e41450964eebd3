"""Triton kernel for the streamed Gram statistics of one layer (ERQ.md section 5).

``A = [Q_a(X), 1]`` and ``X~ = [X, 1]``; the kernel adds ``A^T A``, ``A^T X~`` and the column
sums of ``A`` to fp32 accumulators in place. ``X`` is read in row blocks; each block is
fake-quantized in registers and multiplied with ``tl.dot`` in tf32x3 (or IEEE) precision.

Work split: one program per pair of ``BT``-wide column tiles ``(m, n)`` with ``m >= n`` (``A^T A``
is symmetric, so its upper tiles are mirrored, not computed); that program also produces the two
``A^T X~`` tiles ``(m, n)`` and ``(n, m)``. The border (the ones column) is not tiled: its
entries are column sums, which the diagonal programs take from tiles they already hold, and
the corner is the row count. Every output element has exactly one owner, so results are
deterministic; when there are too few tile pairs to fill the GPU, rows are split across
programs that write private partial sums, added afterwards in a fixed order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _dispatch, _limits, reference
from .gram_exact import quant_params

__all__ = ["gram_update"]

# |y| <= 2^22 keeps (y + 1.5 * 2^23) inside [2^23, 2^24), where the fp32 spacing is exactly 1,
# so the add rounds y half-to-even to an integer and the subtract is exact: torch.round's rule
# without libdevice (which the interpreter lacks). Larger |y| are clamped first, which leaves
# clamp(round(y) + z, 0, qmax) unchanged as long as qmax and |z| are far below 2^22.
_RINT_MAGIC = tl.constexpr(12582912.0)
_RINT_LIMIT = tl.constexpr(4194304.0)


@triton.jit
def rint(y):
    """Round half to even (``torch.round``) for ``|y| <= 2^22``; larger values are clamped."""
    y = tl.minimum(tl.maximum(y, -_RINT_LIMIT), _RINT_LIMIT)
    return (y + _RINT_MAGIC) - _RINT_MAGIC


@triton.jit
def _fake_quant(x, s, z, qmax):
    """``(clamp(round(x / s) + z, 0, qmax) - z) * s`` with correctly rounded division."""
    r = rint(tl.math.div_rn(x, s))
    q = tl.minimum(tl.maximum(r + z, 0.0), qmax)
    return (q - z) * s


@triton.jit
def _acc_tile(ptr, rows, cols, ld, val, mask, ACCUM: tl.constexpr):
    p = ptr + rows * ld + cols
    if ACCUM:
        val += tl.load(p, mask=mask, other=0.0)
    tl.store(p, val, mask=mask)


@triton.jit
def _gram_kernel(
    x_ptr, s_ptr, z_ptr, pair_ptr, ata_ptr, atx_ptr, cs_ptr,
    N, D, stride_x, s_stride, qmax, rows_per_split, ws_stride,
    QUANT: tl.constexpr, ACCUM: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    tm = tl.load(pair_ptr + 2 * pid)
    tn = tl.load(pair_ptr + 2 * pid + 1)
    ld = D + 1
    cm = tm * BT + tl.arange(0, BT)
    cn = tn * BT + tl.arange(0, BT)
    mm = cm < D
    mn = cn < D
    if QUANT:
        s_m = tl.load(s_ptr + cm * s_stride, mask=mm, other=1.0)[None, :]
        z_m = tl.load(z_ptr + cm * s_stride, mask=mm, other=0.0)[None, :]
        s_n = tl.load(s_ptr + cn * s_stride, mask=mn, other=1.0)[None, :]
        z_n = tl.load(z_ptr + cn * s_stride, mask=mn, other=0.0)[None, :]

    acc_aa = tl.zeros((BT, BT), dtype=tl.float32)
    acc_ax = tl.zeros((BT, BT), dtype=tl.float32)
    acc_xa = tl.zeros((BT, BT), dtype=tl.float32)
    cs_a = tl.zeros((BT,), dtype=tl.float32)
    cs_x = tl.zeros((BT,), dtype=tl.float32)
    r0 = split * rows_per_split
    r1 = tl.minimum(N, r0 + rows_per_split)
    for k in range(r0, r1, BK):
        rk = k + tl.arange(0, BK)
        rmask = (rk < r1)[:, None]
        xrow = x_ptr + rk.to(tl.int64)[:, None] * stride_x
        xm = tl.load(xrow + cm[None, :], mask=rmask & mm[None, :], other=0.0).to(tl.float32)
        xn = tl.load(xrow + cn[None, :], mask=rmask & mn[None, :], other=0.0).to(tl.float32)
        if QUANT:
            # padding rows must stay zero: the quantizer maps 0 to a nonzero level when z is
            # outside [0, qmax]
            am = tl.where(rmask, _fake_quant(xm, s_m, z_m, qmax), 0.0)
            an = tl.where(rmask, _fake_quant(xn, s_n, z_n, qmax), 0.0)
            acc_aa = tl.dot(tl.trans(am), an, acc_aa, input_precision=PREC)
            acc_ax = tl.dot(tl.trans(am), xn, acc_ax, input_precision=PREC)
            acc_xa = tl.dot(tl.trans(an), xm, acc_xa, input_precision=PREC)
            cs_a += tl.sum(am, axis=0)
        else:
            acc_aa = tl.dot(tl.trans(xm), xn, acc_aa, input_precision=PREC)
        cs_x += tl.sum(xm, axis=0)
    if not QUANT:
        acc_ax = acc_aa
        acc_xa = tl.trans(acc_aa)  # stored as the (n, m) tile
        cs_a = cs_x

    ata = ata_ptr + split * ws_stride
    atx = atx_ptr + split * ws_stride
    m2 = mm[:, None] & mn[None, :]
    _acc_tile(ata, cm[:, None], cn[None, :], ld, acc_aa, m2, ACCUM)
    _acc_tile(atx, cm[:, None], cn[None, :], ld, acc_ax, m2, ACCUM)
    if tm != tn:
        # upper tiles: A^T A mirrored, A^T X~ from its own product (A_n^T X_m)
        _acc_tile(ata, cn[None, :], cm[:, None], ld, acc_aa, m2, ACCUM)
        _acc_tile(atx, cn[:, None], cm[None, :], ld, acc_xa, mn[:, None] & mm[None, :], ACCUM)
    else:
        # the ones column/row: sums of A (A^T 1 and 1^T A) and of X (1^T X~)
        _acc_tile(ata, cm, D, ld, cs_a, mm, ACCUM)
        _acc_tile(ata, D, cm, ld, cs_a, mm, ACCUM)
        _acc_tile(atx, cm, D, ld, cs_a, mm, ACCUM)
        _acc_tile(atx, D, cm, ld, cs_x, mm, ACCUM)
        if ACCUM:
            _acc_tile(cs_ptr, 0, cm, 0, cs_a, mm, ACCUM)
        if tm == 0:
            # corner: the number of rows (sum of the ones column)
            cnt = (r1 - r0).to(tl.float32)
            corner = D * ld + D
            if ACCUM:
                tl.store(ata + corner, tl.load(ata + corner) + cnt)
                tl.store(atx + corner, tl.load(atx + corner) + cnt)
                tl.store(cs_ptr + D, tl.load(cs_ptr + D) + cnt)
            else:
                tl.store(ata + corner, cnt)
                tl.store(atx + corner, cnt)


_PAIRS: dict = {}


def _pairs(t: int, device: torch.device) -> torch.Tensor:
    key = (t, str(device))
    if key not in _PAIRS:
        p = [(i, j) for i in range(t) for j in range(i + 1)]
        _PAIRS[key] = torch.tensor(p, dtype=torch.int32, device=device).reshape(-1)
    return _PAIRS[key]


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def launch_config(n: int, d: int, device: torch.device, bt: int | None = None,
                  bk: int | None = None, split: int | None = None) -> dict:
    """Tile sizes and the number of row splits for ``n`` rows of ``d`` features."""
    bt = bt or (32 if device.type != "cuda" or d <= 64 else 64)
    bk = bk or 32
    t = triton.cdiv(d, bt)
    pairs = t * (t + 1) // 2
    if split is None:
        # enough programs for two per SM, but each split at least 8 row blocks so the partial
        # sums (2 (D+1)^2 floats per split) stay small next to X
        split = max(1, min(triton.cdiv(2 * _num_sms(device), pairs), n // (8 * bk), 64))
    rows = triton.cdiv(triton.cdiv(n, split), bk) * bk
    split = triton.cdiv(n, rows)
    return {"bt": bt, "bk": bk, "t": t, "split": split, "rows": rows}


def gram_update(x: torch.Tensor, ata: torch.Tensor, atx: torch.Tensor, colsum: torch.Tensor,
                scale=None, zero=None, qmax: int | None = None, *,
                precision: str = "tf32x3", bt: int | None = None, bk: int | None = None,
                split: int | None = None, num_warps: int = 4,
                num_stages: int | None = None) -> None:
    """Accumulate ``A^T A``, ``A^T X~`` and ``sum A`` in place; see :func:`reference.gram_update`.

    Args:
        x: ``(N, D)`` fp32, bf16 or fp16 (converted to fp32 in registers).
        ata, atx: ``(D+1, D+1)`` fp32 accumulators, contiguous; colsum: ``(D+1,)`` fp32.
        scale, zero, qmax: per-tensor (floats or one-element tensors) or per-channel (``(D,)``
            tensors) quantizer, or ``scale=None`` for ``A = X~``. ``zero`` may be fractional.
        precision: ``"tf32x3"`` or ``"ieee"`` products (never plain TF32).
        bt, bk, split, num_warps, num_stages: tuning (defaults from :func:`launch_config`
            and Triton).
    fp64 accumulators or non-contiguous ones go to the reference.
    """
    if precision not in ("tf32x3", "ieee"):
        raise ValueError(f"precision must be tf32x3 or ieee, got {precision!r}")
    # (D + 1)^2 accumulators past 32-bit offsets (D >= 46k) go to the reference too
    if (any(t.dtype != torch.float32 or not t.is_contiguous() for t in (ata, atx, colsum))
            or not x.is_floating_point() or x.dtype == torch.float64
            or not _limits.linalg_fits(1, ata.shape[-1])):
        return reference.gram_update(x, ata, atx, colsum, scale, zero, qmax)
    n, d = x.shape
    if n == 0:
        return None
    if x.stride(1) != 1:
        x = x.contiguous()
    quant = scale is not None
    if quant:
        s_t, z_t, s_stride = quant_params(scale, zero, d, x.device)
    else:
        s_t = z_t = ata  # unused
        s_stride = 0
    cfg = launch_config(n, d, x.device, bt, bk, split)
    if cfg["split"] > 1 and cfg["split"] * 2 * (d + 1) ** 2 >= _limits.INT32:
        # the split workspace's offsets are 32-bit (only an explicit split gets this far)
        return reference.gram_update(x, ata, atx, colsum, scale, zero, qmax)
    pairs = _pairs(cfg["t"], x.device)
    grid = (pairs.numel() // 2, cfg["split"])
    accum = cfg["split"] == 1
    if accum:
        out_aa, out_ax, ws_stride = ata, atx, 0
    else:
        ws = torch.empty((cfg["split"], 2, d + 1, d + 1), dtype=torch.float32, device=x.device)
        out_aa, out_ax, ws_stride = ws[:, 0], ws[:, 1], 2 * (d + 1) * (d + 1)
    _gram_kernel[grid](
        x, s_t, z_t, pairs, out_aa, out_ax, colsum,
        n, d, x.stride(0), s_stride, float(qmax) if quant else 0.0, cfg["rows"], ws_stride,
        QUANT=quant, ACCUM=accum, BT=cfg["bt"], BK=cfg["bk"], PREC=precision,
        num_warps=num_warps, **({} if num_stages is None else {"num_stages": num_stages}),
    )
    if not accum:
        inc = ws.sum(0)  # fixed order over splits: deterministic
        ata.add_(inc[0])
        atx.add_(inc[1])
        colsum.add_(inc[0][:, d])
    return None


_dispatch.register("gram_update", "triton", gram_update)
