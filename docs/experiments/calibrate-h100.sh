#!/usr/bin/env bash
# Issue 11's honest prediction for the H100 target, in one device call on an H100 (carry .whl; ~8 min):
# `adamk calibrate --gpu H100` (two rounds of traced profiling builds of the 1B layer, compiled there),
# then the layer (bench_layer.py, position 512, against torch.compile in a CUDA graph) and the whole
# 1B model (compiled there with the new profile; bench_model.py without baselines) each timed beside
# the figure its manifest predicts. The profile comes back as $OUT/H100.json: if both predictions are
# within 15%, it ships as adamk/profiles/H100.json (the H100 target's default, docs/perf.md).
#
#   bash docs/experiments/calibrate-h100.sh        # on the device, with .whl carried
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU_NAME"
[[ $GPU_NAME == *H100* ]] || { echo "not an H100: the profile would be another GPU's"; exit 1; }
mkdir -p /tmp/logs
timeout 300 python3 -m adamk calibrate --gpu H100 -o "$OUT/H100.json" 2>&1 | tee /tmp/logs/calibrate.log
[ -f "$OUT/H100.json" ] || { echo "calibration failed"; tar czf "$OUT/logs-calibrate.tgz" -C /tmp logs; exit 1; }
timeout 200 python3 benchmarks/bench_layer.py --pos 512 --variants H100 --baselines --cost-model "$OUT/H100.json" \
  --iters 100 > /tmp/logs/layer.log 2>&1; echo "bench_layer rc $?"; tail -n 12 /tmp/logs/layer.log
timeout 150 python3 docs/experiments/v34-compile.py /tmp/model-h100 what=model gpu=H100 cost_model="$OUT/H100.json" \
  > /tmp/logs/model-compile.log 2>&1; echo "model compile rc $?"; tail -n 1 /tmp/logs/model-compile.log
python3 -c "import json; m = json.load(open('/tmp/model-h100/manifest.json')); print('whole model predicted', m['predicted_step_us'], 'us at', m['predicted_at_pos'])"
timeout 120 python3 benchmarks/bench_model.py --artifact /tmp/model-h100 --pos 512 --iters 100 --no-baselines \
  > /tmp/logs/model.log 2>&1; echo "bench_model rc $?"; tail -n 6 /tmp/logs/model.log
tar czf "$OUT/logs-calibrate.tgz" -C /tmp logs
