"""Record the Triton launches the CPU interpreter runs, and compile them for a Hopper GPU.

The interpreter accepts some code that the compiler rejects (a loop index reassigned under a
``tl.constexpr`` branch stops being a constexpr for the compiler, not for the interpreter), and
the GPU is not always at hand. :class:`Recorder` collects, per kernel, the argument types and
constexpr values of every interpreted launch; ``python tests/kernel_specs.py SPECS.json``
(without ``TRITON_INTERPRET``) compiles each for sm_90a with the ptxas of Triton's wheel, on a
machine without a GPU, and exits non-zero if any fails.
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys

import torch

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}
# constexprs that only the interpreter sets this way: compile what the GPU runs
_GPU_VALUES = {"EMULATE": False, "FAST_DIV": True}


def _spec(fn, args, kwargs) -> dict:
    """The kernel's module and name, its argument types (``"*fp32"``, ``"i32"``, ...), its
    constexpr values and its launch options, from one launch's arguments."""
    params = inspect.signature(fn).parameters
    bound = dict(zip(params, args))
    options = {}
    for key, value in kwargs.items():
        if key in params:
            bound[key] = value
        elif key in ("num_warps", "num_stages"):
            options[key] = value
    types, consts = {}, {}
    for name, param in params.items():
        if name not in bound:
            consts[name] = param.default  # a constexpr left at its default
            continue
        value = bound[name]
        if "constexpr" in str(param.annotation) or value is None:
            consts[name] = _GPU_VALUES.get(name, getattr(value, "value", value))
        elif torch.is_tensor(value):
            types[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, bool):
            types[name] = "i1"
        elif isinstance(value, int):
            types[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
        elif isinstance(value, float):
            types[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(value).__name__}")
    return {"module": fn.__module__, "kernel": fn.__name__, "types": types, "consts": consts,
            "options": options}


class Recorder:
    """Records every launch of an interpreted kernel (each distinct :func:`_spec` once) while
    installed; the launches still run as usual."""

    def __init__(self):
        self.specs: list[dict] = []
        self._seen: set[str] = set()
        self._run = None

    def install(self) -> None:
        from triton.runtime.interpreter import InterpretedFunction
        if self._run is not None:
            return
        run = self._run = InterpretedFunction.run
        recorder = self

        def recording_run(self, *args, grid, warmup, **kwargs):
            try:
                spec = _spec(self.fn, args, kwargs)
            except Exception as e:  # never in the way of the launch; the compile test fails
                spec = {"module": self.fn.__module__, "kernel": self.fn.__name__,
                        "error": f"not recordable: {type(e).__name__}: {e}"}
            recorder.add(spec)
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)

        InterpretedFunction.run = recording_run

    def uninstall(self) -> None:
        from triton.runtime.interpreter import InterpretedFunction
        if self._run is not None:
            InterpretedFunction.run, self._run = self._run, None

    def add(self, spec: dict) -> None:
        key = json.dumps(spec, sort_keys=True, default=repr)
        if key not in self._seen:
            self._seen.add(key)
            self.specs.append(spec)


def compile_spec(spec: dict, capability: int = 90):
    """Compile one recorded launch for ``sm_<capability>`` (needs ``TRITON_INTERPRET`` unset,
    so that the kernels are ``JITFunction``s)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    names = list(kernel.arg_names)
    signature = {name: spec["types"].get(name, "constexpr") for name in names}
    consts = {(names.index(name),): value for name, value in spec["consts"].items()}
    src = ASTSource(fn=kernel, signature=signature, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options=spec["options"])


def main(path: str) -> int:
    """Compile every spec of the JSON file; a spec with ``"expect_fail": true`` must fail (the
    check's own control). Exit status 1 on any unexpected outcome."""
    specs = json.loads(open(path).read())
    bad = 0
    for spec in specs:
        label = f"{spec['module']}.{spec['kernel']} {spec.get('consts')} {spec.get('options')}"
        try:
            if "error" in spec:
                raise RuntimeError(spec["error"])
            compile_spec(spec)
            error = None
        except Exception as e:  # report every failure, not only the first
            error = f"{type(e).__name__}: {str(e)[-1500:]}"
        if spec.get("expect_fail"):
            print(f"{'control failed as expected' if error else 'CONTROL COMPILED'}: {label}")
            bad += error is None
        elif error:
            print(f"FAILED {label}\n  {error}", flush=True)
            bad += 1
    print(f"{bad} unexpected outcomes in {len(specs)} kernel specializations compiled for sm_90a")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
