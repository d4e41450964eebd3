"""The Triton linear algebra replayed from CUDA graphs: backends ``triton_graph`` and
``triton_rec_graph`` of ``cholesky``, ``ridge_solve`` and ``inverse_cholesky_upper``.

At small n both Triton algorithms are host-bound: the blocked factorization issues 3 launches
per 64 columns and the recursive one about 8 per 64-column leaf, and a Triton 3.6 launch costs
about 20 us of host time, more than the GPU work of one small step (36 x 193: 10 launches,
0.22 ms). A graph per call signature removes that cost: the call's inputs are copied into
static buffers, the graph replays every launch at once, and the outputs are returned as
copies (the graph's own buffers are reused by the next replay).

Policy: the first call of a signature runs eagerly, so a shape solved once never pays for a
capture (which synchronizes the device and takes several eager calls' time); the second
captures, and every later call replays. The bits are those of the eager backend (same kernels,
same launch order). Graphs are kept for at most :data:`MAX_GRAPHS` signatures (least recently
used dropped) and only for inputs of at most :data:`MAX_ELEMENTS` elements in all (a graph
holds its inputs and every intermediate of the call, a few times the input size). CPU
tensors, non-fp32 inputs, calls made during another capture and signatures whose capture
failed (said once, as a warning) run the eager backend.
"""
from __future__ import annotations

import importlib
import threading
import warnings
from collections import OrderedDict

import torch

from . import _dispatch, _graphs

__all__ = ["clear", "eligible", "MAX_GRAPHS", "MAX_ELEMENTS"]

MAX_GRAPHS = 8
# elements of G (and B) per call, 1 GiB of fp32 inputs: admits 96 x 1281 (factorization and
# inverse factor 1.24-1.38x faster graphed on the H200, 1.17 GiB more allocated while a graph
# is held, its private pool of intermediates besides; RESULTS.md section 4); MAX_GRAPHS of them
MAX_ELEMENTS = 1 << 28
_OPS = ("cholesky", "ridge_solve", "inverse_cholesky_upper")

# by module path: the package's ``cholesky`` attribute is the public function; both modules are
# imported (and registered) before this one
_C = importlib.import_module(f"{__package__}.cholesky")
_RC = importlib.import_module(f"{__package__}.cholesky_rec")

_GRAPHS: OrderedDict = OrderedDict()
_SEEN: OrderedDict = OrderedDict()  # signatures called once (eagerly) so far
_FAILED: set = set()
_LOCK = threading.Lock()


class _Replay:
    """One captured call of ``fn(g[, b], lam_vector)`` with static inputs and outputs."""

    def __init__(self, fn, inputs: list[torch.Tensor], lam_value: float | None):
        dev = inputs[0].device
        self.inputs = [torch.empty_like(t, memory_format=torch.contiguous_format)
                       for t in inputs]
        self.lam_value = lam_value  # the Python number in the lambda buffer (None: a tensor's)
        self.done = torch.cuda.Event()

        def prepare():
            for dst, src in zip(self.inputs, inputs):
                dst.copy_(src)
            fn(*self.inputs)  # compiles and caches outside the capture

        self.graph, self.outputs = _graphs.capture(dev, prepare, lambda: fn(*self.inputs))

    def __call__(self, tensors: list[torch.Tensor], lam) -> tuple:
        stream = torch.cuda.current_stream(tensors[0].device)
        stream.wait_event(self.done)  # the previous replay's outputs were copied out
        for dst, src in zip(self.inputs, tensors):
            dst.copy_(src)
        lam_buf = self.inputs[-1]
        if isinstance(lam, torch.Tensor):
            lam_buf.copy_(lam.to(torch.float32).expand(lam_buf.shape))
            self.lam_value = None
        elif lam != self.lam_value:
            lam_buf.fill_(lam)
            self.lam_value = lam
        self.graph.replay()
        out = tuple(o.clone() for o in self.outputs)
        self.done.record(stream)
        return out


def clear() -> None:
    """Drop every captured graph (and its memory) after the replays in flight are done."""
    with _LOCK:
        _graphs.drop_all(_GRAPHS, _SEEN, _FAILED)


def _settings() -> tuple:
    """The module-level launch settings the eager kernels read (part of a graph's key: a graph
    keeps the kernels it captured)."""
    return (_C.CHOL_NB, _C.DIAG_WARPS, _C.TRSM_BN, _C.PREC, _RC.BIG, _RC.SMALL, _RC.SOLVE_BIG,
            _RC.SOLVE_PREC, _RC.CLEAN_TRI, _RC.PREC, tuple(sorted(_RC.REFINE.items())),
            _RC.LEAF_WARPS, _RC.LEAF_QUARTERS, _RC.STRIP_BLOCKS)


def eligible(tensors: list[torch.Tensor]) -> bool:
    """Whether a call with these tensor arguments goes through a graph (CUDA, fp32, one device,
    nonempty, at most MAX_ELEMENTS in all, not inside another capture)."""
    dev = tensors[0].device
    return (all(t.is_cuda and t.device == dev and t.dtype == torch.float32 and t.numel() > 0
                for t in tensors)
            and sum(t.numel() for t in tensors) <= MAX_ELEMENTS
            and not torch.cuda.is_current_stream_capturing())


def _call(op: str, backend: str, tensors: list[torch.Tensor], lam):
    eager = _dispatch._IMPLS[op][backend]
    lam_is_tensor = isinstance(lam, torch.Tensor)
    if not eligible(tensors + ([lam] if lam_is_tensor else [])):
        return eager(*tensors, lam)
    g = tensors[0]
    bshape = g.shape[:-2]
    lam_num = None if lam_is_tensor else (0.0 if lam is None else float(lam))
    key = (op, backend, g.device.index, tuple(t.shape for t in tensors), lam_is_tensor,
           _settings())
    with _LOCK, torch.cuda.device(g.device):
        replay = _GRAPHS.get(key)
        if replay is None:
            if key in _FAILED:
                return eager(*tensors, lam)
            if key not in _SEEN:
                _SEEN[key] = True
                while len(_SEEN) > 4 * MAX_GRAPHS:
                    _SEEN.popitem(last=False)
                return eager(*tensors, lam)
            lam_v = (lam.to(torch.float32).expand(bshape).clone() if lam_is_tensor
                     else torch.full(bshape, lam_num, dtype=torch.float32, device=g.device))
            try:
                replay = _Replay(eager, [*tensors, lam_v], lam_num)
            except Exception as exc:  # no graph for this signature: eager, said once
                _FAILED.add(key)
                warnings.warn(f"erq_kernels.linalg_graph: capture of {op} ({backend}) failed "
                              f"for shapes {key[3]} ({exc}); running it eagerly", RuntimeWarning)
                return eager(*tensors, lam)
            del _SEEN[key]  # evicted later, it starts again from an eager call
            _GRAPHS[key] = replay
            while len(_GRAPHS) > MAX_GRAPHS:
                _GRAPHS.popitem(last=False)[1].done.synchronize()
        _GRAPHS.move_to_end(key)
        return replay(tensors, lam if lam_is_tensor else lam_num)


def _graphed(op: str, backend: str):
    """The ``backend + "_graph"`` version of ``op`` (the reference's signature)."""
    if op == "ridge_solve":
        def run(g, b, lam=None):
            return _call(op, backend, [g, b], lam)
    else:
        def run(g, lam=None):
            return _call(op, backend, [g], lam)
    run.__doc__ = f"``{op}`` of backend ``{backend}`` through a CUDA graph per signature."
    return run


for _op in _OPS:
    for _backend in ("triton", "triton_rec"):
        if _backend in _dispatch._IMPLS.get(_op, {}):
            _dispatch.register(_op, _backend + "_graph", _graphed(_op, _backend))
