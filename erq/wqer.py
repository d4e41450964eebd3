"""Wqer (ERQ section 4) with the one-factorization reformulation of section 5.

The columns are quantized half by half in index order, so the still-FP columns ``R`` are
always a trailing block: with ``U`` the upper Cholesky factor of ``(A^T A + lam I)^-1`` the
ridge update ``-Delta_S H_SR (H_RR + lam I)^-1`` equals ``Delta_S U_SS^-1 U_SR``.
"""
from __future__ import annotations

import torch

import erq_kernels
from .solve import factor_with_retry


def grid_errors(w, scale, zero, qmax: int):
    """``(E_round, E_floor, E_ceil)``: grid value minus ``w`` for each rounding, clamped."""
    t = w / scale
    q = torch.stack([torch.round(t), torch.floor(t), torch.ceil(t)])  # one pass for the three
    return ((torch.clamp(q + zero, 0, qmax) - zero) * scale - w).unbind(0)


def proxy_matrix(ata: torch.Tensor, colsum: torch.Tensor, tokens: int) -> torch.Tensor:
    """``C = mu mu^T + cov(A)`` (unbiased covariance), ``(B, n, n)``, from the statistics."""
    mu = colsum / tokens
    outer = mu[:, :, None] * mu[:, None, :]
    cov = (ata - tokens * outer) / max(tokens - 1, 1)
    return outer + cov


def wqer(theta: torch.Tensor, ata: torch.Tensor, colsum: torch.Tensor, tokens: int,
         scale: torch.Tensor, zero: torch.Tensor, qmax: int, lam: torch.Tensor,
         names: list[str], refine: bool = True, steps: int = 100) -> torch.Tensor:
    """Quantize the first ``D`` columns of ``theta`` ``(B, O, D+1)``; the last (bias) stays FP.

    Args:
        theta: ``(B, O, n)`` ``[W, b]`` after Aqer; ata ``(B, n, n)``; colsum ``(B, n)``;
            tokens: ``N`` (same for the batch); scale, zero: ``(B, O, D)`` per-element grid;
            lam: ``(B,)``; refine: run rounding refinement (off for the patch embedding).
    Returns:
        ``theta`` with columns ``0..D-1`` exactly on the grid.
    """
    theta = theta.clone()
    n = theta.shape[-1]
    u, _ = factor_with_retry(
        lambda idx, l: erq_kernels.inverse_cholesky_upper(ata if idx is None else ata[idx], l),
        ata, lam, names)
    c = proxy_matrix(ata, colsum, tokens) if refine else None
    start = 0
    while n - start > 1:
        h = (n - start) // 2
        s, r = slice(start, start + h), slice(start + h, n)
        e_round, e_floor, e_ceil = grid_errors(theta[..., s], scale[..., s], zero[..., s], qmax)
        if refine:
            delta = erq_kernels.rounding_refine(e_round, e_floor, e_ceil,
                                                c[:, s, s].contiguous(), steps)
        else:
            delta = e_round
        z = erq_kernels.solve_triangular(u[:, s, s], u[:, s, r], upper=True)  # U_SS^-1 U_SR
        theta[..., r] += delta @ z
        theta[..., s] += delta
        start += h
    # snap exactly onto the grid (theta + delta equals the grid value up to rounding)
    w = theta[..., : n - 1]
    theta[..., : n - 1] = (torch.clamp(torch.round(w / scale) + zero, 0, qmax) - zero) * scale
    return theta
