"""Experiment (issue 3): ERQ with the authors' numerics for the two ridge regressions.

The authors' code inverts with ``torch.inverse`` in fp32: ``(A^T A + lam I)^-1`` for Aqer and,
in every Wqer pass, ``(H_RR + lam I)^-1`` for the still-FP columns. This runs ``erq quantize``
with exactly that (fp32 explicit inverses, the per-pass ridge update
``-Delta_S H_SR (H_RR + lam I)^-1``) instead of Cholesky solves and one inverse factor, to see
whether the numerics of the inverse explain the gap to their W3A4 figure. CPU only.

    python benchmarks/authors_numerics.py quantize --w-bits 3 --a-bits 4 --seed 0 --skip-fp --json out.json
"""
import sys

import torch

import erq.pipeline as P
import erq_kernels
from erq.cli import main as cli_main
from erq.wqer import grid_errors, proxy_matrix


def ridge_inverse(g, b, lam=None):
    n = g.shape[-1]
    h = g + lam[:, None, None] * torch.eye(n, dtype=g.dtype) if lam is not None else g
    return torch.inverse(h) @ b, torch.zeros(g.shape[0], dtype=torch.int32)


def wqer_inverse(theta, ata, colsum, tokens, scale, zero, qmax, lam, names, refine=True, steps=100):
    theta = theta.clone()
    n = theta.shape[-1]
    eye = torch.eye(n, dtype=ata.dtype)
    h = ata + lam[:, None, None] * eye
    c = proxy_matrix(ata, colsum, tokens) if refine else None
    start = 0
    while n - start > 1:
        hh = (n - start) // 2
        s, r = slice(start, start + hh), slice(start + hh, n)
        e_round, e_floor, e_ceil = grid_errors(theta[..., s], scale[..., s], zero[..., s], qmax)
        delta = (erq_kernels.rounding_refine(e_round, e_floor, e_ceil, c[:, s, s].contiguous(), steps)
                 if refine else e_round)
        inv = torch.inverse(h[:, r, r])                      # per pass, fp32, as the authors
        theta[..., r] += -(delta @ ata[:, s, r]) @ inv
        theta[..., s] += delta
        start += hh
    w = theta[..., : n - 1]
    theta[..., : n - 1] = (torch.clamp(torch.round(w / scale) + zero, 0, qmax) - zero) * scale
    return theta


if __name__ == "__main__":
    erq_kernels.ridge_solve = ridge_inverse
    P.wqer = wqer_inverse
    sys.exit(cli_main(sys.argv[1:]) or 0)
