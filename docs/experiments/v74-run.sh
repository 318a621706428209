#!/usr/bin/env bash
# docs/perf.md v74: how many pages each SM asks L2 for after its drain (v73's l2-next-deep asks for the
# ring's depth, 6), and the deep variant's whole-model and 4095 figures against torch.compile.
#
#   bash docs/experiments/v74-run.sh compile   # the CPU machine (~1 min): the 1B layer (H200 target) with
#        # v74-l2-next-pages.patch, the SM's first 3, 9 and 12 pages into L2, into v74.tgz (ignored). v74
#        # measured these built at 3306e21 (the patch on v73's two). arts.tgz: `patch-ab.sh compile
#        # v72-step-smem,v73-l2-next-step+v73-l2-next-deep 1` at 3306e21 (models m-b1 and v2-b1)
#   bash docs/experiments/v74-run.sh device    # the device (carry .whl, v73.tgz, v74.tgz, arts.tgz; ~6 min):
#        # the layers at 512 and 4095 with torch.compile in a CUDA graph (main first and last), then the
#        # KV cache zero and random (v74-kv-fill.py), then the whole model of main and of the deep tree with
#        # torch.compile in a CUDA graph, alternating
#   bash docs/experiments/v74-run.sh final     # the device (carry .whl, v73.tgz, arts.tgz and v75.tgz; ~5 min):
#        # the layer with the v73 patches (l2d: main's since 03933ce) against the search's choice with the
#        # cost model's l2_share at 3.0 (v75.tgz: `v34-compile.py /tmp/v75/layer what=layer` and `/tmp/v75/model
#        # what=model` at a32c109, whose default it was) at 512 and 4095 with torch.compile, then the
#        # whole models likewise (v2-b1 against v75's), then the GPU tests of this tree
#   bash docs/experiments/v74-run.sh check     # the device, on a tree with both v73 patches applied (carry
#        # .whl, arts.tgz; ~7 min): compute-sanitizer on the deep tree's tiny kernels (san-v2), then the GPU
#        # tests of this tree
#
# check with SAN=DIR TARS="A.tgz ..." runs those sanitizer kernels, unpacked from those tarballs (v76-run.sh).
# Logs under $OUT (default /tmp/out): layer-ab.log, kv-fill.log, model-ab.log (device); layer-final.log,
# model-final.log, gpu-tests.log (final; final-ab without the tests); san-*.log, gpu-tests.log (check).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/out}
. docs/experiments/device-lib.sh    # setup, gpu_tests, sanitize
case "${1:-}" in
compile)
  PY=${PY:-$ROOT/.venv/bin/python}
  A=/tmp/v74; W=/tmp/wt_v74
  rm -rf $A $W && mkdir -p $A && git worktree prune && git worktree add -f $W HEAD -q --detach || exit 1
  (cd $W && git apply "$ROOT/docs/experiments/v74-l2-next-pages.patch") || { echo "v74-l2-next-pages.patch does not apply" >&2; exit 1; }
  c() { ADAMK_L2_NEXT_PAGES=$1 $PY $ROOT/docs/experiments/wtrun.py $W $W/docs/experiments/v34-compile.py $A/l2p$1 what=layer \
          > $A/l2p$1.log 2>&1 || { echo "compile l2p$1 failed: $A/l2p$1.log" >&2; return 1; }; echo "built l2p$1"; }
  set -e
  c 3 & a=$!; c 9 & b=$!; wait $a && wait $b
  c 12
  git worktree remove --force $W
  tar czf "$ROOT/v74.tgz" -C /tmp v74 && ls -la "$ROOT/v74.tgz"
  ;;
device)
  setup v73.tgz v74.tgz arts.tgz
  cp -r /tmp/v73/base /tmp/v73/base2
  L=/tmp/v73; P=/tmp/v74
  timeout 240 python3 benchmarks/compare_artifacts.py --pos 512,4095 --iters 100 --baselines main=$L/base \
      l2-next-deep=$L/l2d l2-pages-3=$P/l2p3 l2-pages-9=$P/l2p9 l2-pages-12=$P/l2p12 main-again=$L/base2 2>&1 \
    | grep --line-buffered -v "^  {'attention" | tee "$OUT/layer-ab.log"   # each check's config line
  timeout 60 python3 docs/experiments/v74-kv-fill.py $L/base 2>&1 | tee "$OUT/kv-fill.log"
  timeout 240 python3 benchmarks/bench_batch.py --batches 1 --iters 60 --artifact 1=/tmp/a/m-b1 \
      --artifact 1=/tmp/a/v2-b1 --artifact 1=/tmp/a/m-b1 --artifact 1=/tmp/a/v2-b1 2>&1 | tee "$OUT/model-ab.log"
  ;;
final|final-ab)   # final-ab: the two A/Bs alone, without torch.compile or the GPU tests (~2 min: for a short budget)
  setup v73.tgz v75.tgz arts.tgz
  cp -r /tmp/v73/l2d /tmp/v73/l2d2
  baselines=; [ "$1" = final ] && baselines=--baselines
  timeout 240 python3 benchmarks/compare_artifacts.py --pos 512,4095 --iters 100 $baselines \
      l2-next-deep=/tmp/v73/l2d l2-share-3=/tmp/v75/layer l2-next-deep-again=/tmp/v73/l2d2 2>&1 \
    | grep --line-buffered -v "^  {'attention" | tee "$OUT/layer-final.log"
  timeout 80 python3 benchmarks/bench_batch.py --batches 1 --iters 60 --no-baselines --artifact 1=/tmp/a/v2-b1 \
      --artifact 1=/tmp/v75/model --artifact 1=/tmp/a/v2-b1 --artifact 1=/tmp/v75/model 2>&1 | tee "$OUT/model-final.log"
  [ "$1" = final-ab ] || gpu_tests
  ;;
check)
  grep -q NextStepL2 csrc/kernels/ring.cuh || { echo "this tree has no NextStepL2 (v73's patches)" >&2; exit 1; }
  setup ${TARS:-arts.tgz}
  sanitize ${SAN:-/tmp/a/san-v2} memcheck racecheck synccheck
  gpu_tests 330
  ;;
*) echo "usage: bash docs/experiments/v74-run.sh compile | device | final | final-ab | check" >&2; exit 2 ;;
esac
