#!/usr/bin/env bash
# docs/perf.md v73: the A/B prepared in a session that got no device time, as one device call.
# Measured in v74; its two L2 patches then landed (NextStepL2) and left this directory, so `compile` runs
# at commit 3306e21 (git worktree add /tmp/v73tree 3306e21), which still has them.
#
#   bash docs/experiments/v73-run.sh compile    # the CPU machine (~7 min on 2 cores): into v73.tgz
#        # (ignored; ~6 MB): the 1B layer (H200 target) of main, of main + v73-l2-next-step.patch, of
#        # that + v73-l2-next-deep.patch (the ring's first 6 pages into L2, not only the first task's), and
#        # with the ring as 3 x 64 KB pages (2 in flight), as 4 x 48 KB (2 in flight), with 3 pages in
#        # flight, and with down_proj split over K in 4 and in 2 parts; the whole 1B model of main,
#        # with 3 pages in flight, and as 3 x 64 KB pages
#   bash docs/experiments/v73-run.sh device     # the device (carry .whl and v73.tgz; it installs the wheels; ~8 min): the
#        # layers at position 512 with torch.compile in a CUDA graph (main first and last), then
#        # v73-lead-launch.py (b2b with and without time_launches' lead launch), then the models
#        # (main first and last), every artifact checked against float32 before it is timed
#
# Logs under $OUT (default /tmp/out): layer-ab.log, lead-launch.log, model-ab.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/out}
A=/tmp/v73
case "${1:-}" in
compile)
  [ -f docs/experiments/v73-l2-next-step.patch ] || { echo "v73's patches landed in v74: run this script from a checkout of \
3306e21 (git worktree add /tmp/v73tree 3306e21; PY=$ROOT/.venv/bin/python bash /tmp/v73tree/docs/experiments/v73-run.sh compile)" >&2; exit 1; }
  PY=${PY:-$ROOT/.venv/bin/python}
  rm -rf $A /tmp/wt_v73 /tmp/wt_v73d && mkdir -p $A && git worktree prune
  for wt in /tmp/wt_v73 /tmp/wt_v73d; do
    git worktree add -f $wt HEAD -q --detach && (cd $wt && git apply "$ROOT/docs/experiments/v73-l2-next-step.patch") \
      || { echo "v73-l2-next-step.patch does not apply" >&2; exit 1; }
  done
  (cd /tmp/wt_v73d && git apply "$ROOT/docs/experiments/v73-l2-next-deep.patch") \
    || { echo "v73-l2-next-deep.patch does not apply after v73-l2-next-step.patch" >&2; exit 1; }
  c() { local tree=$1 n=$2; shift 2
        $PY $ROOT/docs/experiments/wtrun.py $tree $tree/docs/experiments/v34-compile.py $A/$n "$@" > $A/$n.log 2>&1 \
          || { echo "compile $n failed: $A/$n.log" >&2; return 1; }; echo "built $n"; }
  two() { eval "$1" & local a=$!; eval "$2" & local b=$!; wait $a && wait $b; }   # the 2 cores; a failure stops it
  set -e
  two "c $ROOT base what=layer" "c /tmp/wt_v73 l2n what=layer"
  two "c $ROOT p64 what=layer stage_bytes=65536 stages=3 pages_in_flight=2" \
      "c $ROOT p48 what=layer stage_bytes=49152 stages=4 pages_in_flight=2"
  two "c $ROOT f3 what=layer pages_in_flight=3" "c $ROOT d4 what=layer force=down_proj:16:4"
  two "c $ROOT d2 what=layer force=down_proj:16:2" "c /tmp/wt_v73d l2d what=layer"
  two "c $ROOT mbase what=model" "c $ROOT mf3 what=model pages_in_flight=3"
  c $ROOT mp64 what=model stage_bytes=65536 stages=3 pages_in_flight=2
  git worktree remove --force /tmp/wt_v73 && git worktree remove --force /tmp/wt_v73d
  tar czf "$ROOT/v73.tgz" -C /tmp v73 && ls -la "$ROOT/v73.tgz"
  ;;
device)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
  rm -rf $A && tar xzf v73.tgz -C /tmp || exit 1
  cp -r $A/base $A/base2
  timeout 270 python3 benchmarks/compare_artifacts.py --pos 512 --iters 100 --baselines main=$A/base l2-next=$A/l2n l2-next-deep=$A/l2d \
      pages-3x64k=$A/p64 pages-4x48k=$A/p48 in-flight-3=$A/f3 down-k4=$A/d4 down-k2=$A/d2 main-again=$A/base2 2>&1 \
    | grep --line-buffered -v "^  {'attention" | tee "$OUT/layer-ab.log"   # each check's config line
  timeout 60 python3 docs/experiments/v73-lead-launch.py $A/base 2>&1 | tee "$OUT/lead-launch.log"
  timeout 180 python3 benchmarks/bench_batch.py --batches 1 --no-baselines --iters 60 --artifact 1=$A/mbase \
      --artifact 1=$A/mf3 --artifact 1=$A/mp64 --artifact 1=$A/mbase 2>&1 | tee "$OUT/model-ab.log"
  ;;
*) echo "usage: bash docs/experiments/v73-run.sh compile | device" >&2; exit 2 ;;
esac
