"""The int8 exact Gram path replayed from a CUDA graph, for small layers.

At ViT-Ti's calibration shape (32 images: 6304 x 192) the int8 path of
:mod:`erq_kernels.gram_int8` has ~54 us of GPU work but ~220 us of host time per call: two
Triton launches (~20 us each on Triton 3.6), a column reduction, two fills, an allocation and
the int8 GEMM, each issued from Python. The eager fp32 path it replaces (~115 us) is
launch-bound too. Fusing everything into one kernel does not help: every output tile then
recomputes the codes of its two column blocks (``benchmarks/results/probe_gram_fused.txt``:
0.6-1.6 ms). So this backend keeps the int8 path's kernels and removes their host cost: the
first call of a shape captures :func:`gram_int8.run` on static buffers in a CUDA graph; each
call then copies ``X`` and the quantizer into those buffers, replays the graph (one launch)
and adds the graph's output to the caller's accumulators (one ``_foreach_add_``).

The bits are those of the int8 path: the graph writes the value ``v`` that path adds to each
accumulator entry (each entry gets exactly one; a fill of ``-0.0`` plus ``v`` would give ``v``
again), and the final add is the same ``acc + v``. That argument needs a single chunk of rows
(:func:`gram_exact.rows_per_chunk`); inputs of several chunks go to the int8 path. Each new
shape (``N`` included: a smaller last batch is a new shape) costs one capture, which
synchronizes the device and empties the allocator's cache; it runs on a side stream of the
input's device (:func:`erq_kernels._graphs.capture`). Graphs are kept for at most
:data:`MAX_GRAPHS` shapes (least recently used dropped, after their replays in flight finish);
inputs above :data:`MAX_ELEMENTS` elements, CPU tensors, calls made while a graph is being
captured and shapes whose capture failed (said once, as a warning) go to
:func:`gram_int8.gram_update` directly.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import torch

from . import _dispatch, _graphs, gram_exact, gram_int8
from .gram_exact import N_SLICES

__all__ = ["gram_update", "gram_update_exact", "clear", "MAX_GRAPHS", "MAX_ELEMENTS"]

MAX_GRAPHS = 8
MAX_ELEMENTS = 1 << 22  # N x D; a graph holds ~12 bytes per element of X plus ~50 D^2 bytes
MAX_D = 1024
GEMM = "auto"  # the int8 GEMM inside the graph (gram_int8.run's ``gemm``)

_GRAPHS: OrderedDict = OrderedDict()
_FAILED: set = set()  # shapes whose capture failed once
_LOCK = threading.Lock()


class _Replay:
    """One captured :func:`gram_int8.run` with its static input and output buffers."""

    def __init__(self, x, s_t, z_t, s_stride, integer_z, qmax, chunk_rows, n_slices, gemm):
        n, d = x.shape
        dev = x.device
        self.x = torch.empty((n, d), dtype=x.dtype, device=dev)
        self.sz = torch.empty(2 * s_t.numel(), dtype=torch.float32, device=dev)
        self.s, self.z = self.sz.chunk(2)  # filled by one torch.cat per call
        f32 = torch.float32
        self.out = [torch.empty(d + 1, d + 1, dtype=f32, device=dev),
                    torch.empty(d + 1, d + 1, dtype=f32, device=dev),
                    torch.empty(d + 1, dtype=f32, device=dev)]
        self.last_params = None  # the Python-number quantizer last written to self.s, self.z
        self.done = torch.cuda.Event()

        def work():
            # fresh: the outputs are written, not added to (no fills): -0.0 + v == v
            gram_int8.run(self.x, *self.out, self.s, self.z, s_stride, integer_z, qmax,
                          chunk_rows, n_slices, gemm, fresh=True)

        def prepare():
            self.x.copy_(x)
            torch.cat([s_t, z_t], out=self.sz)
            work()  # compiles the Triton kernels and sets up cuBLASLt outside the capture

        self.graph, _ = _graphs.capture(dev, prepare, work)

    def __call__(self, x, ata, atx, colsum, s_t, z_t, params):
        stream = torch.cuda.current_stream(x.device)
        stream.wait_event(self.done)  # the previous call (any stream) is done with the buffers
        self.x.copy_(x)
        if params is None:
            torch.cat([s_t, z_t], out=self.sz)
        elif params != self.last_params:
            self.s.fill_(params[0])  # the same fp32 rounding as torch.full in quant_params
            self.z.fill_(params[1])
        self.last_params = params
        self.graph.replay()
        torch._foreach_add_([ata, atx, colsum], self.out)
        self.done.record(stream)


def clear() -> None:
    """Drop every captured graph (and its memory), after the replays in flight are done."""
    with _LOCK:
        _graphs.drop_all(_GRAPHS, _FAILED)


def _numbers(scale, zero):
    """``(scale, zero)`` when both are Python numbers (their device copies can be reused)."""
    if isinstance(scale, (int, float)) and (zero is None or isinstance(zero, (int, float))):
        return float(scale), 0.0 if zero is None else float(zero)
    return None


def gram_update(x: torch.Tensor, ata: torch.Tensor, atx: torch.Tensor, colsum: torch.Tensor,
                scale=None, zero=None, qmax: int | None = None, *, chunk_rows: int | None = None,
                n_slices: int = N_SLICES, exact: bool = False) -> None:
    """:func:`gram_int8.gram_update` (same arguments, same bits) through a CUDA graph per shape.

    Args:
        x: ``(N, D)`` fp32, bf16 or fp16 on CUDA, ``N x D <= MAX_ELEMENTS``, ``D <= MAX_D``.
        ata, atx: ``(D+1, D+1)`` fp32 accumulators, contiguous; colsum: ``(D+1,)`` fp32.
        scale, zero, qmax: the input quantizer (per tensor or per channel, ``qmax <= 255``).
        chunk_rows, n_slices, exact: as :func:`gram_int8.gram_update`.
    The first call of a shape captures its graph (milliseconds); a tensor zero point needs
    :func:`erq_kernels.gram_prepare` to avoid one host synchronization per call, as in the int8
    path.
    """
    if not _replayed(x, ata, atx, colsum, scale, zero, qmax, chunk_rows, n_slices):
        return gram_int8.gram_update(x, ata, atx, colsum, scale, zero, qmax,
                                     chunk_rows=chunk_rows, n_slices=n_slices, exact=exact)
    return None


def _replayed(x, ata, atx, colsum, scale, zero, qmax, chunk_rows, n_slices) -> bool:
    """Run the call through its shape's graph; ``False`` (nothing done) where none applies."""
    n, d = x.shape if x.dim() == 2 else (0, 0)
    if (not x.is_cuda or n == 0 or n * d > MAX_ELEMENTS or d > MAX_D
            or not gram_int8.supported(x, ata, atx, colsum, scale, qmax)
            or torch.cuda.is_current_stream_capturing()):
        return False
    nums = _numbers(scale, zero)
    if nums is None:
        s_t, z_t, s_stride, integer_z = gram_int8._params(scale, zero, d, x.device)
        numel = s_t.numel()
    else:  # device copies are made only when the numbers change (no fills per call)
        s_t = z_t = None
        numel, s_stride, integer_z = 1, 0, gram_exact.integer_zero(nums[1])
    qmax = int(qmax)
    if n > gram_exact.rows_per_chunk(qmax, d, integer_z, chunk_rows, n_slices):
        # several chunks: the graph's output (v1 + v2 + ...) added to the accumulators would
        # round differently from the definition's ((acc + v1) + v2) + ...
        return False
    key = (x.device.index, n, d, x.dtype, numel, s_stride, integer_z, qmax, chunk_rows,
           n_slices, GEMM)
    with _LOCK, torch.cuda.device(x.device):  # capture and replay on x's device
        replay = _replay_for(key, nums, x, s_t, z_t, s_stride, integer_z, qmax, chunk_rows,
                             n_slices)
        if replay is None:
            return False
        replay(x, ata, atx, colsum, s_t, z_t, nums)
    return True


def _replay_for(key, nums, x, s_t, z_t, s_stride, integer_z, qmax, chunk_rows, n_slices):
    """The graph of ``key`` (captured now, from the call's arguments, if it is new), or
    ``None`` where its capture failed; called with :data:`_LOCK` held."""
    replay = _GRAPHS.get(key)
    if replay is None and key not in _FAILED:
        if s_t is None:
            s_t, z_t, _ = gram_exact.quant_params(*nums, x.shape[1], x.device)
        try:
            replay = _Replay(x, s_t, z_t, s_stride, integer_z, qmax, chunk_rows, n_slices, GEMM)
        except Exception as exc:  # no graph for this shape: the int8 path, said once
            _FAILED.add(key)
            warnings.warn(f"erq_kernels.gram_graph: capture failed for N={x.shape[0]}, "
                          f"D={x.shape[1]} "
                          f"({exc}); using the int8 path without a graph", RuntimeWarning)
            return None
        _GRAPHS[key] = replay
        while len(_GRAPHS) > MAX_GRAPHS:
            _GRAPHS.popitem(last=False)[1].done.synchronize()
    if replay is not None:
        _GRAPHS.move_to_end(key)
    return replay


def gram_update_exact(x, ata, atx, colsum, scale=None, zero=None, qmax=None, **kw) -> None:
    """:func:`erq_kernels.gram_exact.gram_update` through the graphed int8 path: the same bits."""
    return gram_update(x, ata, atx, colsum, scale, zero, qmax, exact=True, **kw)


_dispatch.register("gram_update", "graph", gram_update)
_dispatch.register("gram_update_exact", "graph", gram_update_exact)
