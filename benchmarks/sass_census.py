"""Static census of the 64 x 64 leaf kernel (``cholesky._chol_diag_kernel``) as the GPU would
run it, without a GPU: Triton compiles it for sm_90a, the ptxas and cuobjdump shipped in
Triton's wheel assemble and list it, and this prints registers, spills, instructions, barriers
and global memory instructions, and for every loop its length and barriers per iteration.
Triton's version here may differ from the GPU machine's (the census names it).

    python benchmarks/sass_census.py [--dprec ieee] [--warps 4]
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import tempfile

import triton
import triton.backends.nvidia as nv
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTERS = {"A": "*fp32", "W": "*fp32", "WS": "*fp32", "LAM": "*fp32", "INFO": "*i32"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dprec", default="ieee")
    ap.add_argument("--warps", type=int, default=4)
    args = ap.parse_args()
    kernel = importlib.import_module("erq_kernels.cholesky")._chol_diag_kernel
    names = list(kernel.arg_names)
    const = {"NB": 64, "DPREC": args.dprec, "STORE_WS": False}
    sig = {nm: POINTERS.get(nm, "constexpr" if nm in const else "i32") for nm in names}
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(names.index(k),): v for k, v in const.items()})
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": args.warps})
    bindir = os.path.join(os.path.dirname(nv.__file__), "bin")
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(ck.asm["ptx"])
        info = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o",
                               cubin], capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", cubin],
                              capture_output=True, text=True, check=True).stdout
    ins = []  # (address, text)
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2)))
    print(f"Triton {triton.__version__}, sm_90a, {args.warps} warps, DPREC={args.dprec}")
    print(" ".join(line.strip() for line in info.splitlines() if "registers" in line
                   or "spill" in line))

    def count(pattern, part):
        return sum(bool(re.search(pattern, t)) for _, t in part)
    print(f"{len(ins)} instructions: {count('BAR.SYNC', ins)} barriers, "
          f"{count('LDG', ins)} global loads, {count('STG', ins)} global stores, "
          f"{count('SHFL', ins)} shuffles, {count('FFMA', ins)} FFMA")
    for addr, text in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:  # a backward branch closes a loop
            body = [(a, t) for a, t in ins if int(m.group(1), 16) <= a <= addr]
            print(f"loop {m.group(1)}-{hex(addr)}: {len(body)} instructions, "
                  f"{count('BAR.SYNC', body)} barriers, {count('SHFL', body)} shuffles, "
                  f"{count('LDG', body)} global loads, {count('STG', body)} global stores")


if __name__ == "__main__":
    main()
