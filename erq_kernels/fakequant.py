"""Fake-quantized matmuls on Triton: the linear layers and the two attention matmuls.

* ``fake_quant_linear(x, weight, bias, scale, zero, qmax)``: ``fake_quant(x) @ weight.T + bias``
  with ``x (..., K)``, ``weight (N, K)`` already on its grid (dequantized).
* ``fake_quant_matmul(a, b, a_quant, b_quant)``: ``Q_a(a) @ Q_b(b)`` batched over leading dims
  (``q @ k^T`` with uniform quantizers, ``P @ v`` with the log-sqrt(2) quantizer on ``P``).
* ``fake_quant_tensor(x, quant)``: ``Q(x)`` in one pass.

A quantizer is ``("uniform", scale, zero, qmax)``, ``("log2", scale, n_bits)`` or ``None``
(:func:`erq_kernels.reference.fake_quant_matmul`). Scale and zero are Python numbers (fp32
kernel arguments) or tensors (read on the device, no host sync): one value, or for the left
operand / the tensor ``K`` values (per channel along the last dimension).

Strategies (``strategy=``; :func:`default_strategy` picks one per op, dtype and quantizer from
the H200 measurements in ``benchmarks/results/fakequant.json``):

* ``"fused"``: one kernel, the operand tiles quantized in the prologue, bias in the epilogue.
  The prologue is recomputed for every column tile (N / BLOCK_N times), which makes it
  ALU-bound against bf16 tensor cores.
* ``"prequant"``: one Triton pass writes ``Q(x)`` in ``x``'s dtype (read 1x, write 1x), then
  the torch GEMM (cuBLAS; fp32 with TF32 off, i.e. IEEE SGEMM).
* ``"prequant_triton"``: the same pass, then the kernel above without quantizers (fp32:
  tf32x3 tensor-core products).

16-bit linear layers have one more backend, the int8 tensor cores
(:mod:`erq_kernels.int8_linear`), which ``erq_kernels.fake_quant_linear`` picks per shape from
the dispatch table when the caller passes the packed weight.

Launches: the one-pass quantizers and the autotuned fused GEMM are launched from their cached
compiled kernels (:mod:`erq_kernels._launch`: 3-34 us less host time per call on the H200
machine, the same bits), which matters where a layer's GPU work is tens of microseconds.
Problems past the kernels' 32-bit offsets run the reference (quantizer) or the torch-GEMM
strategy (:mod:`erq_kernels._limits`).

Numerics (every strategy). The quantization is done in fp32 exactly as the reference writes it:
``x / scale`` correctly rounded (Markstein's reciprocal-and-FMA correction on GPU, ``div_rn``
in the interpreter; the plain Triton ``/`` is approximate), rounding half-to-even like
``torch.round``, dequantized value ``(q - zero) * scale``; the quantized operand is
bit-identical to ``reference.fake_quant`` of the fp32 input (torch on CUDA divides by a
Python-number scale through its reciprocal; by a tensor scale exactly, like this module). fp32
products are IEEE-class (tf32x3 or SGEMM, never plain TF32). bf16/fp16 inputs are upcast,
quantized in fp32 and rounded once to the input dtype, products accumulate in fp32 (eager bf16
``fake_quant`` rounds every step to bf16 instead, so its values differ by bf16 ulps). The
log-sqrt(2) level uses ``tl.log2`` (hardware approximation on GPU): it matches the reference
except where ``-2 log2(x / s)`` lies within ~1e-6 of a half-integer. NaN inputs quantize to a
saturated level, not NaN.
"""
from __future__ import annotations

import math
import numbers
import os

import torch
import torch.nn.functional as F
import triton

from . import _dispatch, _limits
from ._fakequant_kernels import fq_flat_kernel, fq_matmul_kernel, fq_tensor_kernel
from ._launch import CachedLaunch, align_key
from .reference import _apply_quant, _ieee_matmul

__all__ = ["fake_quant_linear", "fake_quant_matmul", "fake_quant_tensor"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_NONE, _UNIFORM, _LOG2 = 0, 1, 2
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # operand dtypes the kernels take
_P_SCALAR, _P_ONE, _P_VEC = 0, 1, 2  # parameters: kernel scalars, one value, K values
STRATEGIES = ("fused", "prequant", "prequant_triton")
# the one-pass quantizers, launched without the JIT's per-call binding where the installed
# Triton allows it (_launch.py): on small tensors the launch costs more host time than the pass
_FLAT_LAUNCH = CachedLaunch(fq_flat_kernel)
_TENSOR_LAUNCH = CachedLaunch(fq_tensor_kernel)


def default_strategy(op: str, dtype, a_quant=None) -> str:
    """The strategy the Triton backend runs (timings: ``benchmarks/bench_fakequant.py`` on an
    H200, 2026-11-27, ViT-B/H shapes, benchmarks/results/fakequant*.json).

    fp32: prequant for both ops — the one-pass Triton quantizer is bit-exact against the
    reference and the GEMM is the same IEEE cuBLAS call as the eager path, so fp32 results are
    *bit-identical* to the reference backend (a W4A4 ViT is chaotic at the ulp level: the fused
    GEMM, 1.4-2.0x eager, changed 17 % of ViT-Ti's predictions and its top-1 by 0.2-1.0 point;
    prequant is 1.07-1.42x eager on linear layers, 2.2-6.4x on attention). bf16 linear:
    prequant (1.0-6.2x; fused 0.6-3.8x). bf16 attention: ``q @ k^T`` fused (2.4-4.2x),
    ``P @ v`` (log2 quantizer, whose prologue is the costliest) prequant (4.9-6.4x).
    """
    fp32 = dtype == torch.float32
    if op == "linear":
        return "prequant"
    if fp32 or (a_quant is not None and a_quant[0] == "log2"):
        return "prequant"
    return "fused"


# ---------------------------------------------------------------------------------------------
# Launch configurations
# ---------------------------------------------------------------------------------------------

def _cfg(bm, bn, bk, warps, stages, swap=False):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "SWAP": swap},
                         num_warps=warps, num_stages=stages)


# Few candidates each (compile time counts). SWAP computes C^T so that a quantized tile is the
# shared-memory operand of the Hopper wgmma (a register operand produced by the prologue makes
# ptxas serialize the wgmma, warning C7515); the autotuner decides.
_CONFIGS = {
    ("large", True): [_cfg(128, 128, 32, 8, 3), _cfg(128, 128, 32, 8, 3, True),
                      _cfg(64, 128, 32, 4, 4)],
    ("large", False): [_cfg(128, 256, 64, 8, 3), _cfg(128, 256, 64, 8, 3, True),
                       _cfg(128, 128, 64, 8, 4), _cfg(128, 128, 64, 8, 4, True)],
    ("small", True): [_cfg(64, 64, 32, 4, 3), _cfg(128, 64, 32, 4, 3), _cfg(64, 128, 32, 4, 3)],
    ("small", False): [_cfg(64, 64, 64, 4, 3), _cfg(128, 64, 64, 4, 3), _cfg(64, 128, 64, 4, 3)],
}
_INTERP_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "SWAP": False}
_TUNED = {}


def _tuned_kernel(kind: str, fp32: bool) -> CachedLaunch:
    """The autotuned fused kernel for ``kind`` and dtype class, behind a cached launch."""
    key = (kind, fp32)
    if key not in _TUNED:
        # M is left out of the large-problem key: the token count changes with the batch and
        # re-tuning each time would cost more than it wins.
        tune_key = ["N", "K", "A_QUANT", "B_QUANT", "HAS_BIAS"]
        if kind == "small":
            tune_key = ["M"] + tune_key
        tuner = triton.autotune(configs=_CONFIGS[key], key=tune_key)(fq_matmul_kernel)
        _TUNED[key] = CachedLaunch(fq_matmul_kernel, tuner)
    return _TUNED[key]


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------

def _param_tensor(v, device, numel):
    t = v if torch.is_tensor(v) else torch.full((1,), float(v), device=device)
    t = t.to(device=device, dtype=torch.float32).reshape(-1)
    if t.numel() not in (1, numel):
        raise ValueError(f"quantizer parameter has {t.numel()} values, expected 1 or {numel}")
    return t.expand(numel).contiguous() if t.numel() != numel else t.contiguous()


def _parse_quant(q, device, k: int, allow_vec: bool):
    """(mode, param_mode, scale, zero, qmax_or_levels) kernel arguments for one quantizer."""
    if q is None:
        return _NONE, _P_SCALAR, 1.0, 0.0, 0.0
    kind = q[0]
    if kind == "uniform":
        _, s, z, qmax = q
        mode, last = _UNIFORM, float(qmax)
    elif kind == "log2":
        _, s, n_bits = q
        if not 1 <= int(n_bits) <= 8:
            raise ValueError(f"log2 quantizer supports 1..8 bits, got {n_bits}")
        z, mode, last = 0.0, _LOG2, float(2 ** int(n_bits))
    else:
        raise ValueError(f"unknown quantizer kind {kind!r}")
    if isinstance(s, numbers.Real) and isinstance(z, numbers.Real):
        return mode, _P_SCALAR, float(s), float(z), last
    n = max(torch.as_tensor(s).numel(), torch.as_tensor(z).numel())
    if n == 1:
        return mode, _P_ONE, _param_tensor(s, device, 1), _param_tensor(z, device, 1), last
    if not allow_vec or n != k:
        raise ValueError(f"per-channel quantizer with {n} values not supported here")
    return mode, _P_VEC, _param_tensor(s, device, k), _param_tensor(z, device, k), last


def _check_dtypes(a, b):
    if a.dtype != b.dtype:
        raise TypeError(f"operand dtypes differ: {a.dtype} and {b.dtype}")
    if a.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {a.dtype}")


def _strategy(op, dtype, strategy, a_quant=None):
    strategy = strategy or default_strategy(op, dtype, a_quant)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

def _launch(a, b, bias, out, a_quant, b_quant, kind, precision=None, config=None):
    """Fused kernel. a (G0, G1, M, K), b (G0, G1, K, N), out (G0, G1, M, N): any strides."""
    g0, g1, m, k = a.shape
    n = b.shape[-1]
    _check_dtypes(a, b)
    fp32 = a.dtype == torch.float32
    aq, ap, a_s, a_z, a_last = _parse_quant(a_quant, a.device, k, allow_vec=True)
    bq, bp, b_s, b_z, b_last = _parse_quant(b_quant, a.device, k, allow_vec=False)
    if m == 0 or n == 0 or g0 * g1 == 0:
        return out
    args = (a, b, bias if bias is not None else out, out, m, n, k, g1,
            *a.stride(), *b.stride(), *out.stride(), a_s, a_z, a_last, b_s, b_z, b_last)
    flags = dict(A_QUANT=aq, A_PARAM=ap, B_QUANT=bq, B_PARAM=bp, HAS_BIAS=bias is not None,
                 PRECISION=precision or ("tf32x3" if fp32 else "none"),
                 EMULATE=_INTERPRET and not fp32, FAST_DIV=not _INTERPRET)
    if config is None and _INTERPRET:
        config = _INTERP_CONFIG
    if config is not None:
        cfg = {"GROUP_M": 8, "SWAP": False, **config}
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]), g0 * g1)
        fq_matmul_kernel[grid](*args, **flags, **cfg)
        return out

    def grid(meta):
        return (-(-m // meta["BLOCK_M"]) * -(-n // meta["BLOCK_N"]), g0 * g1)

    # the autotuner's key (N, K, M for "small", the flags, the dtypes) and what Triton
    # specializes on (align_key: M's divisibility, not its value, for "large")
    key = (kind, m if kind == "small" else None, n, k, align_key(*args), tuple(flags.values()))
    _tuned_kernel(kind, fp32)(grid, key, args, flags)
    return out


def fake_quant_tensor(x: torch.Tensor, quant) -> torch.Tensor:
    """``Q(x)`` in one pass: a new contiguous tensor of ``x``'s shape and dtype.

    Args:
        x: fp32, bf16 or fp16, any strides (up to 4 dims without a copy).
        quant: ``("uniform", scale, zero, qmax)`` (per-tensor or per channel along the last
            dim), ``("log2", scale, n_bits)`` or ``None`` (returns ``x`` itself).
    """
    if quant is None:
        return x
    flat = _flat_args(x, quant)
    if flat is not None:  # the common case, with as little host work as possible
        y = torch.empty_like(x)
        block = 1024 if _INTERPRET else 2048
        n = x.numel()
        s, z, qmax = flat
        consts = {"EMULATE": _INTERPRET and x.dtype != torch.float32, "FAST_DIV": not _INTERPRET,
                  "BLOCK": block}
        # what Triton specializes the runtime arguments on (align_key, written out: this is
        # the hot path; n < 2^31 and qmax a float by _flat_args); the constexprs follow from
        # x's dtype. Plain integer division: triton.cdiv is a constexpr function, 2 us a call.
        key = (x.dtype, x.data_ptr() % 16 == 0, y.data_ptr() % 16 == 0, n % 16 == 0, n == 1,
               s.dtype, s.data_ptr() % 16 == 0, z.dtype, z.data_ptr() % 16 == 0)
        _FLAT_LAUNCH(((n + block - 1) // block,), key, (x, y, n, s, z, qmax), consts,
                     num_warps=4)
        return y
    if x.dtype not in _DTYPES:
        raise TypeError(f"unsupported dtype {x.dtype}")
    k = x.shape[-1] if x.dim() else 1
    mode, pm, s, z, last = _parse_quant(quant, x.device, k, allow_vec=True)
    if max(x.numel(), _limits.span(x) + 1) >= _limits.INT32:
        # beyond the kernel's 32-bit offsets: the reference on the kernel's fp32 values, with
        # tensor parameters (torch divides by them exactly, as the kernel does)
        st, zt = (torch.as_tensor(v, dtype=torch.float32, device=x.device) for v in (s, z))
        q = ("uniform", st, zt, last) if mode == _UNIFORM else ("log2", st, quant[2])
        return _apply_quant(x.float(), q).to(x.dtype).contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x.numel() == 0:
        return y
    x4 = x.reshape(-1, *x.shape[-3:]) if x.dim() > 4 else x
    while x4.dim() < 4:
        x4 = x4.unsqueeze(0)
    block = 1024 if _INTERPRET else 2048
    args = (x4, y, x.numel(), x4.shape[1], x4.shape[2], x4.shape[3], *x4.stride(), s, z, last)
    consts = {"QUANT": mode, "PARAM": pm, "CONTIG": x4.is_contiguous(),
              "EMULATE": _INTERPRET and x.dtype != torch.float32, "FAST_DIV": not _INTERPRET,
              "BLOCK": block}
    _TENSOR_LAUNCH(((x.numel() + block - 1) // block,),
                   (align_key(*args), mode, pm, consts["CONTIG"]), args, consts, num_warps=4)
    return y


def _flat_args(x, quant):
    """``(scale, zero, qmax)`` for :data:`fq_flat_kernel` when ``x`` is contiguous,
    non-empty and of a supported dtype and the quantizer's parameters are one-element float
    tensors on ``x``'s device (what the quantizer modules hold); ``None`` otherwise."""
    if (not x.is_contiguous() or x.dtype not in _DTYPES or x.numel() == 0
            or x.numel() >= _limits.INT32):
        return None
    # uniform only: with the log2 quantizer this kernel measured slower than the general one
    # in bf16 (P @ v of ViT-H: 0.62 vs 0.20 ms per op, benchmarks/RESULTS.md)
    if quant[0] != "uniform" or len(quant) != 4:
        return None
    s, z = quant[1], quant[2]
    for t in (s, z):
        if not (torch.is_tensor(t) and t.numel() == 1 and t.dtype in _DTYPES
                and t.device == x.device):
            return None
    return s, z, float(quant[3])



def _gemm_fits(a, b, out_mn, batch: int) -> bool:
    """Whether the Triton GEMM can index these matrices (32-bit offsets within one matrix, the
    batch on a grid axis); otherwise the op takes the strategy whose GEMM is torch's."""
    return (batch <= _limits.MAX_GRID_YZ and out_mn[0] * out_mn[1] < _limits.INT32
            and _limits.matrix_span(a) < _limits.INT32 and _limits.matrix_span(b) < _limits.INT32)


def _torch_gemm(fn, dtype):
    if dtype == torch.float32:
        with _ieee_matmul():
            return fn()
    return fn()


# ---------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------

def fake_quant_linear(x, weight, bias, scale=None, zero=None, qmax=None, *,
                      strategy=None, precision=None, config=None):
    """``fake_quant(x, scale, zero, qmax) @ weight.T + bias``.

    Args:
        x: ``(..., K)`` fp32, bf16 or fp16 (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        weight: ``(N, K)`` of ``x``'s dtype, already on its quantization grid; any strides.
        bias: ``(N,)`` or ``None`` (added in fp32 by ``"fused"``; cast to ``x``'s dtype for the
            torch GEMM of ``"prequant"``).
        scale, zero, qmax: per-tensor (numbers or 1-element tensors) or per-channel ``(K,)``
            activation quantizer; ``scale=None`` for no input quantization.
        strategy: ``None`` (default for the dtype), ``"fused"``, ``"prequant"``,
            ``"prequant_triton"``. precision, config: test hooks of the Triton GEMM
            (``"ieee"`` products; a fixed tile dict instead of autotuning).
    Returns:
        ``(..., N)`` in ``x``'s dtype.
    """
    if weight.dim() != 2 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    _check_dtypes(x, weight)
    strategy = _strategy("linear", x.dtype, strategy)
    k, n = weight.shape[1], weight.shape[0]
    quant = None if scale is None else ("uniform", scale, zero, qmax)
    if strategy == "prequant":
        xq = fake_quant_tensor(x, quant)
        b = None if bias is None else bias.to(x.dtype)
        return _torch_gemm(lambda: F.linear(xq, weight, b), x.dtype)
    if strategy == "prequant_triton":
        x, quant = fake_quant_tensor(x, quant), None
    x2 = x.reshape(-1, k)
    if not _gemm_fits(x2, weight.t(), (x2.shape[0], n), 1):
        return fake_quant_linear(x, weight, bias, None if quant is None else scale, zero, qmax,
                                 strategy="prequant")
    out = torch.empty(x2.shape[0], n, device=x.device, dtype=x.dtype)
    # the kernel reads the bias with unit stride
    bias = None if bias is None else bias.contiguous()
    _launch(x2[None, None], weight.t()[None, None], bias, out[None, None], quant, None,
            "large", precision, config)
    return out.reshape(*x.shape[:-1], n)


def _as4d(t):
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t.reshape(-1, *t.shape[-3:]) if t.dim() > 4 else t


def fake_quant_matmul(a, b, a_quant=None, b_quant=None, *, strategy=None, precision=None,
                      config=None):
    """``Q_a(a) @ Q_b(b)`` (the attention matmuls).

    Args:
        a: ``(..., M, K)``; b: ``(..., K, N)``, same dtype (fp32, bf16 or fp16), leading dims
            broadcastable; any strides (e.g. ``k.transpose(-2, -1)`` needs no copy).
        a_quant: ``("uniform", scale, zero, qmax)`` (per-tensor, or ``(K,)`` per channel),
            ``("log2", scale, n_bits)`` or ``None``; b_quant: the same, per-tensor only.
        strategy, precision, config: as in :func:`fake_quant_linear`.
    Returns:
        ``(*batch, M, N)`` in ``a``'s dtype.
    """
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} do not multiply")
    _check_dtypes(a, b)
    if b_quant is not None and max(torch.as_tensor(v).numel() for v in b_quant[1:3]) > 1:
        raise ValueError("b_quant must be per-tensor")
    strategy = _strategy("matmul", a.dtype, strategy, a_quant)
    if strategy != "fused":
        a, b = fake_quant_tensor(a, a_quant), fake_quant_tensor(b, b_quant)
        a_quant = b_quant = None
        if strategy == "prequant":
            return _torch_gemm(lambda: torch.matmul(a, b), a.dtype)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, n = a.shape[-2], b.shape[-1]
    if not _gemm_fits(a, b, (m, n), math.prod(batch)):
        return fake_quant_matmul(a, b, a_quant, b_quant, strategy="prequant")
    out = torch.empty(*batch, m, n, device=a.device, dtype=a.dtype)
    _launch(_as4d(a.expand(*batch, *a.shape[-2:])), _as4d(b.expand(*batch, *b.shape[-2:])),
            None, _as4d(out), a_quant, b_quant, "small", precision, config)
    return out


_dispatch.register("fake_quant_linear", "triton", fake_quant_linear)
_dispatch.register("fake_quant_matmul", "triton", fake_quant_matmul)
