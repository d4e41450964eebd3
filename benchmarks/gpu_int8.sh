#!/usr/bin/env bash
# On the GPU machine, the int8 linear layer in one call (outputs under $OUT): its GPU tests,
# the per-layer benchmark with the dispatch table rewritten (ViT-B, ViT-H, ViT-B evaluation
# batches), quantized evaluation throughput (ViT-B) and the ViT-Ti bf16 evaluation with and
# without it. Data in data_carry/ (carried).
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
export TRITON_INTERPRET=0
python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_kernels_int8_linear.py \
  tests/test_launch.py tests/test_kernels_fakequant.py 2>&1 | tail -n 5
python3 benchmarks/bench_fakequant.py --models vit_b vit_h vit_b_eval --out "$OUT" \
  --write-dispatch > "$OUT/fakequant_log.txt" 2>&1
grep -E "check int8|correctness|^linear|^matmul|^op" "$OUT/fakequant_log.txt" | head -n 60
cp erq_kernels/dispatch_table.json "$OUT/dispatch_table.json"
python3 benchmarks/bench_eval.py --calib "$D/imagenet-calib" --out "$OUT" 2>&1 | tail -n 8
python3 benchmarks/int8_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
  --out "$OUT/int8_consistency_w4a4.json" 2>&1 | tail -n 8
