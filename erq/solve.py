"""Batched factorizations with damping retries, and grouping of layers by shape."""
from __future__ import annotations

import logging
from collections import defaultdict

import torch

log = logging.getLogger("erq")


def group_by_shape(names: list[str], shape_of) -> list[list[str]]:
    """Layer names grouped by ``shape_of(name)``, groups and members in first-seen order."""
    groups: dict = defaultdict(list)
    for n in names:
        groups[shape_of(n)].append(n)
    return list(groups.values())


def factor_with_retry(fn, g: torch.Tensor, lam: torch.Tensor, names: list[str], max_tries: int = 8):
    """Call ``fn(idx, lam)`` -> ``(out, info)`` for the matrices ``g[idx]`` of a batch
    ``g`` ``(B, n, n)`` (``idx=None``: all of them) with damping ``lam`` of those matrices.

    Where a factorization fails (``info > 0``: dead channels, fewer tokens than columns),
    retry that matrix alone with growing damping (x10, at least 1e-6 of its mean diagonal)
    and log it once per layer. Returns ``(out, lam)`` with the damping finally used.
    """
    lam = lam.clone()
    out, info = fn(None, lam)
    bad = (info > 0).nonzero().flatten().tolist()
    warned = set()
    for _ in range(max_tries):
        if not bad:
            return out, lam
        idx = torch.tensor(bad, device=g.device)
        floor = 1e-6 * g[idx].diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-12)
        lam[idx] = torch.maximum(lam[idx] * 10, floor)
        for i in bad:
            if names[i] not in warned:
                log.warning("layer %s: Gram matrix not positive definite; retrying with damping %.3g",
                            names[i], float(lam[i]))
                warned.add(names[i])
        sub_out, sub_info = fn(idx, lam[idx])
        out[idx] = sub_out
        bad = [i for i, ok in zip(bad, (sub_info == 0).tolist()) if not ok]
    raise FloatingPointError(
        "factorization failed even with large damping for layers: " + ", ".join(names[i] for i in bad))


def damping(stats_ata: torch.Tensor, lam_abs: float | None, lam_rel: float | None) -> torch.Tensor:
    """Per-matrix ridge ``lambda``: absolute, or relative to the mean diagonal of ``A^T A``."""
    if lam_rel is not None:
        return lam_rel * stats_ata.diagonal(dim1=-2, dim2=-1).mean(-1)
    return torch.full(stats_ata.shape[:1], float(lam_abs), dtype=stats_ata.dtype, device=stats_ata.device)
