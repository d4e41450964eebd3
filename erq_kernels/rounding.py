"""Triton kernel for ERQ's greedy rounding refinement (ERQ.md section 4).

One launch runs every step for every row: a program owns ``BLOCK_O`` rows of one batch entry and
keeps ``Delta`` and the proxy gradient ``g = 2 Delta C`` of those rows in registers (the row
length ``S`` padded to a power of two). Each step picks one flip per row with two reductions
(an argmax, then ``g_j`` and ``Delta_j`` together), reads ``e_floor[j]``, ``e_ceil[j]``, ``C[j, j]`` and the row ``C[j, :]`` (from L2) and,
if the proxy did not grow, updates ``g`` incrementally by ``2 d C[j, :]``. A rejected row stops;
the program stops when all its rows have stopped or after ``max_steps`` steps.

The starting gradient comes from the same IEEE fp32 ``bmm`` the reference uses, so the first
step is bit-identical to :func:`erq_kernels.reference.rounding_refine`; later steps use the
incrementally updated ``g``, which differs from the reference's recomputed one by rounding
only, so decisions agree except at exact or near ties.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _dispatch, _limits, reference

__all__ = ["rounding_refine"]

# Rows longer than this would not fit in registers; the reference handles them.
MAX_BLOCK_S = 8192


@triton.jit
def _rounding_kernel(
    out_ptr, g0_ptr, ef_ptr, ec_ptr, c_ptr, O, S, max_steps,
    BLOCK_O: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid_o = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = tl.arange(0, BLOCK_S)
    rmask = rows < O
    cmask = cols < S
    m2 = rmask[:, None] & cmask[None, :]
    row_base = b * O * S + rows.to(tl.int64) * S  # (BLOCK_O,)
    c_base = c_ptr + b * S * S
    offs = row_base[:, None] + cols[None, :]

    delta = tl.load(out_ptr + offs, mask=m2, other=0.0)
    # g0 = Delta C from the reference's bmm; doubling is exact.
    g = 2.0 * tl.load(g0_ptr + offs, mask=m2, other=0.0)
    idx = tl.broadcast_to(cols[None, :], (BLOCK_O, BLOCK_S))

    active = rmask
    step = 0
    n_active = tl.sum(active.to(tl.int32), axis=0)
    while (step < max_steps) & (n_active > 0):
        gm = tl.where(delta * g <= 0.0, 0.0, g)
        # padding gets -1 so it never wins over a real |g| >= 0
        score = tl.where(cmask[None, :], tl.abs(gm), -1.0)
        j = tl.argmax(score, axis=1, tie_break_left=True)
        # g_j and Delta_j in one reduction: exactly one nonzero term per row
        pick = tl.where((idx == j[:, None])[:, :, None], tl.join(g, delta), 0.0)
        gj, dj = tl.split(tl.sum(pick, axis=1))
        gmj = tl.where(dj * gj <= 0.0, 0.0, gj)  # the masked g_j the reference steps with
        ef = tl.load(ef_ptr + row_base + j, mask=active, other=0.0)
        ec = tl.load(ec_ptr + row_base + j, mask=active, other=0.0)
        cjj = tl.load(c_base + j.to(tl.int64) * S + j, mask=active, other=0.0)
        v = dj - gmj
        new = tl.where(tl.abs(v - ec) <= tl.abs(v - ef), ec, ef)
        d = new - dj
        change = d * gj + d * d * cjj
        ok = active & (change <= 0.0)
        crow = tl.load(c_base + j.to(tl.int64)[:, None] * S + cols[None, :],
                       mask=ok[:, None] & cmask[None, :], other=0.0)
        g = g + (2.0 * d)[:, None] * crow
        hit = (idx == j[:, None]) & ok[:, None]
        delta = tl.where(hit, new[:, None], delta)
        active = ok
        n_active = tl.sum(active.to(tl.int32), axis=0)
        step += 1

    tl.store(out_ptr + offs, delta, mask=m2)


def launch_config(n_rows: int, batch: int, s: int, device: torch.device,
                  block_o: int | None = None, num_warps: int | None = None,
                  ) -> tuple[int, int, int]:
    """``(BLOCK_O, BLOCK_S, num_warps)`` for ``batch`` x ``n_rows`` rows of length ``s``.

    Each step's time is mostly latency (two reductions, one dependent L2 read), so on a GPU
    one row per program is best (H200 sweeps, 100 steps: ViT-H |S| = 640: 0.32 ms with one
    row per program, 0.50 with two, 1.56 with 16; ViT-B |S| = 384: 0.14 / 0.19 / 0.41 ms;
    O = 3843, |S| = 40: 0.054 ms with one row, 0.077 with two in one run, 0.109 / 0.084 in
    another). The interpreter prefers few, large programs.
    """
    block_s = max(triton.next_power_of_2(s), 16)
    if block_o is None:
        block_o = 1 if device.type == "cuda" else max(1, min(16, 2048 // block_s))
    if num_warps is None:
        num_warps = max(1, min(16, block_o * block_s // 256))
    return block_o, block_s, num_warps


def rounding_refine(e_round: torch.Tensor, e_floor: torch.Tensor, e_ceil: torch.Tensor,
                    c: torch.Tensor, max_steps: int = 100, *, block_o: int | None = None,
                    num_warps: int | None = None) -> torch.Tensor:
    """Greedy rounding refinement; same contract as :func:`reference.rounding_refine`.

    Args:
        e_round, e_floor, e_ceil: ``(B, O, S)`` or ``(O, S)`` fp32 rounding errors.
        c: ``(B, S, S)`` or ``(S, S)`` fp32 symmetric proxy matrix.
        max_steps: at most this many flips per row.
        block_o, num_warps: rows per program and warps (tuning and tests only; defaults
            from :func:`launch_config`).
    Returns:
        ``Delta`` (fp32, ``e_round``'s shape), every entry one of ``e_round``, ``e_floor``,
        ``e_ceil`` at that position. Inputs other than fp32, or rows longer than
        ``MAX_BLOCK_S``, go to the reference.
    """
    s = e_round.shape[-1]
    batch = e_round.shape[0] if e_round.dim() == 3 else 1
    if (any(t.dtype != torch.float32 for t in (e_round, e_floor, e_ceil, c))
            or triton.next_power_of_2(max(s, 1)) > MAX_BLOCK_S
            or batch > _limits.MAX_GRID_YZ):  # the batch is a grid axis
        return reference.rounding_refine(e_round, e_floor, e_ceil, c, max_steps)
    squeeze = e_round.dim() == 2
    if squeeze:
        e_round, e_floor, e_ceil, c = (t.unsqueeze(0) for t in (e_round, e_floor, e_ceil, c))
    out = e_round.contiguous().clone()
    bsz, o = out.shape[0], out.shape[1]
    if max_steps > 0 and out.numel() > 0:
        ef, ec, cc = e_floor.contiguous(), e_ceil.contiguous(), c.contiguous()
        with reference._ieee_matmul():
            g0 = torch.bmm(out, cc)
        block_o, block_s, num_warps = launch_config(o, bsz, s, out.device, block_o, num_warps)
        grid = (triton.cdiv(o, block_o), bsz)
        _rounding_kernel[grid](out, g0, ef, ec, cc, o, s, int(max_steps),
                               BLOCK_O=block_o, BLOCK_S=block_s, num_warps=num_warps,
                               # keep d*g + d*d*C_jj unfused, evaluated as the reference does
                               enable_fp_fusion=False)
    return out.squeeze(0) if squeeze else out


_dispatch.register("rounding_refine", "triton", rounding_refine)
