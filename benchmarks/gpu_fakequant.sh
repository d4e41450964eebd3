#!/usr/bin/env bash
# On the GPU machine, everything issue 6 is checked by, in one call (outputs under $OUT): the
# host-time profile, the per-layer benchmark (ViT-B and ViT-H), quantized evaluation throughput
# (ViT-B) and the ViT-Ti eval-path identity (eager vs Triton evaluation of the same quantized
# weights; CONSISTENCY=0 skips it). Data in data_carry/ (carried).
set -u
D=${DATA:-data_carry}
source "$(dirname "$0")/gpu_env.sh"
python3 benchmarks/profile_fakequant.py 2>&1 | tee "$OUT/profile_fakequant.txt" | grep -v "^    kernel"
python3 benchmarks/bench_fakequant.py --models vit_b vit_h --out "$OUT" > "$OUT/fakequant_log.txt" 2>&1
tail -n 30 "$OUT/fakequant_log.txt"
python3 benchmarks/bench_eval.py --calib "$D/imagenet-calib" --out "$OUT" 2>&1 | tail -n 8
if [ "${CONSISTENCY:-1}" = 1 ]; then
  python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
    --seeds 0 --out "$OUT/consistency_w4a4.json" 2>&1 | tail -n 12
fi
