#!/usr/bin/env bash
# On the GPU machine, in one call (outputs under $OUT): the int8 Gram tests compiled for the GPU,
# every gram_update backend against the eager reference (rewrites the gram_update entries of
# erq_kernels/dispatch_table.json; a copy comes back), then ViT-Ti W4A4 seed 0 quantized with
# the reference and the default backend (benchmarks/backend_consistency.py). Data in
# data_carry/ (carried).
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
TRITON_INTERPRET=0 python3 -m pytest tests/test_kernels_gram_int8.py -m gpu -q -p no:cacheprovider \
  2>&1 | tail -n 5
python3 benchmarks/bench_rounding_gram.py --only gram --out "$OUT" --write-dispatch \
  > "$OUT/gram_log.txt" 2>&1
grep -v "^\[" "$OUT/gram_log.txt" | tail -n 40
cp erq_kernels/dispatch_table.json "$OUT/dispatch_table.json"
python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
  --seeds 0 --out "$OUT/consistency_w4a4.json" 2>&1 | tail -n 12
