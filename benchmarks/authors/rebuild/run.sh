#!/usr/bin/env bash
# The authors' code (zysxmu/ERQ @ 361f76e4, fetched into $DIR with the changes listed in
# ../CHANGES_TO_AUTHORS_CODE.md, section "Rebuild of 2026-11-29") with this folder's utils/ and
# quant/__init__.py, one run per line: round to nearest (Aqer and Wqer skipped through the
# ERQ_SKIP_AQER / ERQ_SKIP_WQER switch added there) and full ERQ, seed 0, lambda 1000.
set -eu
DIR=${DIR:-/tmp/authors}
cd "$DIR"
C="python3 -u test_quant_expand.py --model vit_tiny --dataset ${DATA:-/work/shared/data} --coe 10000
   --calib-batchsize 32 --val-batchsize 100 --num-workers 2 --device cpu --seed 0"
for wa in "4 4" "8 8" "6 6"; do
  set -- $wa
  env OMP_NUM_THREADS=2 ERQ_SKIP_AQER=1 ERQ_SKIP_WQER=1 $C --w_bits $1 --a_bits $2 > log_base_w$1a$2_s0.txt 2>&1
done
for wa in "8 8" "4 4" "3 4" "5 5"; do
  set -- $wa
  env OMP_NUM_THREADS=2 $C --w_bits $1 --a_bits $2 > log_erq_w$1a$2_s0.txt 2>&1
done
grep -H "\* Prec@1" log_*_s0.txt
