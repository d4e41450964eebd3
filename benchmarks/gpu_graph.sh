#!/usr/bin/env bash
# The CUDA-graph replay of the exact Gram statistics (erq_kernels/gram_graph.py), outputs under
# $OUT, one device call each:
#   bash benchmarks/gpu_graph.sh tests   # the GPU tests of the exact paths only
#   bash benchmarks/gpu_graph.sh speed   # GPU tests of the exact paths; per-call profile at
#       6304 x 192; every gram_update backend and the exact op (rewrites
#       erq_kernels/dispatch_table.json; a copy comes back)
#   bash benchmarks/gpu_graph.sh gemm    # the int8 GEMM at small layers: torch._int_mm against
#       the Triton GEMM over block sizes (benchmarks/probe_int8_gemm.py)
#   bash benchmarks/gpu_graph.sh check   # data_carry/ carried: ViT-Ti W4A4 seeds 0-2 quantized
#       by the reference and the default backend (benchmarks/backend_consistency.py); ViT-Ti
#       and ViT-B W4A4 with 32 images end to end, 5 alternating repeats
set -u
source "$(dirname "$0")/gpu_env.sh"
gpu_tests() {
  TRITON_INTERPRET=0 python3 -m pytest tests/test_kernels_gram_exact.py \
    tests/test_kernels_gram_int8.py -m gpu -q -p no:cacheprovider -rA 2>&1 | tail -n "$1"
}
case "${1:-speed}" in
tests)
  gpu_tests 40
  ;;
speed)
  gpu_tests 4
  python3 benchmarks/profile_gram_small.py > "$OUT/profile_gram_small.txt" 2>&1
  head -n 16 "$OUT/profile_gram_small.txt"
  python3 benchmarks/bench_rounding_gram.py --only gram --out "$OUT" --write-dispatch --rep 40 \
    > "$OUT/gram_log.txt" 2>&1
  grep -v "^\[" "$OUT/gram_log.txt" | tail -n 75
  cp erq_kernels/dispatch_table.json "$OUT/dispatch_table.json"
  ;;
gemm)
  python3 benchmarks/probe_int8_gemm.py 2>&1 | tee "$OUT/probe_int8_gemm.txt" | tail -n 20
  ;;
check)
  D=${DATA:-data_carry}
  python3 benchmarks/backend_consistency.py --data "$D" --calib-files "$D/calib_files.json" \
    --seeds 0 1 2 --out "$OUT/consistency_w4a4_graph.json" 2>&1 \
    | grep -v "^{'device" | cut -c1-220
  python3 benchmarks/bench_e2e.py --calib "$D/imagenet-calib" \
    --models vit_tiny_patch16_224 vit_base_patch16_224 --num-calib 32 --repeat 5 \
    --out "$OUT/e2e_tb" 2>&1 | tail -n 14
  ;;
esac
