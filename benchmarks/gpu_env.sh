# Sourced by the benchmarks/gpu_*.sh scripts: outputs under $OUT (the device tool's folder, or
# /tmp/erq_out), the repository on the Python path, the card's name in $OUT/card.txt.
OUT=${OUT:-/tmp/erq_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
