#!/usr/bin/env bash
# Exact statistics on the GPU (outputs under $OUT). Two stages, one device call each:
#   bash benchmarks/gpu_exact.sh check   # data_carry/ carried: the GPU tests of the exact and
#       int8 Gram paths; ViT-Ti W4A4 seeds 0-2 quantized by the reference and the default
#       backend (benchmarks/backend_consistency.py, with reversed images and fast linalg);
#       ViT-B W4A4 32 images end to end, 5 alternating repeats
#   bash benchmarks/gpu_exact.sh speed   # data_carry_e2e/ carried: every gram_update backend
#       and the exact op (rewrites erq_kernels/dispatch_table.json; a copy comes back); ViT-H
#       W4A4 with 32 and 512 images end to end
set -u
source "$(dirname "$0")/gpu_env.sh"
case "${1:-check}" in
check)
  D=${DATA:-data_carry}
  TRITON_INTERPRET=0 python3 -m pytest tests/test_kernels_gram_exact.py \
    tests/test_kernels_gram_int8.py -m gpu -q -p no:cacheprovider -rA 2>&1 | tail -n 16
  python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
    --seeds 0 1 2 --perturb --fast-linalg --out "$OUT/consistency_w4a4_exact.json" 2>&1 \
    | grep -v "^{'device" | cut -c1-220
  python3 benchmarks/bench_e2e.py --calib "$D/imagenet-calib" --models vit_base_patch16_224 \
    --num-calib 32 --repeat 5 --out "$OUT/e2e_b" 2>&1 | tail -n 14
  ;;
speed)
  CAL=${CALIB:-data_carry_e2e/calib}
  python3 benchmarks/bench_rounding_gram.py --only gram --out "$OUT" --write-dispatch --rep 40 \
    > "$OUT/gram_log.txt" 2>&1
  grep -v "^\[" "$OUT/gram_log.txt" | tail -n 60
  cp erq_kernels/dispatch_table.json "$OUT/dispatch_table.json"
  python3 benchmarks/bench_e2e.py --calib "$CAL" --models vit_huge_patch14_224 \
    --num-calib 32 512 --backends reference auto --out "$OUT/e2e_h" 2>&1 | tail -n 10
  ;;
esac
