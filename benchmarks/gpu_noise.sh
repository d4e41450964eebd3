#!/usr/bin/env bash
# ERQ (independent mode, lambda 1000) against GPTQ at W3A4 / W4A4 on the GPU, per image
# (--plan paired) and on FP models whose biases moved by ulps (--plan noise); analysed by
# benchmarks/paired_accuracy.py. data_carry/ carried; it holds the calibration images of one
# call's seeds only, so: SEEDS="0" with seed 0's images, then SEEDS="1 2" with theirs.
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
export TRITON_INTERPRET=0
ERQ_DATA=$D python3 benchmarks/accuracy_sweep.py --plan paired --plan noise --data "$D" \
  --calib-files "$D/calib_files.json" --seeds ${SEEDS:-0} \
  --out "$OUT/accuracy_noise_gpu.jsonl" 2>&1 | grep -v Warn | cut -c1-160 | tail -n 12
python3 benchmarks/paired_accuracy.py "$OUT/accuracy_noise_gpu.jsonl" --out "$OUT/paired_gpu.json"
