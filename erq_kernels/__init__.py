"""Solver and quantization primitives for ERQ-style post-training quantization.

Each public function has a plain-PyTorch reference in :mod:`erq_kernels.reference` (the
definition) and, where one exists, a Triton kernel; :mod:`erq_kernels._dispatch` picks the
backend (Triton on CUDA unless a measured table says otherwise, the reference on CPU;
``ERQ_KERNELS_BACKEND=reference|triton`` forces one). Importable without :mod:`erq`.

All linear algebra is fp32 with IEEE-accurate products (never plain TF32); the int8 backend of
``gram_update`` is exact integer arithmetic (:mod:`erq_kernels.gram_int8`).
"""
from __future__ import annotations

import torch

from . import _dispatch, gram_exact, reference
from ._dispatch import choose as backend_for, prefer

__all__ = [
    "cholesky", "solve_triangular", "triangular_inverse", "ridge_solve",
    "inverse_cholesky_upper", "gram_update", "gram_prepare", "fake_quant", "fake_quant_log2",
    "fake_quant_linear", "pack_int8_weight", "fake_quant_matmul", "rounding_refine", "backend_for", "prefer", "reference", "LINALG_OPS",
    "HAS_TRITON",
]

for _name in ("cholesky", "solve_triangular", "triangular_inverse", "ridge_solve",
              "inverse_cholesky_upper", "gram_update", "fake_quant_linear", "fake_quant_matmul",
              "rounding_refine"):
    _dispatch.register(_name, "reference", getattr(reference, _name))
_dispatch.register("gram_update_exact", "reference", gram_exact.gram_update)

try:  # Triton kernels register themselves; a missing or broken Triton leaves the references.
    import triton  # noqa: F401
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False

if HAS_TRITON:
    from . import _triton_ops  # noqa: F401  (imports every kernel module, which register)

LINALG_OPS = ("cholesky", "solve_triangular", "triangular_inverse", "ridge_solve",
              "inverse_cholesky_upper")

fake_quant = reference.fake_quant
fake_quant_log2 = reference.fake_quant_log2


def _check_square(a: torch.Tensor, name: str) -> None:
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name} must be (..., n, n), got {tuple(a.shape)}")
    if not a.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {a.dtype}")


def _key(a: torch.Tensor, nrhs: int | None = None) -> dict:
    batch = 1
    for s in a.shape[:-2]:
        batch *= s
    return {"batch": batch, "n": a.shape[-1], "nrhs": nrhs}


def cholesky(a: torch.Tensor, lam=None):
    """Lower Cholesky factor of ``a + lam*I``: ``(L, info)``. See :func:`reference.cholesky`."""
    _check_square(a, "a")
    return _dispatch.implementation("cholesky", a.device, _key(a))(a, lam)


def solve_triangular(t, b, *, upper=False, left=True, unitriangular=False):
    """Solve ``T X = B`` or ``X T = B``. See :func:`reference.solve_triangular`."""
    _check_square(t, "t")
    fn = _dispatch.implementation("solve_triangular", t.device, _key(t, b.shape[-1]))
    return fn(t, b, upper=upper, left=left, unitriangular=unitriangular)


def triangular_inverse(t, *, upper=False):
    """Inverse of a triangular ``(..., n, n)``. See :func:`reference.triangular_inverse`."""
    _check_square(t, "t")
    return _dispatch.implementation("triangular_inverse", t.device, _key(t))(t, upper=upper)


def ridge_solve(g, b, lam=None):
    """``(G + lam*I)^-1 B`` and ``info``. See :func:`reference.ridge_solve`."""
    _check_square(g, "g")
    if b.shape[:-1] != g.shape[:-1]:
        raise ValueError(f"b {tuple(b.shape)} does not match g {tuple(g.shape)}")
    return _dispatch.implementation("ridge_solve", g.device, _key(g, b.shape[-1]))(g, b, lam)


def inverse_cholesky_upper(g, lam=None):
    """Upper ``U`` with ``(G + lam*I)^-1 = U^T U``, and ``info``.

    See :func:`reference.inverse_cholesky_upper`."""
    _check_square(g, "g")
    return _dispatch.implementation("inverse_cholesky_upper", g.device, _key(g))(g, lam)


def gram_update(x, ata, atx, colsum, scale=None, zero=None, qmax=None, *, exact=False):
    """Accumulate ``A^T A``, ``A^T X~`` and ``sum A`` in place. See :func:`reference.gram_update`.

    ``exact=True``: the statistics of :func:`gram_exact.gram_update` instead (exact integer
    products of the quantization codes, rounded once per chunk), which every backend computes
    to the same bits (op ``gram_update_exact``: the reference, or the int8 tensor-core path
    on CUDA), so that a fast backend cannot change a quantized model through its statistics."""
    if x.dim() != 2 or ata.shape != (x.shape[1] + 1, x.shape[1] + 1):
        raise ValueError(f"x {tuple(x.shape)} does not match ata {tuple(ata.shape)}")
    op = "gram_update_exact" if exact else "gram_update"
    fn = _dispatch.implementation(op, x.device, {"n": x.shape[1] + 1, "batch": x.shape[0]})
    return fn(x, ata, atx, colsum, scale, zero, qmax)


def gram_prepare(zeros) -> None:
    """Optional, before many :func:`gram_update` calls: the zero-point tensors of the input
    quantizers that will be used. Lets the int8 Gram backend learn which of them hold only
    integers (then it skips the clamp-indicator products) with one host synchronization for
    all of them instead of one per call. ``gram_prepare(())`` forgets them; the tensors must not
    change in between. Results do not depend on it."""
    if HAS_TRITON:
        from . import gram_int8
        gram_int8.prime([z for z in zeros if isinstance(z, torch.Tensor) and z.is_cuda])


def fake_quant_linear(x, weight, bias, scale=None, zero=None, qmax=None, packed=None):
    """``fake_quant(x) @ weight.T + bias``. See :func:`reference.fake_quant_linear`.

    ``packed``: optionally the same weight packed by :func:`pack_int8_weight`, or a function
    without arguments returning it (or ``None``), called only when needed; where the measured
    table picks the ``int8`` backend for the shape (16-bit ``x`` only) the layer then runs on
    the int8 tensor cores (:mod:`erq_kernels.int8_linear`)."""
    fn = _dispatch.implementation("fake_quant_linear", x.device,
                                  {"n": weight.shape[0], "batch": x.numel() // x.shape[-1],
                                   "k": x.shape[-1], "bits": 8 * x.element_size()})
    if packed is not None and getattr(fn, "takes_packed", False):
        return fn(x, weight, bias, scale, zero, qmax, packed=packed)
    return fn(x, weight, bias, scale, zero, qmax)


def pack_int8_weight(levels, scale, group=None):
    """The weight of an int8 linear layer: see :func:`erq_kernels.int8_linear.pack_weight`."""
    from .int8_linear import pack_weight
    return pack_weight(levels, scale, group)


def fake_quant_matmul(a, b, a_quant=None, b_quant=None):
    """``Q_a(a) @ Q_b(b)`` (attention matmuls). See :func:`reference.fake_quant_matmul`."""
    batch = 1
    for s in torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]):
        batch *= s
    fn = _dispatch.implementation("fake_quant_matmul", a.device,
                                  {"batch": batch, "n": b.shape[-1], "nrhs": a.shape[-2]})
    return fn(a, b, a_quant, b_quant)


def rounding_refine(e_round, e_floor, e_ceil, c, max_steps=100):
    """Greedy rounding refinement (ERQ). See :func:`reference.rounding_refine`."""
    if e_round.shape != e_floor.shape or e_round.shape != e_ceil.shape:
        raise ValueError("e_round, e_floor and e_ceil must have the same shape")
    if c.shape[-1] != e_round.shape[-1] or c.shape[-2] != e_round.shape[-1]:
        raise ValueError(f"c {tuple(c.shape)} does not match rows of {tuple(e_round.shape)}")
    fn = _dispatch.implementation("rounding_refine", e_round.device,
                                  {"n": e_round.shape[-1], "batch": e_round.shape[-2]})
    return fn(e_round, e_floor, e_ceil, c, max_steps)
