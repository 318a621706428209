#!/usr/bin/env bash
# v45's device call (docs/perf.md v45): hardware bf16 rounding (common.cuh to_bf16 / pack_bf16), the
# 1B model at batch 1, 8 and 16, main (m) against v45 (n), alternating, then compute-sanitizer and
# the GPU tests on the tree with v45 (~4 min). arts.tgz holds a/{m,n}{1,8,16} and a/san (built on
# the CPU machine with v34-compile.py and benchmarks/sanitize.py); carry .whl and arts.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
mkdir -p /tmp/logs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/logs/gpu.txt
rm -rf /tmp/a; tar xzf arts.tgz -C /tmp
A=/tmp/a
ab() { for r in 1 2; do for x in m n; do echo --artifact $1=$A/$x$1; done; done; }
timeout 150 python3 benchmarks/bench_batch.py --batches 16,8,1 $(ab 16) $(ab 8) $(ab 1) --iters 40 --no-baselines \
  > /tmp/logs/batch-v45.log 2>&1
echo "bench rc $?"; grep "logits vs" /tmp/logs/batch-v45.log | sort -u; grep "megakernel" /tmp/logs/batch-v45.log
for t in memcheck racecheck synccheck; do
  timeout 60 compute-sanitizer --tool $t --report-api-errors no --error-exitcode 1 \
    python3 benchmarks/sanitize.py --run $A/san > /tmp/logs/san-v45-$t.log 2>&1
  echo "$t rc $?"; tail -n 1 /tmp/logs/san-v45-$t.log
done
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py tests/test_gpu.py \
  -k "tiny or whole_model or llama-3.2-1b-16-H200 or llama-3.2-1b-4-H200" > /tmp/logs/gpu-tests-v45.log 2>&1
echo "tests rc $?"; tail -n 3 /tmp/logs/gpu-tests-v45.log
tar czf "$OUT/logs-v45.tgz" -C /tmp logs
