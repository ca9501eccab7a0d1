#!/usr/bin/env bash
# GPU check, for any CUDA machine (< 5 minutes): CUDA results match CPU results, then benchmark numbers on the GPU.
#   bash benchmarks/gpu_check.sh            (from the repo root, with ppp-audit installed)
# GPU_CHECK_DEVICE=cpu GPU_CHECK_SMOKE=1 runs every step on the CPU at toy sizes: how the tests keep this script working
# on machines without a GPU (tests/test_benchmarks.py).
set -euo pipefail
out=${OUT:-$(mktemp -d)}
device=${GPU_CHECK_DEVICE:-cuda}
if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
  check=(resnet10t --input-size 64 -n 8 -b 4)
  models=(resnet10t)
  bench=(--batch-size 4 --num-images 8 --input-size 64 --repeats 1)
  memory=(--batch-size 4 --num-images 4 --input-size 64)
else
  check=(resnet18 --input-size 128 -n 32 -b 16)
  models=(resnet50 tf_efficientnet_lite0)
  bench=(--batch-size 64 --num-images 512 --rounds 3)
  memory=(--batch-size 64 --num-images 256)
fi
if [ "$device" != cpu ]; then
  python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
fi
common=("${check[@]}" --no-pretrained -p reflect -p circular --no-progress)
ppp-audit "${common[@]}" --device cpu --json "$out/cpu.json" > /dev/null
ppp-audit "${common[@]}" --device "$device" --json "$out/device.json" > /dev/null
ppp-audit "${common[@]}" --device "$device" --precision bf16 --json "$out/device_bf16.json" > /dev/null
agreement=0
python benchmarks/compare_reports.py "$out/cpu.json" "$out/device.json:1e-3" "$out/device_bf16.json:0.1" || agreement=$?
# --preload: the factors measure the audit itself; then one run with the images rendered by DataLoader workers.
workers=$(( $(nproc) > 2 ? $(nproc) / 2 : 1 ))
for model in "${models[@]}"; do
  python benchmarks/bench_audit.py --model "$model" "${bench[@]}" --device "$device" --preload
  python benchmarks/bench_audit.py --model "$model" "${bench[@]}" --device "$device" --precision bf16 --preload
done
python benchmarks/bench_audit.py --model "${models[0]}" "${bench[@]}" --device "$device" --precision bf16 \
  --workers "$workers"
python benchmarks/bench_audit.py --model "${models[0]}" "${memory[@]}" --device "$device" --memory-scaling \
  --workers "$workers"
if [ "$agreement" -ne 0 ]; then echo "GPU check FAILED: $device results disagree with CPU (see above)"; exit 1; fi
echo "GPU check passed"
