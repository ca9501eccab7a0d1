#!/usr/bin/env bash
# GPU check, for any CUDA machine (< 5 minutes): CUDA results match CPU results, then benchmark numbers on the GPU.
#   bash benchmarks/gpu_check.sh            (from the repo root, with ppp-audit installed)
set -euo pipefail
out=${OUT:-$(mktemp -d)}
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
common=(resnet18 --no-pretrained -p reflect -p circular --input-size 128 -n 32 -b 16 --no-progress)
ppp-audit "${common[@]}" --device cpu --json "$out/cpu.json" > /dev/null
ppp-audit "${common[@]}" --device cuda --json "$out/cuda.json" > /dev/null
ppp-audit "${common[@]}" --device cuda --precision bf16 --json "$out/cuda_bf16.json" > /dev/null
agreement=0
python benchmarks/compare_reports.py "$out/cpu.json" "$out/cuda.json:1e-3" "$out/cuda_bf16.json:0.1" || agreement=$?
# --preload: the factors measure the audit itself; then one run with the images rendered by DataLoader workers.
workers=$(( $(nproc) > 2 ? $(nproc) / 2 : 1 ))
for model in resnet50 tf_efficientnet_lite0; do
  python benchmarks/bench_audit.py --model "$model" --batch-size 64 --num-images 512 --device cuda --preload
  python benchmarks/bench_audit.py --model "$model" --batch-size 64 --num-images 512 --device cuda --precision bf16 \
    --preload
done
python benchmarks/bench_audit.py --model resnet50 --batch-size 64 --num-images 512 --device cuda --precision bf16 \
  --workers "$workers"
python benchmarks/bench_audit.py --model resnet50 --batch-size 64 --num-images 256 --device cuda --memory-scaling \
  --workers "$workers"
if [ "$agreement" -ne 0 ]; then echo "GPU check FAILED: CUDA results disagree with CPU (see above)"; exit 1; fi
echo "GPU check passed"
