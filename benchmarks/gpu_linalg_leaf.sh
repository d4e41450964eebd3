#!/usr/bin/env bash
# On the GPU machine, one call: issue 4's benchmark (benchmarks/gpu_linalg.sh), then the leaf
# probes (benchmarks/probe_leaf_size.py, benchmarks/profile_linalg_small.py) and the GPU tests
# of the linear algebra and the graph helper; logs under $OUT.
set -u
source "$(dirname "$0")/gpu_env.sh"
DEADLINE=${DEADLINE:-300} bash benchmarks/gpu_linalg.sh
timeout 60 python3 benchmarks/probe_leaf_size.py --out "$OUT/probe_leaf_size.json" \
  2>&1 | tee "$OUT/probe_leaf_size.txt"
timeout 90 python3 benchmarks/profile_linalg_small.py --shapes 36x193 36x385 12x769 \
  2>&1 | tee "$OUT/profile_linalg_small.txt"
TRITON_INTERPRET=0 timeout 120 python3 -m pytest -q -p no:warnings -m gpu tests/test_graphs.py \
  tests/test_kernels_linalg.py tests/test_kernels_gram_exact.py 2>&1 | tail -n 15 \
  | tee "$OUT/gpu_tests.txt"
