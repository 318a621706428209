#!/usr/bin/env bash
# The device calls for v42 (docs/perf.md v40, Prepared), in three halves:
#
#   bash docs/experiments/v42-run.sh compile   # the CPU machine: a worktree with the patch, the 1B model
#                                              # at batch 4, 8 and 16 from main and from it, arts.tgz (~12 min)
#   bash docs/experiments/v42-run.sh bench     # the device (carry .whl and arts.tgz): trip_bench walks
#                                              # (v42's grouped walks beside main's), then the A/B (~6 min)
#   bash docs/experiments/v42-run.sh check     # the device, the tree with the patch applied: the GPU tests
#                                              # and compute-sanitizer (~6 min)
#   bash docs/experiments/v42-run.sh all       # the device: the walks, the A/B without torch.compile
#                                              # (--no-baselines), then check (~9 min, one machine start)
#
# Artifacts: main's m4, m8, m16; v42's n4, n8, n16 (the 1B preset's whole model, H200 target);
# where arts.tgz has them, v43's o4, o8, o16 (docs/experiments/v43-batch-rows.patch: v42 and a plain
# input's rows a group a trip), timed beside them. PATCH names the patch the working tree has
# applied (v42-batch-norm-rows or v43-batch-rows), reversed for main's walks. v44's p8, p16
# (docs/experiments/v44-batch-pair-rows.patch: the plain rows alone) the same way.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
case "${1:-}" in
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
  for wt in main v42; do rm -rf /tmp/wt_$wt; git worktree add -f /tmp/wt_$wt HEAD -q --detach; done
  (cd /tmp/wt_v42 && git apply "$ROOT/docs/experiments/v42-batch-norm-rows.patch")
  rm -rf /tmp/a && mkdir -p /tmp/a
  c() { $PY /tmp/wtrun.py /tmp/wt_$1 /tmp/wt_$1/docs/experiments/v34-compile.py /tmp/a/$2 what=model "${@:3}" \
          > /tmp/a/$2.log 2>&1 || { echo "compile $2 failed: /tmp/a/$2.log"; exit 1; }; }
  pair() { c main "m$1" batch_size=$1 & local a=$!; c v42 "n$1" batch_size=$1 & local b=$!
           wait $a; local ra=$?; wait $b; local rb=$?; [ $ra = 0 ] && [ $rb = 0 ] || exit 1; }   # a failure stops it before arts.tgz
  pair 8; pair 4; pair 16
  (cd /tmp/wt_v42 && $PY /tmp/wtrun.py /tmp/wt_v42 benchmarks/sanitize.py --gpu H200 --out /tmp/a/san > /tmp/a/san.log 2>&1)
  tar czf "$ROOT/arts.tgz" -C /tmp a && ls -la "$ROOT/arts.tgz"
  echo "for the device calls, apply the patch to the working tree: trip_bench's grouped walks and the GPU tests need it"
  ;;
bench|check|all)
  mkdir -p /tmp/logs
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/logs/gpu.txt
  rm -rf /tmp/a; tar xzf arts.tgz -C /tmp
  A=/tmp/a
  if [ "$1" != check ]; then
  # main's walks too: with the patch, linear_input's own RMSNorm walk is v42's (a copy with it reversed)
  rm -rf /tmp/mk && mkdir -p /tmp/mk/csrc /tmp/mk/benchmarks && cp -r csrc/kernels /tmp/mk/csrc/ \
    && cp benchmarks/trip_bench.cu /tmp/mk/benchmarks/ && (cd /tmp/mk && git apply -R "$ROOT/docs/experiments/${PATCH:-v42-batch-norm-rows}.patch")
  nv() { nvcc -O3 -arch=sm_90a -std=c++17 -rdc=true -I "$1/csrc/kernels" "$1/benchmarks/trip_bench.cu" -o "$2"; }
  nv /tmp/mk /tmp/trip_main & nv "$ROOT" /tmp/trip_bench; wait
  timeout 60 /tmp/trip_main walks > /tmp/logs/walk-main.log 2>&1; echo "walk main rc $?"; cat /tmp/logs/walk-main.log
  timeout 60 /tmp/trip_bench walks > /tmp/logs/walk-v42.log 2>&1; echo "walk v42 rc $?"; cat /tmp/logs/walk-v42.log
  # where a walk's time goes: stall samples per SASS instruction of the first walk (batch 8 RMSNorm, shadow)
  timeout 120 ncu --clock-control none -k regex:walk_kernel --launch-skip 1 --launch-count 1 --section WarpStateStats \
    --section SourceCounters --page source --print-source sass --csv /tmp/trip_bench walks > /tmp/logs/ncu-walk.csv 2>&1
  echo "ncu rc $?"; head -c 600 /tmp/logs/ncu-walk.csv; echo
  NB=$([ "$1" = all ] && echo --no-baselines)
  arts() { for x in m n o p; do [ -d $A/$x$1 ] && echo --artifact $1=$A/$x$1; done; }
  BS=$([ "$1" = all ] && echo 8,16 || echo 4,8,16)        # all: batch 4 left out, for the checks' time
  timeout 420 python3 benchmarks/bench_batch.py --batches $BS $(arts 4) $(arts 8) $(arts 8) $(arts 16) $(arts 16) \
    --iters 40 $NB > /tmp/logs/batch-v42.log 2>&1
  echo "bench rc $?"; grep -E "logits vs|megakernel|^ *[0-9]+ +[0-9.-]+ " /tmp/logs/batch-v42.log | tail -24
  fi
  if [ "$1" != bench ]; then
  timeout 250 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py tests/test_gpu.py \
    -k "tiny or whole_model or llama-3.2-1b-16-H200 or llama-3.2-1b-4-H200" > /tmp/logs/gpu-tests-v42.log 2>&1
  echo "tests rc $?"; tail -n 3 /tmp/logs/gpu-tests-v42.log
  for t in memcheck racecheck synccheck; do
    timeout 80 compute-sanitizer --tool $t --report-api-errors no --error-exitcode 1 \
      python3 benchmarks/sanitize.py --run $A/san > /tmp/logs/san-v42-$t.log 2>&1
    echo "$t rc $?"; tail -n 1 /tmp/logs/san-v42-$t.log
  done
  fi
  tar czf "$OUT/logs-v42-$1.tgz" -C /tmp logs
  ;;
*)
  echo "usage: bash docs/experiments/v42-run.sh compile|bench|check|all" >&2
  exit 2
  ;;
esac
