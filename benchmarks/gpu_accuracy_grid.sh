#!/usr/bin/env bash
# Every accuracy grid of benchmarks/RESULTS.md section 1 on the GPU, one device call (data_carry/
# carried; outputs under $OUT): rtn / gptq / erq (both modes) at W3A4 / W4A4 / W5A5 on three
# seeds (--plan main), the authors' per-layer lambdas beside the uniform one, and
# --post-gelu channel with its lambda sweep. ViT-Ti, the 1000 val images.
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
ERQ_DATA=$D python3 benchmarks/accuracy_sweep.py --plan main --plan authors_lambdas_gpu \
  --plan postgelu_seeds --plan postgelu_lambda --data "$D" --calib-files "$D/calib_files.json" \
  --out "$OUT/accuracy_grid_gpu.jsonl" 2>&1 | grep -v Warn | cut -c1-200 | tail -n 40
