#!/usr/bin/env bash
# The next device call for v40/v41 (docs/perf.md v39, Prepared), in two halves:
#
#   bash docs/experiments/v40-run.sh compile   # the CPU machine: worktrees, artifacts, arts.tgz (~15 min on 2 cores)
#   bash docs/experiments/v40-run.sh bench     # the device machine (carry .whl and arts.tgz): the A/B
#                                              # benchmarks and trip_bench (~8 min)
#   bash docs/experiments/v40-run.sh check     # the device machine, the tree with both patches applied:
#                                              # the GPU tests and compute-sanitizer (~8 min)
#
# Artifacts (the 1B preset's whole model, H200 target): main (m), v40 (s), v40 with one attention
# part (s1), main with one attention part (m1p), and at batch 1 main against v40+v41 (b1).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
case "${1:-}" in
compile)
  PY=${PY:-$ROOT/.venv/bin/python}
  cat > /tmp/wtrun.py <<'EOF'
import sys, runpy
sys.meta_path[:] = [f for f in sys.meta_path if "scikit" not in repr(f).lower() and "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[2]] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
EOF
  git worktree prune
  for wt in main v40 v41; do rm -rf /tmp/wt_$wt; git worktree add -f /tmp/wt_$wt HEAD -q --detach; done
  (cd /tmp/wt_v40 && git apply "$ROOT/docs/experiments/v40-batch-shadows.patch")
  (cd /tmp/wt_v41 && git apply "$ROOT/docs/experiments/v40-batch-shadows.patch" \
                  && git apply "$ROOT/docs/experiments/v41-b1-down-shadow.patch")
  rm -rf /tmp/a && mkdir -p /tmp/a
  c() { $PY /tmp/wtrun.py /tmp/wt_$1 /tmp/wt_$1/docs/experiments/v34-compile.py /tmp/a/$2 what=model "${@:3}" \
          > /tmp/a/$2.log 2>&1 || { echo "compile $2 failed: /tmp/a/$2.log"; exit 1; }; }
  c main m8 batch_size=8 & c v40 s8 batch_size=8 & wait
  c v40 s8p1 batch_size=8 attention_parts=1 & c main m8p1 batch_size=8 attention_parts=1 & wait
  c main m16 batch_size=16 & c v40 s16 batch_size=16 & wait
  c main m1 & c v41 b1 & wait
  (cd /tmp/wt_v41 && $PY /tmp/wtrun.py /tmp/wt_v41 benchmarks/sanitize.py --gpu H200 --out /tmp/a/san > /tmp/a/san.log 2>&1)
  tar czf "$ROOT/arts.tgz" -C /tmp a && ls -la "$ROOT/arts.tgz"
  echo "apply both patches to the working tree before the device call: the GPU tests run on it"
  ;;
bench|check)
  mkdir -p /tmp/logs
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/logs/gpu.txt
  rm -rf /tmp/a; tar xzf arts.tgz -C /tmp
  A=/tmp/a
  if [ "$1" = bench ]; then
  timeout 300 python3 benchmarks/bench_batch.py --batches 8,16 --artifact 8=$A/m8 --artifact 8=$A/s8 \
    --artifact 8=$A/s8p1 --artifact 8=$A/m8p1 --artifact 8=$A/m8 --artifact 8=$A/s8 --artifact 8=$A/s8p1 \
    --artifact 16=$A/m16 --artifact 16=$A/s16 --artifact 16=$A/m16 --artifact 16=$A/s16 --iters 40 \
    > /tmp/logs/batch-v40.log 2>&1
  echo "bench rc $?"; grep -E "logits vs|megakernel" /tmp/logs/batch-v40.log | tail -12
  for i in 1 2; do
    for art in m1 b1; do
      timeout 60 python3 benchmarks/bench_model.py --artifact $A/$art --pos 512 --iters 100 --no-baselines \
        >> /tmp/logs/model-v41-b1.log 2>&1
    done
  done
  grep -E "megakernel|ms" /tmp/logs/model-v41-b1.log | tail -8
  nvcc -O3 -arch=sm_90a -std=c++17 -I csrc/kernels benchmarks/trip_bench.cu -o /tmp/trip_bench \
    && timeout 120 /tmp/trip_bench > /tmp/logs/trip.log 2>&1; tail -32 /tmp/logs/trip.log
  else
  timeout 250 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py tests/test_gpu.py \
    -k "tiny or whole_model or llama-3.2-1b-4-H200" > /tmp/logs/gpu-tests-v40.log 2>&1
  echo "tests rc $?"; tail -n 3 /tmp/logs/gpu-tests-v40.log
  for t in memcheck racecheck synccheck; do
    timeout 100 compute-sanitizer --tool $t --report-api-errors no --error-exitcode 1 \
      python3 benchmarks/sanitize.py --run $A/san > /tmp/logs/san-v40-$t.log 2>&1
    echo "$t rc $?"; tail -n 1 /tmp/logs/san-v40-$t.log
  done
  fi
  tar czf "$OUT/logs-v40-$1.tgz" -C /tmp logs
  ;;
*)
  echo "usage: bash docs/experiments/v40-run.sh compile|bench|check" >&2
  exit 2
  ;;
esac
