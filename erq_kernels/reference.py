"""Plain-PyTorch definitions of every primitive in :mod:`erq_kernels`.

These functions are the specification: each Triton kernel must compute the same function
(to rounding) and the tests compare against them. They run on any device and dtype torch
supports; the public wrappers in :mod:`erq_kernels` call them on the CPU or when
``ERQ_KERNELS_BACKEND=reference``.

Batching rule for the linear algebra: a matrix argument of shape ``(n, n)`` or ``(..., n, n)``;
right-hand sides ``(..., n, k)`` with the same leading dimensions. ``info`` follows LAPACK:
0 where the factorization succeeded, else ``k + 1`` for the first non-positive pivot ``k``.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "cholesky",
    "solve_triangular",
    "triangular_inverse",
    "ridge_solve",
    "inverse_cholesky_upper",
    "gram_update",
    "fake_quant",
    "fake_quant_log2",
    "fake_quant_linear",
    "rounding_refine",
]


def _lam_tensor(lam, batch_shape, like: torch.Tensor) -> torch.Tensor:
    """Broadcast ``lam`` (float or tensor of ``batch_shape``) to ``(*batch_shape, 1)``."""
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    return lam_t.expand(batch_shape).unsqueeze(-1)


def add_diagonal(a: torch.Tensor, lam) -> torch.Tensor:
    """Return ``a + lam * I`` (a new tensor); ``lam`` a float or one value per matrix."""
    if lam is None:
        return a
    out = a.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(_lam_tensor(lam, a.shape[:-2], a))
    return out


def cholesky(a: torch.Tensor, lam=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower Cholesky factor of ``a + lam * I``.

    Args:
        a: ``(..., n, n)`` symmetric, fp32 (fp64 accepted). Only the lower triangle is read.
        lam: ``None``, a float, or a tensor of shape ``a.shape[:-2]`` added to the diagonal.
    Returns:
        ``(L, info)``: ``L`` of ``a``'s shape and dtype, lower triangular (upper part zero);
        ``info`` int32 of shape ``a.shape[:-2]``, 0 or the 1-based index of the first
        non-positive pivot. Where ``info > 0`` the content of ``L`` is unspecified. No host sync.
    """
    L, info = torch.linalg.cholesky_ex(add_diagonal(a, lam))
    return L, info.to(torch.int32)


def solve_triangular(
    t: torch.Tensor, b: torch.Tensor, *, upper: bool = False, left: bool = True,
    unitriangular: bool = False,
) -> torch.Tensor:
    """Solve ``T X = B`` (``left=True``) or ``X T = B`` (``left=False``).

    Args:
        t: ``(..., n, n)`` triangular (lower unless ``upper``); the other triangle is ignored.
        b: ``(..., n, k)`` for ``left=True``, ``(..., k, n)`` for ``left=False``.
    Returns:
        ``X`` with ``b``'s shape and dtype.
    """
    return torch.linalg.solve_triangular(t, b, upper=upper, left=left, unitriangular=unitriangular)


def triangular_inverse(t: torch.Tensor, *, upper: bool = False) -> torch.Tensor:
    """Inverse of a triangular matrix ``(..., n, n)``; the result has the same triangle."""
    eye = torch.eye(t.shape[-1], dtype=t.dtype, device=t.device).expand_as(t)
    return torch.linalg.solve_triangular(t, eye, upper=upper)


def ridge_solve(g: torch.Tensor, b: torch.Tensor, lam=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``X = (G + lam * I)^-1 B`` for symmetric positive-definite ``G + lam * I``.

    Args:
        g: ``(..., n, n)`` fp32 symmetric (only the lower triangle is read).
        b: ``(..., n, k)`` right-hand sides.
        lam: ``None``, a float, or one value per matrix (shape ``g.shape[:-2]``).
    Returns:
        ``(X, info)``: ``X`` of ``b``'s shape; ``info`` as in :func:`cholesky`. Where
        ``info > 0`` the rows of ``X`` for that matrix are unspecified (callers retry with
        more damping).
    """
    L, info = cholesky(g, lam)
    y = torch.linalg.solve_triangular(L, b, upper=False)
    x = torch.linalg.solve_triangular(L.mH, y, upper=True)
    return x, info


def inverse_cholesky_upper(g: torch.Tensor, lam=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper-triangular ``U`` with ``(G + lam * I)^-1 = U^T U`` (the factor GPTQ uses).

    Computed from one Cholesky factorization of the index-reversed matrix and one triangular
    inverse: with ``J`` the reversal permutation and ``J H J = M M^T`` (``M`` lower),
    ``U = J M^-1 J``. For every trailing block ``T`` of indices, ``(H_TT)^-1 = U_TT^T U_TT``.

    Args:
        g: ``(..., n, n)`` fp32 symmetric; lam as in :func:`cholesky`.
    Returns:
        ``(U, info)``: ``U`` upper triangular of ``g``'s shape; ``info`` refers to the pivots
        of the reversed matrix (``info > 0`` means not positive-definite).
    """
    h = add_diagonal(g, lam)
    hr = h.flip(-1, -2)
    m, info = torch.linalg.cholesky_ex(hr)
    minv = triangular_inverse(m, upper=False)
    return minv.flip(-1, -2), info.to(torch.int32)


# ---------------------------------------------------------------------------------------------
# Quantizers (elementwise definitions shared by the Gram, fake-quant and ERQ code)
# ---------------------------------------------------------------------------------------------

def fake_quant(x: torch.Tensor, scale, zero, qmax: int) -> torch.Tensor:
    """Asymmetric uniform fake quantization ``(clamp(round(x / s) + z, 0, qmax) - z) * s``.

    ``scale`` and ``zero`` broadcast against ``x`` (a float/0-d tensor for per-tensor, a
    ``(D,)`` tensor for per-channel along the last dimension). ``zero`` may be fractional
    (after scale reparameterization). Rounding is half-to-even (``torch.round``).
    """
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return (q - zero) * scale


def fake_quant_log2(x: torch.Tensor, scale, n_bits: int) -> torch.Tensor:
    """Log-sqrt(2) fake quantization for non-negative ``x`` (attention probabilities).

    Level ``k = clamp(round(-2 log2(x / s)), 0, 2^b - 1)`` dequantizes to
    ``s * 2^(-ceil(k / 2)) * (sqrt(2) if k odd else 1)``; inputs whose unclamped level is
    ``>= 2^b`` (including zero) map to 0.
    """
    n_levels = 2 ** n_bits
    k = torch.round(-2.0 * torch.log2(x / scale))
    zero_mask = k >= n_levels
    k = torch.clamp(k, 0, n_levels - 1)
    odd = torch.remainder(k, 2) * (math.sqrt(2.0) - 1.0) + 1.0
    out = torch.exp2(-torch.ceil(k / 2)) * odd * scale
    return torch.where(zero_mask, torch.zeros_like(out), out)


def fake_quant_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    scale=None, zero=None, qmax: int | None = None,
) -> torch.Tensor:
    """``fake_quant(x) @ weight.T + bias``.

    Args:
        x: ``(..., K)``; weight: ``(N, K)`` already on its quantization grid (dequantized);
        bias: ``(N,)`` or None; scale/zero/qmax: the per-tensor (or per-channel ``(K,)``)
        activation quantizer, or ``None`` for no input quantization.
    Returns:
        ``(..., N)`` in ``x``'s dtype.
    """
    if scale is not None:
        x = fake_quant(x, scale, zero, qmax)
    return torch.nn.functional.linear(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# Streaming Gram statistics
# ---------------------------------------------------------------------------------------------

def gram_update(
    x: torch.Tensor, ata: torch.Tensor, atx: torch.Tensor, colsum: torch.Tensor,
    scale=None, zero=None, qmax: int | None = None,
) -> None:
    """Accumulate in place the statistics of one batch of layer inputs.

    With ``A = [Q_a(X), 1]`` and ``X~ = [X, 1]`` (``N x (D+1)``), adds ``A^T A`` to ``ata``,
    ``A^T X~`` to ``atx`` and the column sums of ``A`` to ``colsum``. Products are fp32 with
    IEEE accuracy (TF32 is never used) or fp64 when the buffers are fp64.

    Args:
        x: ``(N, D)`` layer inputs (any float dtype; converted to the buffers' dtype).
        ata, atx: ``(D+1, D+1)`` fp32/fp64 accumulators.
        colsum: ``(D+1,)`` accumulator.
        scale, zero, qmax: the input quantizer (per-tensor scalars, or per-channel ``(D,)``
            tensors), or ``None`` for ``A = X~``.
    """
    x = x.to(ata.dtype)
    n = x.shape[0]
    ones = torch.ones(n, 1, dtype=x.dtype, device=x.device)
    xt = torch.cat([x, ones], dim=1)
    a = xt if scale is None else torch.cat([fake_quant(x, scale, zero, qmax), ones], dim=1)
    with _ieee_matmul():
        ata.addmm_(a.T, a)
        atx.addmm_(a.T, xt)
    colsum.add_(a.sum(0))


class _ieee_matmul:
    """Context manager that turns TF32 off for fp32 matmuls (restores the previous setting)."""

    def __enter__(self):
        self._prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self._prev
        return False


# ---------------------------------------------------------------------------------------------
# Rounding refinement (ERQ section 4)
# ---------------------------------------------------------------------------------------------

def rounding_refine(
    e_round: torch.Tensor, e_floor: torch.Tensor, e_ceil: torch.Tensor, c: torch.Tensor,
    max_steps: int = 100,
) -> torch.Tensor:
    """Greedy rounding refinement of ERQ, one flip per row per step.

    Per output row, starting from ``Delta = e_round``, up to ``max_steps`` steps:
    ``g = 2 C Delta``; ``g_j = 0`` where ``Delta_j * g_j <= 0``; ``j = argmax |g_j|`` (first
    index on ties); ``v = Delta_j - g_j``; ``Delta_j <- e_ceil_j`` if
    ``|v - e_ceil_j| <= |v - e_floor_j|`` else ``e_floor_j``; the flip is undone if the proxy
    ``Delta^T C Delta`` grows, and the row stops (a rejected row would pick the same flip
    again, so stopping it changes nothing). The change of the proxy is computed exactly as
    ``d * g_j + d^2 * C_jj`` with ``d`` the change of ``Delta_j`` and ``g`` unmasked.

    Args:
        e_round, e_floor, e_ceil: ``(B, O, S)`` or ``(O, S)`` fp32 rounding errors
            (quantized minus FP weights for round-to-nearest, floor and ceil, on the grid).
        c: ``(B, S, S)`` or ``(S, S)`` symmetric proxy matrix, one per batch entry.
    Returns:
        ``Delta`` with ``e_round``'s shape.
    """
    squeeze = e_round.dim() == 2
    if squeeze:
        e_round, e_floor, e_ceil, c = (t.unsqueeze(0) for t in (e_round, e_floor, e_ceil, c))
    delta = e_round.clone()
    active = torch.ones(delta.shape[:2], dtype=torch.bool, device=delta.device)
    cdiag = c.diagonal(dim1=-2, dim2=-1)  # (B, S)
    # g = 2 C Delta in row-vector form (C symmetric); afterwards updated by the accepted
    # flips only (2 d C[j, :]), O(O S) per step instead of a full product.
    g_full = 2.0 * torch.bmm(delta, c)
    for _ in range(max_steps):
        g = torch.where(delta * g_full <= 0, torch.zeros_like(g_full), g_full)
        j = torch.argmax(g.abs(), dim=-1, keepdim=True)  # first index on ties
        dj = delta.gather(-1, j)
        gj = g.gather(-1, j)
        v = dj - gj
        cj, fj = e_ceil.gather(-1, j), e_floor.gather(-1, j)
        new = torch.where((v - cj).abs() <= (v - fj).abs(), cj, fj)
        d = new - dj
        change = d * g_full.gather(-1, j) + d * d * cdiag.gather(-1, j.squeeze(-1)).unsqueeze(-1)
        active = (change <= 0).squeeze(-1) & active
        keep = active.unsqueeze(-1)
        d = torch.where(keep, d, torch.zeros_like(d))
        delta.scatter_(-1, j, torch.where(keep, new, dj))  # exactly a floor or ceil value
        rows = c.gather(1, j.expand(-1, -1, c.shape[-1]))  # C[j, :] per row
        g_full.add_(2.0 * d * rows)
        if not bool(active.any()):
            break
    return delta.squeeze(0) if squeeze else delta


# ---------------------------------------------------------------------------------------------
# Fake-quantized matmul (attention)
# ---------------------------------------------------------------------------------------------

__all__ += ["fake_quant_matmul"]


def _apply_quant(t: torch.Tensor, quant) -> torch.Tensor:
    """Apply ``("uniform", scale, zero, qmax)``, ``("log2", scale, n_bits)`` or ``None``."""
    if quant is None:
        return t
    if quant[0] == "uniform":
        _, scale, zero, qmax = quant
        return fake_quant(t, scale, zero, qmax)
    if quant[0] == "log2":
        _, scale, n_bits = quant
        return fake_quant_log2(t, scale, n_bits)
    raise ValueError(f"unknown quantizer kind {quant[0]!r}")


def fake_quant_matmul(a: torch.Tensor, b: torch.Tensor, a_quant=None, b_quant=None) -> torch.Tensor:
    """``Q_a(a) @ Q_b(b)``: the attention matmuls with fake-quantized operands.

    Args:
        a: ``(..., M, K)``; b: ``(..., K, N)`` of the same dtype, leading dims broadcastable
            (e.g. ``(B, H, M, K) @ (B, H, K, N)``).
        a_quant, b_quant: ``("uniform", scale, zero, qmax)`` (per-tensor; for ``a`` also
            per channel along ``K``), ``("log2", scale, n_bits)`` (:func:`fake_quant_log2`,
            for attention probabilities) or ``None`` (operand used as is).
    Returns:
        ``(..., M, N)`` in ``a``'s dtype.
    """
    return torch.matmul(_apply_quant(a, a_quant), _apply_quant(b, b_quant))
