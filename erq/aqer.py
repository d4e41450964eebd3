"""Aqer (ERQ section 3): ridge regression of the FP output on the quantized input."""
from __future__ import annotations

import torch

import erq_kernels
from .solve import factor_with_retry


def aqer(ata: torch.Tensor, atx: torch.Tensor, theta: torch.Tensor, lam: torch.Tensor,
         names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``Theta* = (A^T A + lam I)^-1 (A^T X~ Theta + lam Theta)``, batched over layers.

    Args:
        ata, atx: ``(B, n, n)`` fp32 statistics (``n = D + 1``).
        theta: ``(B, O, n)`` current ``[W, b]`` (row-major: one row per output).
        lam: ``(B,)`` ridge strength per layer.
    Returns:
        ``(theta_new (B, O, n), lam_used (B,))``.
    """
    tc = theta.transpose(1, 2)  # (B, n, O), the specification's Theta
    base = atx @ tc

    def solve(idx, lam_i):
        sel = (lambda t: t) if idx is None else (lambda t: t[idx])
        return erq_kernels.ridge_solve(sel(ata), sel(base) + lam_i[:, None, None] * sel(tc), lam_i)

    x, lam = factor_with_retry(solve, ata, lam, names)
    return x.transpose(1, 2).contiguous(), lam
