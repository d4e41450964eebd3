#!/usr/bin/env bash
# After a change that moves the quantized weights (here: the DUQ tie rule), one device call
# (data_carry/ carried; outputs under $OUT): the GPU tests of the exact and int8 Gram paths;
# ViT-Ti W4A4 seeds 0-2 quantized by the reference and by the default backend, with the
# perturbation rows (benchmarks/backend_consistency.py), and seed 0 with --post-gelu channel;
# the --post-gelu plan of benchmarks/accuracy_sweep.py (rtn W8A8 among it).
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
TRITON_INTERPRET=0 python3 -m pytest tests/test_kernels_gram_exact.py tests/test_kernels_gram_int8.py \
  -m gpu -q -p no:cacheprovider 2>&1 | tail -n 3
python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
  --seeds 0 1 2 --perturb --fast-linalg --out "$OUT/consistency_w4a4_exact.json" 2>&1 \
  | grep -v "^{'device" | cut -c1-220
python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
  --seeds 0 --post-gelu channel --out "$OUT/consistency_w4a4_postgelu.json" 2>&1 \
  | grep -v "^{'device" | cut -c1-220
ERQ_DATA=$D python3 benchmarks/accuracy_sweep.py --plan postgelu --data "$D" \
  --calib-files "$D/calib_files.json" --out "$OUT/accuracy_grid_gpu_postgelu.jsonl" 2>&1 \
  | grep -v Warn | cut -c1-200
