#!/usr/bin/env bash
# Per-channel post-GELU quantizer (QuantConfig.post_gelu="channel") on the GPU, one device call
# (data_carry/ carried; outputs under $OUT): the GPU tests of the exact Gram paths; ViT-Ti
# W4A4 seed 0 quantized by the reference and by the default backend with the option on
# (benchmarks/backend_consistency.py: same top-1, same codes?); the accuracy grid of
# benchmarks/RESULTS.md section 1 (three seeds, W3A4 / W4A4 / W5A5, with and without the option).
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
TRITON_INTERPRET=0 python3 -m pytest tests/test_kernels_gram_exact.py -m gpu -q -p no:cacheprovider 2>&1 | tail -n 3
python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
  --seeds 0 --post-gelu channel --out "$OUT/consistency_w4a4_postgelu.json" 2>&1 \
  | grep -v "^{'device" | cut -c1-220
ERQ_DATA=$D python3 benchmarks/accuracy_sweep.py --plan postgelu_seeds --plan postgelu --plan postgelu_lambda --data "$D" \
  --calib-files "$D/calib_files.json" --out "$OUT/accuracy_postgelu_gpu.jsonl" 2>&1 \
  | grep -v Warn | cut -c1-200
