#!/usr/bin/env bash
# On the GPU machine, one call: issue 4's benchmark (benchmarks/gpu_linalg.sh; BENCH=0 skips
# it), the leaf probe (benchmarks/probe_leaf_size.py; PROBE=0 skips it), the small shapes'
# profile (benchmarks/profile_linalg_small.py; SHAPES, and QUARTERS="0 1" for both leaf forms of
# cholesky_rec.LEAF_QUARTERS) and the GPU tests of the linear algebra and of the graph helper;
# logs under $OUT.
set -u
source "$(dirname "$0")/gpu_env.sh"
if [ "${BENCH:-1}" != 0 ]; then DEADLINE=${DEADLINE:-300} bash benchmarks/gpu_linalg.sh; fi
if [ "${PROBE:-1}" != 0 ]; then
  timeout 90 python3 benchmarks/probe_leaf_size.py --out "$OUT/probe_leaf_size.json" \
    2>&1 | tee "$OUT/probe_leaf_size.txt"
fi
timeout 150 python3 benchmarks/profile_linalg_small.py --shapes ${SHAPES:-36x193 36x385 12x769} \
  --quarters ${QUARTERS:-} 2>&1 | tee "$OUT/profile_linalg_small.txt"
TRITON_INTERPRET=0 timeout 120 python3 -m pytest -p no:warnings -m gpu tests/test_graphs.py \
  tests/test_kernels_linalg.py tests/test_kernels_gram_exact.py 2>&1 | tail -n 5 \
  | tee "$OUT/gpu_tests.txt"
