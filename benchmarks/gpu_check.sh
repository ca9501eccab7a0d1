#!/usr/bin/env bash
# GPU check, for any CUDA machine (about 5 minutes on one H200): CUDA results match CPU results, then the whole
# pipeline against the two-forward limit, and a 50,000-image audit.
#   bash benchmarks/gpu_check.sh            (from the repo root, with ppp-audit installed; results also in $OUT)
# GPU_CHECK_DEVICE=cpu GPU_CHECK_SMOKE=1 runs every step on the CPU at toy sizes: how the tests keep this script working
# on machines without a GPU (tests/test_benchmarks.py).
set -euo pipefail
out=${OUT:-$(mktemp -d)}
device=${GPU_CHECK_DEVICE:-cuda}
if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
  check=(resnet10t --input-size 64 -n 8 -b 4)
  models=(resnet10t)
  pipeline=(--batch-size 4 --num-images 8 --jpeg-images 8 --input-size 64 --repeats 1)
  large=(resnet10t --input-size 64 -n 16 -b 8)
  memory=(--batch-size 4 --num-images 4 --input-size 64)
else
  check=(resnet18 --input-size 128 -n 32 -b 16)
  models=(resnet50 tf_efficientnet_lite0 convnext_tiny)
  pipeline=(--batch-size 256 --num-images 2048 --jpeg-images 512)
  large=(resnet50 -n 50000 -b 256)
  memory=(--batch-size 64 --num-images 256)
fi
if [ "$device" != cpu ]; then
  python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
fi
# 1. Agreement: the same command on the CPU and on the device gives the same numbers (SPEC §3.5). The built-in images
#    are the same pictures wherever they are made: --images-on auto renders them on the host for the CPU run and on
#    the device for the other; --images-on host on the device too.
common=("${check[@]}" --no-pretrained -p reflect -p circular --no-progress)
ppp-audit "${common[@]}" --device cpu --json "$out/cpu.json" > /dev/null
ppp-audit "${common[@]}" --device "$device" --json "$out/device.json" > /dev/null
ppp-audit "${common[@]}" --device "$device" --precision bf16 --json "$out/device_bf16.json" > /dev/null
ppp-audit "${common[@]}" --device "$device" --images-on host --json "$out/device_host.json" > /dev/null
agreement=0
python benchmarks/compare_reports.py "$out/cpu.json" "$out/device.json:1e-3" "$out/device_bf16.json:0.1" \
  "$out/device_host.json:1e-3" || agreement=$?
# 2. The pipeline: bare forwards, preloaded, built-in images on the device, a JPEG folder (bf16), per model.
for model in "${models[@]}"; do
  python benchmarks/pipeline.py --model "$model" "${pipeline[@]}" --device "$device" --precision bf16 \
    --save "$out/pipeline.jsonl" | tee -a "$out/pipeline.txt"
done
python benchmarks/pipeline.py --model "${models[0]}" "${pipeline[@]}" --device "$device" --precision fp32 \
  --save "$out/pipeline.jsonl" | tee -a "$out/pipeline.txt"
# 3. A large audit of one scheme, built-in images, bf16: wall time of the whole command.
started=$(date +%s.%N)
ppp-audit "${large[@]}" --no-pretrained --device "$device" --precision bf16 --no-progress --json "$out/large.json" \
  > /dev/null
python - "$out/large.json" "$started" "$out/pipeline.jsonl" <<'PY'
import json, sys, time
report = json.load(open(sys.argv[1]))
wall, t = time.time() - float(sys.argv[2]), report["timings"]
print(f"large audit: N={report['data']['num_images']} in {wall:.1f} s wall (command), {t['total_s']:.1f} s audit, "
      f"{t['loop_s']:.1f} s measuring loop ({report['data']['num_images'] / t['loop_s']:.0f} images/s)")
# The issue's acceptance, as measured here (the pipeline's first bf16 row is the first model's).
first = json.loads(open(sys.argv[3]).readline())
built_in = first["rows"]["c_built_in_on_device"]["fraction_of_limit"]
print(f"acceptance: {first['model']} {first['precision']} audit with the built-in images at {100 * built_in:.1f} % of "
      f"the two-forward limit (>= 80 %: {'yes' if built_in >= 0.8 else 'no'}); "
      f"{report['data']['num_images']}-image audit in {wall:.1f} s (< 30 s: {'yes' if wall < 30 else 'no'})")
PY
# 3b. Optional (GPU_CHECK_COMPILE=1; compiling takes a minute or more): does --compile inductor pay?
if [ -n "${GPU_CHECK_COMPILE:-}" ]; then
  ppp-audit "${large[@]}" --no-pretrained --device "$device" --precision bf16 --compile inductor --no-progress \
    --json "$out/large_compiled.json" > /dev/null
  python -c "import json,sys; t=json.load(open(sys.argv[1]))['timings']; print(f\"compiled: {t['total_s']:.1f} s audit, \
{t['loop_s']:.1f} s loop\")" "$out/large_compiled.json"
fi
# 4. The host path and memory: host-rendered images with DataLoader workers; peak memory at N and 4N.
workers=$(( $(nproc) > 2 ? $(nproc) / 2 : 1 ))
python benchmarks/bench_audit.py --model "${models[0]}" "${memory[@]}" --device "$device" --memory-scaling \
  --workers "$workers"
if [ "$agreement" -ne 0 ]; then echo "GPU check FAILED: $device results disagree with CPU (see above)"; exit 1; fi
echo "GPU check passed"
