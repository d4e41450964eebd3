#!/usr/bin/env bash
# On the GPU machine: ViT-Ti W4A4 seed 0 top-1 with the reference backend and with the default
# (Triton) backend, same quantization settings, same images. Data in data_carry/ (carried).
set -u
D=${DATA:-data_carry}
OUT=${OUT:-/tmp/erq_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for lam in "--lambda 1000"; do
  tag=$(echo "$lam" | tr -d ' -')
  for b in reference auto; do
    ERQ_KERNELS_BACKEND=$b python3 -m erq.cli quantize --device cuda \
      --checkpoint "$D/vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors" \
      --calib "$D/imagenet-calib" --val "$D/imagenet-val" --method erq --w-bits 4 --a-bits 4 \
      --num-calib 32 --seed 0 $lam --skip-fp --quiet --json "$OUT/acc_${tag}_$b.json" 2>&1 \
      | grep -v "^INFO" | tail -n 12
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('$b $tag', r['top1'], {k: round(v, 2) for k, v in r['seconds'].items()})" "$OUT/acc_${tag}_$b.json"
  done
done
