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
python - "$out" <<'PY'
import sys
from ppp_audit.report import Report
out = sys.argv[1]
cpu, cuda, bf16 = (Report.load(f"{out}/{n}.json") for n in ("cpu", "cuda", "cuda_bf16"))
worst, worst_bf16 = 0.0, 0.0
for rc, rg, rb in zip(cpu.results, cuda.results, bf16.results):
    for lc, lg, lb in zip(rc.layers, rg.layers, rb.layers):
        c, g, b = lc.stats.strength, lg.stats.strength, lb.stats.strength
        worst = max(worst, abs(g - c) / max(c, 1e-3))
        worst_bf16 = max(worst_bf16, abs(b - c) / max(c, 1e-3))
        print(f"{rc.scheme:9s} {lc.name:8s} cpu {c:.5f}  cuda {g:.5f}  cuda-bf16 {b:.5f}")
print(f"max relative difference: cuda fp32 {worst:.2e}, cuda bf16 {worst_bf16:.2e}")
assert worst < 1e-3, "CUDA fp32 disagrees with CPU"
assert worst_bf16 < 0.1, "CUDA bf16 disagrees with CPU by more than 10 %"
PY
for model in resnet50 tf_efficientnet_lite0; do
  python benchmarks/bench_audit.py --model "$model" --batch-size 64 --num-images 512 --device cuda
  python benchmarks/bench_audit.py --model "$model" --batch-size 64 --num-images 512 --device cuda --precision bf16
done
python benchmarks/bench_audit.py --model resnet50 --batch-size 64 --num-images 256 --device cuda --memory-scaling
