"""What the two CUDA-graph modules (:mod:`linalg_graph`, :mod:`gram_graph`) share: capturing a
call on a stream of its own, and dropping a cache of graphs."""
from __future__ import annotations

import torch


def capture(dev: torch.device, prepare, body) -> tuple:
    """Run ``prepare()`` (fills the static inputs, compiles the kernels, sets up cuBLAS) and
    then capture ``body()`` into a new graph, both on a side stream of ``dev`` that is ordered
    after the caller's current stream, and order the caller after it again. Returns the graph
    and what ``body()`` returned (its static outputs, rewritten by every replay).

    The capture stream is named: torch's default capture stream lives on whichever device
    captured first, so a second GPU's capture would otherwise run on the first GPU's stream.
    The caller's stream is restored, and ordered after the side stream, even when the capture
    fails (a failed capture can leave its stream current, and a ``prepare()`` that raised can
    leave work queued on the side stream that reads buffers the caller then frees).
    """
    caller = torch.cuda.current_stream(dev)
    side = torch.cuda.Stream(dev)
    side.wait_stream(caller)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(side):
            prepare()
        side.synchronize()
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            out = body()
    finally:
        torch.cuda.set_stream(caller)
        caller.wait_stream(side)
    return graph, out


def drop_all(graphs, *others) -> None:
    """Empty the cache ``graphs`` (replays with a ``done`` event, waited for first, so no replay
    in flight loses its buffers) and the sets or dicts in ``others``."""
    for replay in graphs.values():
        replay.done.synchronize()
    graphs.clear()
    for o in others:
        o.clear()
