#!/usr/bin/env bash
# docs/perf.md v76: where main's layer and whole model lose time now (NextStepL2 landed); the stall
# prefetch (v76-stall-l2.patch: a linear's producer about to wait on a held slot asks L2 for the task's
# pages from that one on); the search's choice at l2_share 3.0 timed; main's GPU checks after ff78231.
#
#   bash docs/experiments/v76-run.sh compile   # the CPU machine (~6 min): profiling builds of main's 1B
#        # layer and whole model (H200 target) and main's sanitizer kernels into p76.tgz; the 1B layer
#        # and model with v76-stall-l2.patch (ADAMK_STALL_L2=1) into v76.tgz (both ignored)
#   bash docs/experiments/v76-run.sh look      # the device (carry .whl, v73.tgz, v75.tgz, arts.tgz, p76.tgz,
#        # v76.tgz; ~8 min): the layers at 512 and 4095 with torch.compile in a CUDA graph (main first and
#        # last: v73's l2d, main's since 03933ce), the whole models alternating (main: arts.tgz v2-b1), then
#        # trace_layer.py and trace_model.py on the profiling builds
#   bash docs/experiments/v76-run.sh check     # the device (carry .whl, p76.tgz; ~5 min): compute-sanitizer
#        # on this tree's tiny kernels, then its GPU tests
#   bash docs/experiments/v76-run.sh all       # look, then check (carry look's)
#
# Logs under $OUT (default /tmp/out): layer-ab.log, model-ab.log, trace-layer.log, trace-model.log and
# their directories (look); san-*.log, gpu-tests.log (check).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/out}
. docs/experiments/device-lib.sh    # setup, gpu_tests
case "${1:-}" in
compile)
  PY=${PY:-$ROOT/.venv/bin/python}
  A=/tmp/p76; S=/tmp/v76; W=/tmp/wt_v76
  rm -rf $A $S $W && mkdir -p $A $S && git worktree prune && git worktree add -f $W HEAD -q --detach || exit 1
  (cd $W && git apply "$ROOT/docs/experiments/v76-stall-l2.patch") || { echo "v76-stall-l2.patch does not apply" >&2; exit 1; }
  c() { $PY docs/experiments/v34-compile.py $A/$1 what=$1 profile=True > $A/$1.log 2>&1 \
          || { echo "compile $1 failed: $A/$1.log" >&2; return 1; }; echo "built $1"; }
  s() { ADAMK_STALL_L2=1 $PY $ROOT/docs/experiments/wtrun.py $W $W/docs/experiments/v34-compile.py $S/$1 what=$1 \
          > $S/$1.log 2>&1 || { echo "compile stall $1 failed: $S/$1.log" >&2; return 1; }; echo "built stall $1"; }
  set -e
  c layer & a=$!; c model & b=$!; wait $a && wait $b
  $PY benchmarks/sanitize.py --gpu H200 --out $A/san > $A/san.log 2>&1 || { echo "sanitizer kernels: $A/san.log" >&2; exit 1; }
  s model & a=$!; s layer & b=$!; wait $a && wait $b
  git worktree remove --force $W
  tar czf "$ROOT/p76.tgz" -C /tmp p76 && tar czf "$ROOT/v76.tgz" -C /tmp v76 && ls -la "$ROOT/p76.tgz" "$ROOT/v76.tgz"
  ;;
look)
  setup v73.tgz v75.tgz arts.tgz p76.tgz v76.tgz
  cp -r /tmp/v73/l2d /tmp/v73/l2d2
  timeout 180 python3 benchmarks/compare_artifacts.py --pos 512,4095 --iters 100 --baselines main=/tmp/v73/l2d \
      stall=/tmp/v76/layer l2-share-3=/tmp/v75/layer main-again=/tmp/v73/l2d2 2>&1 \
    | grep --line-buffered -v "^  {'attention" | tee "$OUT/layer-ab.log"
  timeout 150 python3 benchmarks/bench_batch.py --batches 1 --iters 60 --no-baselines --artifact 1=/tmp/a/v2-b1 \
      --artifact 1=/tmp/v76/model --artifact 1=/tmp/v75/model --artifact 1=/tmp/a/v2-b1 --artifact 1=/tmp/v76/model \
      2>&1 | tee "$OUT/model-ab.log"
  timeout 60 python3 benchmarks/trace_layer.py --gpu H200 --artifact /tmp/p76/layer --pos 512 --out "$OUT/trace-layer" \
    > "$OUT/trace-layer.log" 2>&1; echo "trace_layer rc $?"; tail -n 20 "$OUT/trace-layer.log"
  timeout 90 python3 benchmarks/trace_model.py --artifact /tmp/p76/model --pos 512 --steps 10 --out "$OUT/trace-model" \
    > "$OUT/trace-model.log" 2>&1; echo "trace_model rc $?"; grep -E "^##|per layer| 15 |prologue|epilogue" "$OUT/trace-model.log" | head -20
  ;;
check)
  OUT=$OUT SAN=/tmp/p76/san TARS=p76.tgz bash docs/experiments/v74-run.sh check
  ;;
all)   # look, then check, in one call (a machine is hard to get)
  bash "$0" look; bash "$0" check
  ;;
*) echo "usage: bash docs/experiments/v76-run.sh compile | look | check | all" >&2; exit 2 ;;
esac
