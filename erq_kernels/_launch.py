"""A leaner launch for small, frequent kernels: the compiled kernel cached under a key the
caller computes, then launched the way ``JITFunction.run`` launches it, without the JIT's
per-call argument binding and specialization.

Why: on the H200 machine's host, issuing the one-pass quantizer through the JIT cost 23-32 us
per call, more than its GPU time at ViT-B sizes (5-12 us), which left the quantized linear
layers host-bound (``benchmarks/results/profile_fakequant.txt``).

Safety: the caller's key must hold everything the JIT specializes on (each tensor's dtype and
16-byte alignment, each integer's divisibility by 16, whether it is 1, and whether it needs 64
bits; the constexprs and launch options). The first call of a key goes through the JIT, which
compiles and returns the kernel. The fast path is used only where the installed Triton launches
exactly as this module does (its ``JITFunction.run`` source is checked once), never under the
interpreter; otherwise every call goes through the JIT. What the JIT re-reads at every call and
this path reads only at a key's first call: Triton's debug and instrumentation settings, its
pre-run hooks and the active driver (``ERQ_KERNELS_JIT_LAUNCH=1`` before the first launch turns
the cache off for such work).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import threading

_LAUNCH_LINE = ("kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, "
                "launch_metadata,")
_ARGS_LINE = "knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())"
_SUPPORTED = None
_RUNTIME = _ACTIVE = None  # triton.knobs.runtime and triton's active driver, once supported()


def supported() -> bool:
    """Whether this Triton's ``JITFunction.run`` launches as :class:`CachedLaunch` does (and the
    interpreter is off). ``ERQ_KERNELS_JIT_LAUNCH=1`` turns the fast path off."""
    global _SUPPORTED, _RUNTIME, _ACTIVE
    if _SUPPORTED is None:
        ok = os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
        ok = ok and os.environ.get("ERQ_KERNELS_JIT_LAUNCH", "0") in ("", "0")
        if ok:
            try:
                from triton import knobs
                from triton.runtime.driver import driver
                from triton.runtime.jit import JITFunction
                src = " ".join(inspect.getsource(JITFunction.run).split())
                ok = " ".join(_LAUNCH_LINE.split()) in src and _ARGS_LINE in src
                _RUNTIME, _ACTIVE = knobs.runtime, driver.active
            except Exception:  # an older or newer Triton: the JIT launches everything
                ok = False
        _SUPPORTED = ok
    return _SUPPORTED


@contextlib.contextmanager
def jit_launches():
    """Within the block every launch goes through Triton's JIT (for comparisons and tests)."""
    global _SUPPORTED
    prev, _SUPPORTED = _SUPPORTED, False
    try:
        yield
    finally:
        _SUPPORTED = prev


def align_key(*values) -> tuple:
    """The part of a cache key that Triton specializes on, for the runtime arguments
    ``values``: a tensor's dtype and whether its address is 16-byte aligned, an integer's
    divisibility by 16, equality to 1 and need for 64 bits; other values by type."""
    key = []
    for v in values:
        if hasattr(v, "data_ptr"):
            key.append((v.dtype, v.data_ptr() % 16 == 0))
        elif isinstance(v, bool):
            key.append(("b", v))
        elif isinstance(v, int):
            key.append(("i", v % 16 == 0, v == 1, -2 ** 31 <= v < 2 ** 31))
        else:
            key.append(type(v))
    return tuple(key)


class CachedLaunch:
    """``launcher(grid, key, args, consts, **options)`` runs ``kernel[grid](*args, **consts,
    **options)`` (or ``tuner[grid](...)``, an autotuner over ``kernel``): ``args`` are the
    leading runtime arguments in the kernel's parameter order, ``consts`` the other parameters
    by name, ``key`` everything that selects the compiled kernel (see the module docstring:
    :func:`align_key` of ``args``, the constexpr values, the options, and with a tuner the
    values its key is made of). With a tuner, ``grid`` is a function of the chosen config's
    constexprs, which the cached launch reuses."""

    def __init__(self, kernel, tuner=None):
        self.kernel = kernel
        self.tuner = tuner
        self.compiled = {}
        self._names = {}
        # a first call reads the tuner's best_config after launching: no other call between
        self._first = threading.Lock()

    def __call__(self, grid, key, args, consts, **options):
        launcher = self.kernel if self.tuner is None else self.tuner
        if not supported():
            launcher[grid](*args, **consts, **options)
            return
        dev = _ACTIVE.get_current_device()  # the JIT's cache is per current device too
        hit = self.compiled.get((dev, key))
        if hit is None:
            with self._first:
                ck = launcher[grid](*args, **consts, **options)
                cfg = {} if self.tuner is None else dict(self.tuner.best_config.kwargs)
            if ck is not None:  # a JIT cache hook may launch nothing and return None
                self.compiled[(dev, key)] = (ck, cfg)
            return
        ck, cfg = hit
        if cfg:
            consts = {**consts, **cfg}
            grid = grid(consts)
        names = self._names.get(len(args))
        if names is None:
            names = self._names[len(args)] = tuple(self.kernel.arg_names[len(args):])
        allargs = (*args, *[consts[name] for name in names])
        stream = _ACTIVE.get_current_stream(dev)
        gy = grid[1] if len(grid) > 1 else 1
        gz = grid[2] if len(grid) > 2 else 1
        enter = _RUNTIME.launch_enter_hook
        # launch_metadata returns None without an enter hook (it is what the JIT passes then)
        meta = None if enter is None else ck.launch_metadata(grid, stream, *allargs)
        ck.run(grid[0], gy, gz, stream, ck.function, ck.packed_metadata, meta, enter,
               _RUNTIME.launch_exit_hook, *allargs)
