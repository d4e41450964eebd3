"""Every Triton kernel launch of this test session, compiled for a Hopper GPU (sm_90a) on the CPU.

conftest.py records each distinct launch the interpreter runs (kernel, argument types,
constexpr values, warps and stages); this file is collected last, so it sees the launches of the
kernel tests before it. The compilation runs in a subprocess without TRITON_INTERPRET
(``kernel_specs.py``), with the ptxas of Triton's wheel: no GPU needed. It catches code that the
interpreter runs and the compiler rejects, such as :func:`_constexpr_lost` below.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
import kernel_specs  # noqa: E402


@triton.jit
def _constexpr_lost(X, N: tl.constexpr, BACK: tl.constexpr):
    """Runs in the interpreter; the compiler rejects it: ``j`` reassigned under a constexpr
    branch is no longer a constexpr, so ``tl.static_range(j)`` fails."""
    for jj in tl.static_range(N):
        j = jj
        if BACK:
            j = N - 1 - jj
        for i in tl.static_range(j):
            tl.store(X + i, 1.0)


def test_recorded_kernels_compile_for_sm90(kernel_recorder, tmp_path):
    if kernel_recorder is None or not kernel_recorder.specs:
        pytest.skip("no kernel ran through the interpreter in this session (run this file with "
                    "the kernel tests)")
    from triton.backends import backends
    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend to compile with")
    import torch
    specs = list(kernel_recorder.specs)
    control = kernel_specs._spec(_constexpr_lost.fn, (torch.zeros(4),), {"N": 3, "BACK": True})
    control["module"] = __name__
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs + [{**control, "expect_fail": True}], default=repr))
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests"),
                                         env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(root / "tests" / "kernel_specs.py"), str(path)],
                         capture_output=True, text=True, env=env, timeout=1800)
    out = run.stdout + run.stderr
    print(out[-3000:])
    assert "control failed as expected" in out, out[-5000:]
    assert run.returncode == 0, out[-5000:]
    kernels = {s["kernel"] for s in specs}
    assert f"0 unexpected outcomes in {len(specs) + 1} kernel" in out, out[-5000:]
    print(f"{len(specs)} specializations of {len(kernels)} kernels compiled")
