#!/usr/bin/env bash
# A device-code patch against main, the 1B model at several batches (docs/perf.md's A/Bs), in two halves:
#
#   bash docs/experiments/patch-ab.sh compile PATCH [BATCHES]   # the CPU machine: main's (m$B) and the
#        # patch's (n$B) 1B model at each batch and the patch's sanitizer kernels (san) into arts.tgz,
#        # from two worktrees (~2 min a batch on 2 cores)
#   bash docs/experiments/patch-ab.sh device PATCH [BATCHES]    # the device, the patch applied to the
#        # working tree (carry .whl and arts.tgz): main's GPU tests (a copy of the tree with the patch
#        # reversed), trip_bench walks of both, the A/B without torch.compile (each artifact checked
#        # against float32 first), compute-sanitizer and the GPU tests on the patch (~8 min)
#
# PATCH is a file under docs/experiments without .patch; BATCHES defaults to 16,8,1.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODE=${1:-}; NAME=${2:-}; BATCHES=${3:-16,8,1}
P=$ROOT/docs/experiments/$NAME.patch
[ -f "$P" ] || { echo "usage: bash docs/experiments/patch-ab.sh compile|device PATCH [BATCHES] (no $P)" >&2; exit 2; }
GPU_TESTS="tests/test_gpu_batch.py tests/test_gpu.py"
GPU_K="tiny or whole_model or llama-3.2-1b-16-H200 or llama-3.2-1b-4-H200"
case "$MODE" in
compile)
  PY=${PY:-$ROOT/.venv/bin/python}
  cat > /tmp/wtrun.py <<'PYEOF'
import sys, runpy
sys.meta_path[:] = [f for f in sys.meta_path if "scikit" not in repr(f).lower() and "ScikitBuild" not in type(f).__name__]
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[2]] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
PYEOF
  git worktree prune
  for wt in main patch; do rm -rf /tmp/wt_$wt; git worktree add -f /tmp/wt_$wt HEAD -q --detach || exit 1; done
  (cd /tmp/wt_patch && git apply "$P") || exit 1
  rm -rf /tmp/a && mkdir -p /tmp/a
  c() { $PY /tmp/wtrun.py /tmp/wt_$1 /tmp/wt_$1/docs/experiments/v34-compile.py /tmp/a/$2 what=model batch_size=$3 \
          > /tmp/a/$2.log 2>&1 || { echo "compile $2 failed: /tmp/a/$2.log"; return 1; }; }
  for b in ${BATCHES//,/ }; do
    c main "m$b" $b & x=$!; c patch "n$b" $b & y=$!
    wait $x && wait $y || exit 1      # a failure stops it before arts.tgz
  done
  (cd /tmp/wt_patch && $PY /tmp/wtrun.py /tmp/wt_patch benchmarks/sanitize.py --gpu H200 --out /tmp/a/san \
     > /tmp/a/san.log 2>&1) || { echo "sanitizer kernels failed: /tmp/a/san.log"; exit 1; }
  tar czf "$ROOT/arts.tgz" -C /tmp a && ls -la "$ROOT/arts.tgz"
  echo "for the device call, apply $NAME.patch to the working tree"
  ;;
device)
  mkdir -p /tmp/logs
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/logs/gpu.txt
  rm -rf /tmp/a; tar xzf arts.tgz -C /tmp
  A=/tmp/a
  rm -rf /tmp/mk && mkdir -p /tmp/mk && tar cf - --exclude=./.whl --exclude=./arts.tgz . | tar xf - -C /tmp/mk \
    && (cd /tmp/mk && git apply -R "$P") || { echo "main's copy failed"; exit 1; }
  (cd /tmp/mk && PYTHONPATH=/tmp/site:/tmp/mk timeout 200 python3 -m pytest -q -p no:cacheprovider $GPU_TESTS \
     -k "$GPU_K" > /tmp/logs/gpu-tests-main.log 2>&1); echo "main's GPU tests rc $?"; tail -n 2 /tmp/logs/gpu-tests-main.log
  export PYTHONPATH=/tmp/site:$PWD
  nv() { nvcc -O3 -arch=sm_90a -std=c++17 -rdc=true -I "$1/csrc/kernels" "$1/benchmarks/trip_bench.cu" -o "$2"; }
  nv /tmp/mk /tmp/trip_main & nv "$ROOT" /tmp/trip_patch; wait
  for w in main patch; do
    timeout 60 /tmp/trip_$w walks > /tmp/logs/walk-$w.log 2>&1; echo "walk $w rc $?"; grep "in flight 0" /tmp/logs/walk-$w.log
  done
  ab() { for r in 1 2; do for x in m n; do [ -d $A/$x$1 ] && echo --artifact $1=$A/$x$1; done; done; }
  timeout 200 python3 benchmarks/bench_batch.py --batches $BATCHES $(for b in ${BATCHES//,/ }; do ab $b; done) \
    --iters 40 --no-baselines > /tmp/logs/batch-ab.log 2>&1
  echo "bench rc $?"; grep "logits vs" /tmp/logs/batch-ab.log | sort -u; grep "megakernel" /tmp/logs/batch-ab.log
  for t in memcheck racecheck synccheck; do
    timeout 60 compute-sanitizer --tool $t --report-api-errors no --error-exitcode 1 \
      python3 benchmarks/sanitize.py --run $A/san > /tmp/logs/san-$t.log 2>&1
    echo "$t rc $?"; tail -n 1 /tmp/logs/san-$t.log
  done
  timeout 200 python3 -m pytest -q -p no:cacheprovider $GPU_TESTS -k "$GPU_K" > /tmp/logs/gpu-tests-patch.log 2>&1
  echo "the patch's GPU tests rc $?"; tail -n 2 /tmp/logs/gpu-tests-patch.log
  tar czf "$OUT/logs-$NAME.tgz" -C /tmp logs
  ;;
*)
  echo "usage: bash docs/experiments/patch-ab.sh compile|device PATCH [BATCHES]" >&2
  exit 2
  ;;
esac
