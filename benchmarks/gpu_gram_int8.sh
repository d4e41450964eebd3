#!/usr/bin/env bash
# On the GPU machine, in one call (outputs under $OUT): every gram_update backend against the
# eager reference (benchmarks/bench_rounding_gram.py --only gram, which rewrites the gram_update
# entries of erq_kernels/dispatch_table.json; a copy comes back), then end to end with the new
# table: ViT-H W4A4 with 32 and 512 images (reference, default, and default with gram_update
# forced to the eager reference, i.e. the previous choice at these shapes), and ViT-B with 32
# images three times, then the host and GPU time per call of the int8 path (profile_gram_int8).
# Calibration images in data_carry_e2e/calib (carried).
set -u
CAL=${CALIB:-data_carry_e2e/calib}
source "$(dirname "$0")/gpu_env.sh"
python3 benchmarks/bench_rounding_gram.py --only gram --out "$OUT" --write-dispatch \
  > "$OUT/gram_log.txt" 2>&1
grep -v "^\[" "$OUT/gram_log.txt" | tail -n 40
cp erq_kernels/dispatch_table.json "$OUT/dispatch_table.json"
H="--calib $CAL --models vit_huge_patch14_224 --num-calib 32 512"
python3 benchmarks/bench_e2e.py $H --backends reference auto --out "$OUT/e2e_h" 2>&1 | tail -n 8
ERQ_KERNELS_BACKEND_GRAM_UPDATE=reference python3 benchmarks/bench_e2e.py $H --backends auto \
  --out "$OUT/e2e_h_gram_ref" 2>&1 | tail -n 4
python3 benchmarks/bench_e2e.py --calib "$CAL" --models vit_base_patch16_224 --num-calib 32 \
  --repeat 3 --out "$OUT/e2e_b" 2>&1 | tail -n 10
(cd benchmarks && python3 profile_gram_int8.py 2>&1 | grep "us per call")
