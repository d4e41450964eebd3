"""Quantized linear layers on the int8 tensor cores: ``fake_quant(x) @ W^T + bias`` computed
from integer codes, for 16-bit activations of a per-tensor uniform quantizer of at most 7 bits
and weights of at most 7 bits with one or two column groups (dual uniform quantization).

Layout. :func:`pack_weight` stores ``W = scale[n, g(k)] * L[n, k]`` as the int8 levels ``L``
(``codes - zero``), their columns reordered so that each group is one contiguous segment
(group 0 in ``[0, k0)``, group 1 in ``[k0, kp)``, each padded with zero columns to a multiple
of 32), the two row scales and the levels' row sums per group.

Activations. One Triton pass writes, in the packed column order, the int8 value
``v = rint(mult * (q - z) + off)`` of each activation, with ``q = clamp(rint(x / s) + z, 0,
qmax)`` computed exactly as the reference, ``mult = 128 / (qmax + 1)`` (1 at 7 bits, 8 at 4
bits) and ``off`` the integer that centres the range (so ``|v| <= 64`` for any zero point).

GEMM. One Triton int8 GEMM accumulates each segment in exact int32 and dequantizes in the
epilogue: ``y = s / mult * sum_g scale[:, g] * (acc_g - off * rowsum_g) + bias`` (fp32, then
the output dtype).

Numerics. Where ``z`` is an integer (every quantizer without reparameterization) and where
an activation is not clamped, ``mult * (q - z)`` is an integer and the products are exact: the
result is the exact value of ``fake_quant(x) @ W^T`` up to the epilogue's fp32 rounding, more
accurate than the bf16 GEMM of the dequantized operands. The reparameterized inputs of
``qkv`` / ``fc1`` have fractional zero points, and an activation clamped at ``-z`` or
``qmax - z`` is then off the integer lattice: ``v`` rounds it to ``1 / mult`` of a step
(error at most ``s / (2 mult)``, on the 0.2-0.4 % of ViT-Ti's activations that are clamped,
``benchmarks/results/probe_clamp_levels_w4a4.json``), where bf16 rounds the same value to
2^-9 of itself. This is the bf16 backend's contract, not fp32's: fp32 layers never take it.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

from . import _dispatch, _limits
from ._int8_linear_kernels import int8_codes_gather_kernel, int8_codes_kernel, int8_linear_kernel
from ._launch import CachedLaunch, align_key

__all__ = ["Int8Weight", "pack_weight", "int8_linear", "int8_linear_reference", "act_mult"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
PAD = 32  # segment alignment in packed columns (int8 rows stay 32-byte aligned)
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class Int8Weight(NamedTuple):
    """A weight packed by :func:`pack_weight` (all tensors on the weight's device)."""
    levels: torch.Tensor  # (N, kp) int8, columns in packed order, padding 0
    perm: torch.Tensor | None  # (kp,) int32 source column of each packed column, -1 padding
    k0: int  # packed columns of group 0
    scale: torch.Tensor  # (N, 2) fp32 row scale of each group
    rowsum: torch.Tensor  # (N, 2) int32 row sums of the levels of each group
    in_features: int


def _ceil(v: int, m: int) -> int:
    return -(-v // m) * m


def act_mult(qmax) -> int | None:
    """``128 / (qmax + 1)`` for a ``b``-bit quantizer (``qmax = 2^b - 1``, ``b <= 7``), else
    ``None`` (no int8 form)."""
    try:
        q = int(qmax)
    except (TypeError, ValueError):
        return None
    if q != qmax or q < 1 or q > 127 or (q + 1) & q:
        return None
    return 128 // (q + 1)


@torch.no_grad()
def pack_weight(levels: torch.Tensor, scale: torch.Tensor,
                group: torch.Tensor | None = None) -> Int8Weight:
    """Pack ``W[n, k] = scale[g(k), n] * levels[n, k]`` for :func:`int8_linear`.

    Args:
        levels: ``(N, K)`` integer-valued (any dtype), ``|levels| <= 127``: the weight codes
            minus their zero points.
        scale: ``(N,)`` or ``(G, N)`` with ``G`` 1 or 2 (as ``erq.quantizers.WeightQuantizer``
            stores it), positive and finite.
        group: ``(K,)`` 0/1 group of each column, or ``None`` (all group 0).
    Raises:
        ValueError: levels not integers within int8's symmetric range, or shapes that do not
            match (checked on the host once per packing).
    """
    if levels.dim() != 2:
        raise ValueError(f"levels must be (N, K), got {tuple(levels.shape)}")
    n, k = levels.shape
    lv = levels.double()
    if not bool(torch.isfinite(lv).all()) or not torch.equal(lv, lv.round()) \
            or bool((lv.abs() > 127).any()):
        raise ValueError("levels must be integers in [-127, 127]")
    sc = scale.reshape(-1, n).float() if scale.numel() % max(n, 1) == 0 else None
    if sc is None or sc.shape[0] not in (1, 2):
        raise ValueError(f"scale of shape {tuple(scale.shape)} does not fit {n} rows")
    if not bool(torch.isfinite(sc).all()) or bool((sc <= 0).any()):
        raise ValueError("weight scales must be positive and finite")
    dev = levels.device
    if group is not None and group.numel() != k:
        raise ValueError(f"group has {group.numel()} entries for {k} columns")
    if group is None or not bool(group.bool().any()):
        kp = _ceil(max(k, 1), PAD)
        packed = torch.zeros(n, kp, dtype=torch.int8, device=dev)
        packed[:, :k] = levels.to(torch.int8)
        rs = torch.stack([lv.sum(1), torch.zeros_like(lv[:, 0])], 1)
        perm, k0 = None, kp
    else:
        if sc.shape[0] != 2:
            raise ValueError("two column groups need a (2, N) scale")
        g = group.to(dev).bool()
        cols = [torch.nonzero(~g).flatten(), torch.nonzero(g).flatten()]
        k0 = _ceil(cols[0].numel(), PAD)
        kp = k0 + _ceil(cols[1].numel(), PAD)
        perm = torch.full((kp,), -1, dtype=torch.int32, device=dev)
        packed = torch.zeros(n, kp, dtype=torch.int8, device=dev)
        rs = []
        for start, c in zip((0, k0), cols):
            perm[start:start + c.numel()] = c.to(torch.int32)
            packed[:, start:start + c.numel()] = levels[:, c].to(torch.int8)
            rs.append(lv[:, c].sum(1))
        rs = torch.stack(rs, 1)
    wscale = sc.T.expand(n, 2) if sc.shape[0] == 1 else sc.T
    return Int8Weight(packed, perm, k0, wscale.contiguous(), rs.to(torch.int32).contiguous(), k)


def _act_params(scale, zero, device):
    out = []
    for v in (scale, zero):
        t = v if torch.is_tensor(v) else torch.tensor(float(v))
        if t.numel() != 1:
            raise ValueError("the int8 linear layer needs a per-tensor activation quantizer")
        out.append(t.reshape(1).to(device=device, dtype=torch.float32))
    return out


def _check(x, w, qmax):
    if x.shape[-1] != w.in_features:
        raise ValueError(f"x {tuple(x.shape)} does not match a weight of {w.in_features} columns")
    if x.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {x.dtype}")
    mult = act_mult(qmax)
    if mult is None:
        raise ValueError(f"qmax {qmax} has no int8 form (a uniform quantizer of 1 to 7 bits)")
    return mult


def act_values_reference(x2, w: Int8Weight, s, z, qmax, mult) -> torch.Tensor:
    """The int8 activation values of :func:`int8_linear` in packed order, ``(M, kp)`` int8."""
    xf = x2.float()
    lim = s * 4194304.0
    xf = torch.minimum(torch.maximum(xf, -lim), lim)
    q = torch.clamp(torch.round(xf / s) + z, 0, qmax)
    off = torch.round(mult * (z - qmax * 0.5))
    v = torch.clamp(torch.round(mult * (q - z) + off), -127, 127).to(torch.int8)
    kp = w.levels.shape[1]
    out = torch.zeros(x2.shape[0], kp, dtype=torch.int8, device=x2.device)
    if w.perm is None:
        out[:, :w.in_features] = v
    else:
        ok = w.perm >= 0
        out[:, ok] = v[:, w.perm[ok].long()]
    return out


def int8_linear_reference(x, w: Int8Weight, bias, scale, zero, qmax) -> torch.Tensor:
    """What :func:`int8_linear` computes, in torch: the same int8 values, their products
    summed exactly (fp64), the epilogue in fp64. ``(..., N)`` in ``x``'s dtype."""
    mult = _check(x, w, qmax)
    s, z = _act_params(scale, zero, x.device)
    x2 = x.reshape(-1, x.shape[-1])
    v = act_values_reference(x2, w, s, z, qmax, mult).double()
    lv = w.levels.double()
    off = torch.round(mult * (z - qmax * 0.5)).double()
    y = 0
    for g, (lo, hi) in enumerate(((0, w.k0), (w.k0, lv.shape[1]))):
        acc = v[:, lo:hi] @ lv[:, lo:hi].T - off * w.rowsum[:, g].double()
        y = y + acc * w.scale[:, g].double()
    y = y * (s.double() / mult)
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# Triton
# ---------------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=warps,
                         num_stages=stages)


_CONFIGS = [_cfg(128, 256, 128, 8, 3), _cfg(128, 128, 128, 8, 3), _cfg(128, 128, 128, 8, 4),
            _cfg(128, 128, 64, 8, 4), _cfg(64, 128, 128, 4, 4), _cfg(64, 256, 128, 8, 3)]
_INTERP_CONFIG = {"BM": 32, "BN": 32, "BK": 32, "GROUP_M": 4}
_TUNER = None
_CODES_LAUNCH = CachedLaunch(int8_codes_kernel)
_GATHER_LAUNCH = CachedLaunch(int8_codes_gather_kernel)
_CODES_BLOCK = (32, 64) if _INTERPRET else (64, 128)
_GATHER_BLOCK = (8, 32) if _INTERPRET else (8, 128)


def _gemm_launch() -> CachedLaunch:
    global _TUNER
    if _TUNER is None:
        # M is left out of the key, as for the fused fake-quant GEMM: it changes with the batch
        tuner = triton.autotune(configs=_CONFIGS, key=["N", "K0", "KP", "HAS_BIAS", "TWO_GROUPS"])(
            int8_linear_kernel)
        _TUNER = CachedLaunch(int8_linear_kernel, tuner)
    return _TUNER


def act_values(x2, w: Int8Weight, s, z, qmax, mult) -> torch.Tensor:
    """The Triton pass of :func:`act_values_reference`: ``x2`` ``(M, K)`` with unit column
    stride, ``s``/``z`` one-element fp32 tensors; ``(M, kp)`` int8."""
    m, k = x2.shape
    kp = w.levels.shape[1]
    v = torch.empty(m, kp, device=x2.device, dtype=torch.int8)
    if w.perm is None:
        bm, bk = _CODES_BLOCK
        args = (x2, v, m, k, kp, x2.stride(0), s, z, float(qmax), float(mult))
        consts = {"FAST_DIV": not _INTERPRET, "BM": bm, "BK": bk}
        _CODES_LAUNCH(((m + bm - 1) // bm, (kp + bk - 1) // bk), align_key(*args),
                      args, consts, num_warps=4)
    else:
        bm, bk = _GATHER_BLOCK
        args = (x2, v, w.perm, m, kp, x2.stride(0), s, z, float(qmax), float(mult))
        consts = {"FAST_DIV": not _INTERPRET, "BM": bm, "BK": bk}
        _GATHER_LAUNCH(((m + bm - 1) // bm,), align_key(*args), args, consts,
                       num_warps=4)
    return v


def int8_linear(x, w: Int8Weight, bias, scale, zero, qmax, *, config=None) -> torch.Tensor:
    """``fake_quant(x, scale, zero, qmax) @ W^T + bias`` on the int8 tensor cores.

    Args:
        x: ``(..., K)`` bf16, fp16 or fp32 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        w: the packed weight (:func:`pack_weight`) on ``x``'s device.
        bias: ``(N,)`` or ``None`` (added in fp32).
        scale, zero, qmax: the per-tensor activation quantizer (numbers or one-element
            tensors, read on the device), ``qmax = 2^b - 1`` with ``b <= 7``.
        config: a fixed GEMM tile dict (``BM``, ``BN``, ``BK``, ``GROUP_M``) instead of
            autotuning (tests).
    Returns:
        ``(..., N)`` in ``x``'s dtype. Numerics: module docstring.
    """
    mult = _check(x, w, qmax)
    s, z = _act_params(scale, zero, x.device)
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.shape[-1] and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n, kp = x2.shape[0], w.levels.shape[0], w.levels.shape[1]
    if max(m * kp, m * n, _limits.span(x2) + 1) >= _limits.INT32:
        return int8_linear_reference(x, w, bias, scale, zero, qmax)
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    if m == 0 or n == 0:
        return out.reshape(*x.shape[:-1], n)
    v = act_values(x2, w, s, z, qmax, mult)
    if bias is not None:
        bias = bias.contiguous()
    args = (v, w.levels, w.scale, w.rowsum, bias if bias is not None else out, out, s, z,
            m, n, w.k0, kp, out.stride(0), float(qmax), float(mult))
    flags = {"HAS_BIAS": bias is not None, "TWO_GROUPS": w.k0 < kp,
             "EMULATE": _INTERPRET and x.dtype != torch.float32}
    if config is None and _INTERPRET:
        config = _INTERP_CONFIG
    if config is not None:
        grid = (triton.cdiv(m, config["BM"]) * triton.cdiv(n, config["BN"]),)
        int8_linear_kernel[grid](*args, **flags, **config)
    else:
        def grid(meta):
            return (-(-m // meta["BM"]) * -(-n // meta["BN"]),)

        key = (n, w.k0, kp, align_key(*args), tuple(flags.values()))
        _gemm_launch()(grid, key, args, flags)
    return out.reshape(*x.shape[:-1], n)


def fake_quant_linear_int8(x, weight, bias, scale=None, zero=None, qmax=None, packed=None):
    """The ``"int8"`` backend of ``erq_kernels.fake_quant_linear``: :func:`int8_linear` where
    the caller passes the packed weight (or a function returning it, called here) and the layer
    has an int8 form (16-bit ``x``, a per-tensor quantizer of at most 7 bits); the Triton
    fake-quant path otherwise."""
    from .fakequant import fake_quant_linear
    if (packed is None or x.dtype == torch.float32 or scale is None or act_mult(qmax) is None
            or any(torch.is_tensor(t) and t.numel() != 1 for t in (scale, zero))):
        return fake_quant_linear(x, weight, bias, scale, zero, qmax)
    if callable(packed):
        packed = packed()
        if packed is None:
            return fake_quant_linear(x, weight, bias, scale, zero, qmax)
    return int8_linear(x, packed, bias, scale, zero, qmax)


fake_quant_linear_int8.takes_packed = True
_dispatch.register("fake_quant_linear", "int8", fake_quant_linear_int8)
