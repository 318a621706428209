#!/usr/bin/env bash
# Device-code patches against main, the 1B model at several batches (docs/perf.md's A/Bs): the CPU
# machine builds every artifact, the device times them in one call and checks the chosen tree in another
# (one call for both ran past the 10-minute limit: v45's GPU tests were cut).
#
#   bash docs/experiments/patch-ab.sh compile VARIANTS [BATCHES]   # the CPU machine: main's 1B model
#        # (m-b$B) and each variant's (v1-b$B, v2-b$B, ...) at each batch, and each variant's sanitizer
#        # kernels (san-v1, ...; main's: san-m) into arts.tgz, one worktree each (~2-4 min a
#        # compile, two at a time on 2 cores)
#   bash docs/experiments/patch-ab.sh device-ab [BATCHES]          # the device (carry .whl, arts.tgz):
#        # trip_bench walks of main and of each variant, then the A/B without torch.compile, each
#        # artifact checked against float32 first, ROUNDS (2) rounds in the order m v1 v2 ... (~5 min;
#        # WALKS=0 skips the walks; BENCH_S (420) bounds the A/B, whose per-batch lines come back if it ends early)
#   bash docs/experiments/patch-ab.sh device-check [VARIANT]       # the device: compute-sanitizer on
#        # the variant's kernels, then the GPU tests on a copy of the tree with its patches applied
#        # (main's with none: m) (~7 min)
#   bash docs/experiments/patch-ab.sh device-table [VARIANT] [BATCHES]   # the device: issue 14's batch
#        # table, the variant's artifacts (default 1,4,8,16: compile them with BATCHES so) against
#        # torch.compile in a CUDA graph in the same run (~2 min a batch); AB="m v1" times those trees'
#        # artifacts beside the variant's in the same run, ROUNDS (1) rounds in the order AB... VARIANT
#
# VARIANTS: comma-separated; a variant is one or more patches under docs/experiments (without .patch)
# joined by '+', applied to main in that order, e.g. v53-a,v54-b,v53-a+v54-b (three variants: each
# patch alone and both). BATCHES defaults to 16,8,1. Logs: $OUT/logs-ab.tgz, $OUT/logs-check.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODE=${1:-}
GPU_TESTS="tests/test_gpu_batch.py tests/test_gpu.py"
GPU_K="tiny or whole_model or llama-3.2-1b-16-H200 or llama-3.2-1b-4-H200"
usage() { echo "usage: bash docs/experiments/patch-ab.sh compile VARIANTS [BATCHES] | device-ab [BATCHES] | device-check [VARIANT] | device-table [VARIANT] [BATCHES]" >&2; exit 2; }

# apply_variant DIR VARIANT: the variant's patches applied to the tree at DIR, in order
apply_variant() {
  local p
  for p in ${2//+/ }; do
    [ -f "$ROOT/docs/experiments/$p.patch" ] || { echo "no docs/experiments/$p.patch" >&2; return 1; }
    (cd "$1" && git apply "$ROOT/docs/experiments/$p.patch") || { echo "$p.patch does not apply in $1" >&2; return 1; }
  done
}

# a copy of this tree for the device half, with VARIANT's patches (none for m)
device_copy() {
  rm -rf "$2" && mkdir -p "$2" && tar cf - --exclude=./.whl --exclude=./arts.tgz . | tar xf - -C "$2" || return 1
  [ "$1" = m ] || apply_variant "$2" "$(sed -n "s/^$1 //p" /tmp/a/variants.txt)"
}

# run in a copy of this tree with VARIANT's patches (device-check, device-table)
enter_tree() {
  device_copy $1 /tmp/tree || { echo "copy $1 failed"; exit 1; }
  cd /tmp/tree && export PYTHONPATH=/tmp/site:/tmp/tree
}

device_setup() {
  mkdir -p /tmp/logs
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/logs/gpu.txt
  rm -rf /tmp/a; tar xzf arts.tgz -C /tmp || exit 1
  cat /tmp/a/variants.txt
  NAMES="m $(cut -d' ' -f1 /tmp/a/variants.txt | tr '\n' ' ')"
}

case "$MODE" in
compile)
  VARIANTS=${2:-}; BATCHES=${3:-16,8,1}
  [ -n "$VARIANTS" ] || usage
  PY=${PY:-$ROOT/.venv/bin/python}
  git worktree prune
  rm -rf /tmp/a && mkdir -p /tmp/a
  NAMES=m; i=0
  for v in ${VARIANTS//,/ }; do i=$((i + 1)); NAMES="$NAMES v$i"; echo "v$i $v" >> /tmp/a/variants.txt; done
  for n in $NAMES; do
    rm -rf /tmp/wt_$n; git worktree add -f /tmp/wt_$n HEAD -q --detach || exit 1
    [ $n = m ] || apply_variant /tmp/wt_$n "$(sed -n "s/^$n //p" /tmp/a/variants.txt)" || exit 1
  done
  c() { $PY $ROOT/docs/experiments/wtrun.py /tmp/wt_$1 /tmp/wt_$1/docs/experiments/v34-compile.py /tmp/a/$1-b$2 what=model batch_size=$2 \
          > /tmp/a/$1-b$2.log 2>&1 || { echo "compile $1-b$2 failed: /tmp/a/$1-b$2.log"; return 1; }; }
  s() { (cd /tmp/wt_$1 && $PY $ROOT/docs/experiments/wtrun.py /tmp/wt_$1 benchmarks/sanitize.py --gpu H200 --out /tmp/a/san-$1 \
          > /tmp/a/san-$1.log 2>&1) || { echo "sanitizer kernels $1 failed: /tmp/a/san-$1.log"; return 1; }; }
  jobs_=()                                # (command args) two at a time: the machine's 2 cores
  for b in ${BATCHES//,/ }; do for n in $NAMES; do jobs_+=("c $n $b"); done; done
  for n in $NAMES; do jobs_+=("s $n"); done
  for ((j = 0; j < ${#jobs_[@]}; j += 2)); do
    ${jobs_[j]} & x=$!
    y=
    if ((j + 1 < ${#jobs_[@]})); then ${jobs_[j + 1]} & y=$!; fi
    wait $x || exit 1                     # a failure stops it before arts.tgz
    [ -z "$y" ] || wait $y || exit 1
    echo "built: ${jobs_[j]}${y:+, ${jobs_[j + 1]}}"
  done
  tar czf "$ROOT/arts.tgz" -C /tmp a && ls -la "$ROOT/arts.tgz"
  ;;
device-ab)
  BATCHES=${2:-16,8,1}; ROUNDS=${ROUNDS:-2}
  device_setup
  export PYTHONPATH=/tmp/site:$PWD
  for n in $NAMES; do device_copy $n /tmp/tree-$n || { echo "copy $n failed"; exit 1; }; done
  if [ "${WALKS:-1}" = 1 ]; then          # WALKS=0: the A/B alone (the walks time the stagings only)
    for n in $NAMES; do
      nvcc -O3 -arch=sm_90a -std=c++17 -rdc=true -I /tmp/tree-$n/csrc/kernels /tmp/tree-$n/benchmarks/trip_bench.cu \
        -o /tmp/trip_$n &
    done
    wait
    for n in $NAMES; do
      timeout 60 /tmp/trip_$n walks > /tmp/logs/walk-$n.log 2>&1; echo "walk $n rc $?"; grep "in flight 0" /tmp/logs/walk-$n.log
    done
  fi
  args=()
  for b in ${BATCHES//,/ }; do
    for ((r = 0; r < ROUNDS; ++r)); do for n in $NAMES; do [ -d /tmp/a/$n-b$b ] && args+=(--artifact $b=/tmp/a/$n-b$b); done; done
  done
  timeout ${BENCH_S:-420} python3 benchmarks/bench_batch.py --batches $BATCHES "${args[@]}" --iters 40 --no-baselines \
    > /tmp/logs/batch-ab.log 2>&1
  echo "bench rc $?"; grep "logits vs" /tmp/logs/batch-ab.log | sort -u; grep ", megakernel " /tmp/logs/batch-ab.log; grep -A 100 "^batch  floor" /tmp/logs/batch-ab.log
  tar czf "$OUT/logs-ab.tgz" -C /tmp logs
  ;;
device-check)
  V=${2:-m}
  device_setup
  enter_tree $V
  for t in memcheck racecheck synccheck; do
    timeout 60 compute-sanitizer --tool $t --report-api-errors no --error-exitcode 1 \
      python3 benchmarks/sanitize.py --run /tmp/a/san-$V > /tmp/logs/san-$t.log 2>&1
    echo "$t rc $?"; tail -n 1 /tmp/logs/san-$t.log
  done
  timeout 330 python3 -m pytest -q -p no:cacheprovider $GPU_TESTS -k "$GPU_K" > /tmp/logs/gpu-tests.log 2>&1
  echo "GPU tests ($V) rc $?"; tail -n 2 /tmp/logs/gpu-tests.log
  tar czf "$OUT/logs-check.tgz" -C /tmp logs
  ;;
device-table)
  V=${2:-m}; BATCHES=${3:-1,4,8,16}; ROUNDS=${ROUNDS:-1}
  device_setup
  enter_tree $V
  args=()
  for b in ${BATCHES//,/ }; do
    for ((r = 0; r < ROUNDS; ++r)); do for n in ${AB:-} $V; do
      [ -d /tmp/a/$n-b$b ] && args+=(--artifact $b=/tmp/a/$n-b$b)
    done; done
  done
  timeout 560 python3 benchmarks/bench_batch.py --batches $BATCHES "${args[@]}" --iters 40 > /tmp/logs/batch-table.log 2>&1
  echo "bench rc $?"; grep "logits vs\|torch.compile in" /tmp/logs/batch-table.log; grep -A 20 "^batch  floor" /tmp/logs/batch-table.log
  tar czf "$OUT/logs-table.tgz" -C /tmp logs
  ;;
*)
  usage
  ;;
esac
