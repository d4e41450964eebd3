"""Imports every Triton kernel module so that each registers its backend."""
import importlib

for _mod in ("cholesky", "cholesky_rec", "linalg_graph", "gram", "gram_int8", "gram_graph",
             "rounding", "fakequant", "int8_linear"):
    try:
        importlib.import_module(f"erq_kernels.{_mod}")
    except ModuleNotFoundError as exc:  # a kernel module not written yet
        if exc.name != f"erq_kernels.{_mod}":
            raise
