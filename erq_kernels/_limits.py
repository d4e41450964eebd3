"""Sizes the Triton kernels can index, and the test the public functions make before using them.

The kernels compute offsets within one matrix in 32-bit integers (the offset of a matrix in the
batch is 64-bit), and put the batch on a grid axis that CUDA caps at 65535 programs. A problem
beyond either limit would be miscomputed or refused at launch, so the public functions hand it
to the torch reference instead (or, for the fake-quant matmuls, to the strategy whose GEMM is
torch's): slower, never wrong. The margins are generous: the limits sit far above the shapes
ERQ meets (n <= 5121; ``benchmarks/RESULTS.md``), so only the headroom is given up.
"""
from __future__ import annotations

import torch

INT32 = 2 ** 31
MAX_GRID_YZ = 65535
# padding to the kernels' tiles (64) and a tile's overhang past the last row or column (128)
_PAD = 192


def span(t: torch.Tensor) -> int:
    """Elements from the first to the last element of ``t``."""
    return sum((size - 1) * abs(st) for size, st in zip(t.shape, t.stride()) if size > 0)


def matrix_span(t: torch.Tensor) -> int:
    """:func:`span` of one matrix (the last two dims) of ``t`` (written out: the batched GEMM
    checks its four operands at every call)."""
    if t.dim() < 2:
        return span(t)
    n0, n1 = t.shape[-2:]
    s0, s1 = t.stride()[-2:]
    return max(n0 - 1, 0) * abs(s0) + max(n1 - 1, 0) * abs(s1)


def linalg_fits(batch: int, n: int, *widths: int, tensors=()) -> bool:
    """Whether a batch of ``batch`` order-``n`` systems with right-hand sides of the given
    widths, read from ``tensors`` with their strides, stays within the kernels' indexing: every
    ``(n + pad) x (max(n, width) + pad)`` work matrix and every input matrix's span under 2^31
    elements, and the batch within a grid axis."""
    wide = max((n, *widths)) + _PAD
    return (batch <= MAX_GRID_YZ and (n + _PAD) * wide < INT32
            and all(matrix_span(t) < INT32 for t in tensors))
