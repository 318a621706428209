#!/usr/bin/env bash
# docs/perf.md v76: the stall prefetch (v76-stall-l2.patch: a linear's producer about to wait on a held
# ring slot asks L2 for the task's pages from that one on; linear.cuh linear_produce, the cost model's
# SmClock) against main; where main's layer and whole model lose time now (traces); the search's choice
# at l2_share 3.0 (v75.tgz); and the GPU checks of the patched tree. None of it ran in v76 (no machine).
#
#   bash docs/experiments/v76-run.sh compile   # the CPU machine (~7 min): the 1B layer and whole model
#        # (H200 target) of the patched tree (a worktree) into v76.tgz; main's profiling builds of both and
#        # the patched tree's sanitizer kernels into p76.tgz (both ignored; the patch changes no schedule)
#   bash docs/experiments/v76-run.sh look      # the device (carry .whl, v73.tgz, v75.tgz, arts.tgz, p76.tgz,
#        # v76.tgz; ~4 min): the layers at 512 and 4095 with torch.compile in a CUDA graph (main first and
#        # last: v73's l2d, main's since 03933ce), the whole models alternating (main: arts.tgz v2-b1), then
#        # trace_layer.py and trace_model.py on the profiling builds
#   bash docs/experiments/v76-run.sh check     # the device (carry .whl, p76.tgz; ~5 min): the patch applied
#        # to the device's copy, compute-sanitizer on its tiny kernels, then its GPU tests
#   bash docs/experiments/v76-run.sh all       # look, then check (carry look's; ~9 min)
#   bash docs/experiments/v76-run.sh last      # ~4.5 min for a short budget: the stall A/B alone, then the
#        # patched tree's tiny and whole-model GPU tests and memcheck (carry .whl, arts.tgz, v73.tgz,
#        # v76.tgz, p76.tgz)
#
# Logs under $OUT (default /tmp/out): layer-ab.log, model-ab.log, trace-layer.log, trace-model.log and
# their directories (look); san-*.log, gpu-tests.log (check, last).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/out}
. docs/experiments/device-lib.sh    # setup, gpu_tests, sanitize
# the device's copy of the tree with the stall prefetch applied (once)
patched() {
  grep -q "bool held(int j)" csrc/kernels/ring.cuh && return 0
  git apply docs/experiments/v76-stall-l2.patch 2>/dev/null || patch -p1 --forward -s < docs/experiments/v76-stall-l2.patch \
    || { echo "v76-stall-l2.patch does not apply" >&2; return 1; }
}
case "${1:-}" in
compile)
  PY=${PY:-$ROOT/.venv/bin/python}
  A=/tmp/p76; S=/tmp/v76; W=/tmp/wt_v76
  rm -rf $A $S $W && mkdir -p $A $S && git worktree prune && git worktree add -f $W HEAD -q --detach || exit 1
  (cd $W && git apply "$ROOT/docs/experiments/v76-stall-l2.patch") || { echo "v76-stall-l2.patch does not apply" >&2; exit 1; }
  c() { $PY $ROOT/docs/experiments/wtrun.py $1 $1/docs/experiments/v34-compile.py $3/$2 what=$2 ${4:-} > $3/$2.log 2>&1 \
          || { echo "compile $3/$2 failed: $3/$2.log" >&2; return 1; }; echo "built $3/$2"; }
  both() { wait $1; local r=$?; wait $2 && [ $r = 0 ] || exit 1; }     # two background builds, both fine
  c $ROOT layer $A profile=True & a=$!; c $ROOT model $A profile=True & b=$!; both $a $b
  c $W layer $S & a=$!; c $W model $S & b=$!; both $a $b
  (cd $W && $PY $ROOT/docs/experiments/wtrun.py $W benchmarks/sanitize.py --gpu H200 --out $A/san > $A/san.log 2>&1) \
    || { echo "sanitizer kernels: $A/san.log" >&2; exit 1; }
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
  patched || exit 1
  OUT=$OUT SAN=/tmp/p76/san TARS=p76.tgz bash docs/experiments/v74-run.sh check
  ;;
all)   # look, then check, in one call (a machine is hard to get)
  bash "$0" look; bash "$0" check
  ;;
last)  # ~4.5 min, for a short budget, most telling first: the models of main and the stall prefetch
       # alternating, the layers at 512 and 4095, the tiny and whole-model GPU tests, then memcheck
  setup arts.tgz v73.tgz v76.tgz p76.tgz
  timeout 100 python3 benchmarks/bench_batch.py --batches 1 --iters 60 --no-baselines --artifact 1=/tmp/a/v2-b1 \
      --artifact 1=/tmp/v76/model --artifact 1=/tmp/a/v2-b1 --artifact 1=/tmp/v76/model 2>&1 | tee "$OUT/model-ab.log"
  cp -r /tmp/v73/l2d /tmp/v73/l2d2
  timeout 60 python3 benchmarks/compare_artifacts.py --pos 512,4095 --iters 100 main=/tmp/v73/l2d \
      stall=/tmp/v76/layer main-again=/tmp/v73/l2d2 2>&1 | grep --line-buffered -v "^  {'attention" | tee "$OUT/layer-ab.log"
  patched || exit 1
  gpu_tests 120 "tiny or whole_model"
  sanitize /tmp/p76/san memcheck
  ;;
*) echo "usage: bash docs/experiments/v76-run.sh compile | look | check | all | last" >&2; exit 2 ;;
esac
