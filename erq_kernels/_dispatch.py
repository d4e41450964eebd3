"""Backend choice for every primitive.

Rules, in order:

0. (Below the environment, above the table:) a preference set by :func:`prefer` for the
   duration of a ``with`` block, e.g. the ERQ pipeline's reference linear algebra.
1. ``ERQ_KERNELS_BACKEND_<OP>`` (e.g. ``ERQ_KERNELS_BACKEND_GRAM_UPDATE``), then
   ``ERQ_KERNELS_BACKEND`` = ``reference`` | ``triton`` | ``triton_rec`` | ``triton_graph`` |
   ``triton_rec_graph`` | ``torch_loop`` | ``int8`` | ``graph`` | ``auto`` forces a backend for
   that op / every op that has it (``triton_rec``: the recursive Cholesky, ridge solve and
   inverse factor; ``*_graph``: those of ``triton`` / ``triton_rec`` replayed from a CUDA graph
   from the second call of a shape on; ``torch_loop``: the linear algebra; ``int8`` and
   ``graph``: ``gram_update`` and ``gram_update_exact``; ``int8`` also: ``fake_quant_linear``
   for 16-bit inputs with a packed weight) (``triton`` on CPU tensors needs
   ``TRITON_INTERPRET=1``; ``auto`` means the rules below).
2. CPU tensors (or Triton not importable, or an op without a Triton version): ``reference``.
3. CUDA tensors: the winner recorded in ``dispatch_table.json`` for the nearest measured shape
   of that op (written by ``benchmarks/bench_linalg.py`` and friends from timings on a real
   card). A kernel that lost on a shape in the benchmark is not used there, and a shape with
   no measurement within a factor of 4 in every dimension runs the reference: no guessing.
"""
from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

ENV = "ERQ_KERNELS_BACKEND"
_TABLE_PATH = Path(__file__).with_name("dispatch_table.json")
_IMPLS: dict[str, dict[str, Callable]] = {}
_TABLE: dict | None = None
_WINNERS: dict[tuple, str | None] = {}
_PREFERRED: dict[str, str] = {}


def register(op: str, backend: str, fn: Callable) -> None:
    """Make ``fn`` the ``backend`` implementation of ``op``."""
    _IMPLS.setdefault(op, {})[backend] = fn


def _table() -> dict:
    global _TABLE
    if _TABLE is None:
        try:
            _TABLE = json.loads(_TABLE_PATH.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            _TABLE = {}
    return _TABLE


_MAX_LOG_DIST = math.log(4.0)


def _nearest_winner(op: str, key: dict) -> str | None:
    """Winner of the measured shape nearest to ``key`` (log distance over shared fields);
    ``"reference"`` when no measured shape is within a factor of 4 in every field."""
    best, best_d, best_far = None, math.inf, True
    for rec in _table().get(op, []):
        d, far = 0.0, False
        for k, v in key.items():
            if k in rec and v is not None and rec[k]:
                step = abs(math.log(max(v, 1)) - math.log(max(rec[k], 1)))
                far |= step > _MAX_LOG_DIST
                d += step ** 2
        if d < best_d:
            best, best_d, best_far = rec["backend"], d, far
    if best is not None and best_far:
        return "reference"
    return best


def choose(op: str, device, key: dict | None = None) -> str:
    """Name of the backend that runs ``op`` on ``device`` for a problem described by ``key``."""
    impls = _IMPLS.get(op, {})
    forced = os.environ.get(f"{ENV}_{op.upper()}", "").strip().lower()
    forced = forced or os.environ.get(ENV, "").strip().lower()
    if forced and forced != "auto":
        if forced == "reference" or forced in impls:
            return forced
        if forced not in ("triton", "triton_rec", "triton_graph", "triton_rec_graph",
                          "torch_loop", "int8", "graph"):
            raise ValueError(f"{ENV}={forced!r}: expected auto, reference, triton, triton_rec, "
                             "triton_graph, triton_rec_graph, torch_loop, int8 or graph")
        return "reference"  # op has no such backend: the reference defines it
    preferred = _PREFERRED.get(op)
    if preferred is not None and (preferred == "reference" or preferred in impls):
        return preferred
    if getattr(device, "type", str(device)) != "cuda" or "triton" not in impls:
        return "reference"
    ck = (op, tuple(sorted((key or {}).items())))
    if ck not in _WINNERS:  # the table is fixed once loaded: decide each shape once
        _WINNERS[ck] = _nearest_winner(op, key or {})
    winner = _WINNERS[ck]
    if winner is not None and (winner == "reference" or winner in impls):
        return winner
    return "reference" if _table().get(op) else "triton"


@contextmanager
def prefer(backends: dict[str, str]):
    """Within the block, run each ``op`` of ``backends`` on the named backend (where it has
    one) instead of the table's choice; the ``ERQ_KERNELS_BACKEND*`` variables still win.
    Not thread-safe: one preference set at a time per process."""
    saved = dict(_PREFERRED)
    _PREFERRED.update({op: b.strip().lower() for op, b in backends.items()})
    try:
        yield
    finally:
        _PREFERRED.clear()
        _PREFERRED.update(saved)


def implementation(op: str, device, key: dict | None = None) -> Callable:
    """The function that runs ``op`` (see :func:`choose`)."""
    backend = choose(op, device, key)
    return _IMPLS[op][backend]
