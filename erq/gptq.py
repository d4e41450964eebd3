"""GPTQ baseline on the same quantizers and statistics ("GPTQ*" of the ERQ paper)."""
from __future__ import annotations

import torch

import erq_kernels
from .solve import factor_with_retry


def gptq(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmax: int,
         names: list[str], blocksize: int = 128, percdamp: float = 0.01,
         act_order: bool = False) -> torch.Tensor:
    """Quantize ``w`` ``(B, O, D)`` column by column, pushing each column's error into the
    not yet quantized ones through the upper factor of ``(H + damp I)^-1``.

    ``h`` ``(B, D, D)`` is ``X^T X`` of the (quantized) layer input; ``scale``/``zero``
    ``(B, O, D)`` the per-element grid. Damping is ``percdamp`` times the mean diagonal;
    ``act_order`` processes columns by decreasing ``diag(H)``. Lazy batch updates: one GEMM
    per block of ``blocksize`` columns. Returns the quantized weights (dequantized values).
    """
    w = w.clone().float()
    h = h.clone()
    diag = h.diagonal(dim1=-2, dim2=-1)
    dead = diag == 0
    diag.masked_fill_(dead, 1.0)
    w.masked_fill_(dead[:, None, :], 0.0)
    if act_order:
        perm = torch.argsort(diag, dim=-1, descending=True, stable=True)
        w, scale, zero = (t.gather(-1, perm[:, None, :].expand_as(t)) for t in (w, scale, zero))
        h = h.gather(-1, perm[:, None, :].expand_as(h)).gather(-2, perm[:, :, None].expand_as(h))
    damp = percdamp * h.diagonal(dim1=-2, dim2=-1).mean(-1)
    u, _ = factor_with_retry(
        lambda idx, l: erq_kernels.inverse_cholesky_upper(h if idx is None else h[idx], l),
        h, damp, names)
    d = w.shape[-1]
    q = torch.empty_like(w)
    for i1 in range(0, d, blocksize):
        i2 = min(i1 + blocksize, d)
        w1 = w[..., i1:i2].clone()
        err1 = torch.empty_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[..., i]
            s, z = scale[..., i1 + i], zero[..., i1 + i]
            qc = (torch.clamp(torch.round(col / s) + z, 0, qmax) - z) * s
            q[..., i1 + i] = qc
            e = (col - qc) / u1[:, i, i, None]
            w1[..., i:] -= e[..., None] * u1[:, None, i, i:]
            err1[..., i] = e
        w[..., i2:] -= err1 @ u[:, i1:i2, i2:]
    if act_order:
        q = torch.empty_like(q).scatter_(-1, perm[:, None, :].expand_as(q), q)
    return q
