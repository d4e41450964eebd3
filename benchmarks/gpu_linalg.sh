#!/usr/bin/env bash
# On the GPU machine, issue 4 in one call (outputs under $OUT): GPU self-check of both Triton
# algorithms, every benchmark shape against torch.linalg in the same run, the dispatch table
# rewritten from these timings (a copy comes back in $OUT).
set -u
source "$(dirname "$0")/gpu_env.sh"
python3 benchmarks/bench_linalg.py --out "$OUT" --write-dispatch --deadline-s "${DEADLINE:-480}" \
  > "$OUT/linalg_log.txt" 2>&1
grep -E "SELFCHECK|selfcheck triton_rec|selfcheck info|=>|deadline" "$OUT/linalg_log.txt" | tail -n 80
sed -n '/^op  /,$p' "$OUT/linalg_log.txt"
cp erq_kernels/dispatch_table.json "$OUT/"
