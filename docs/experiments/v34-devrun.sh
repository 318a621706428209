#!/bin/bash
# v34's device call (docs/perf.md v34), not yet run: the 1B layer's table for the defaults against
# torch.compile, the L20 artifact and the chain variants at 512/4095, the whole model A/B, then the tiny
# GPU tests on this tree. Before it, on the CPU machine (each artifact from docs/experiments/v34-compile.py):
#   main tree:                       l_main (layer), l20 (gpu=L20), m1 (what=model), lq8, lo1 (force=...)
#   tree with v34-sibling-moves:     l_sib
#   tree with v34-combine-tasks:     lcomb (search: 8 parts), lcomb4 (attention_parts=4), mcomb (what=model)
#   tree with v34-warp-await:        lpw2, mpw2 (what=model), mpw2prof (what=model profile=True); apply it
#                                    to this tree too, for the tests
#   tar czf arts7.tgz l_main l20 m1 lq8 lo1 l_sib lcomb lcomb4 mcomb lpw2 mpw2 mpw2prof   (carry .whl and arts7.tgz)
set -uo pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader | tee $OUT/gpu.txt
mkdir -p /tmp/a && tar xzf arts7.tgz -C /tmp/a; A=/tmp/a
timeout 260 python3 benchmarks/compare_artifacts.py --pos 512,4095 --iters 200 --baselines def=$A/l_main \
  pw2=$A/lpw2 comb=$A/lcomb comb4=$A/lcomb4 lsib=$A/l_sib lq8=$A/lq8 lo1=$A/lo1 l20=$A/l20 def2=$A/l_main > $OUT/compare-layer.log 2>&1
grep -v "Warn\|warn(\|^  {" $OUT/compare-layer.log | tail -20
for v in m1 mpw2 mcomb m1 mpw2 mcomb; do echo "== $v"; timeout 40 python3 benchmarks/bench_model.py --artifact $A/$v --pos 512 \
  --iters 100 --no-baselines 2>&1 | grep -v "Warn\|warn(" | tail -1; done > $OUT/model-ab.log 2>&1
cat $OUT/model-ab.log
# where o_proj's merged input lands now (v33's trace: 4.1 us after its parts at the earliest)
timeout 60 python3 benchmarks/trace_model.py --artifact $A/mpw2prof --pos 512 --out $OUT/trace-pw2 > $OUT/trace-pw2.txt 2>&1
head -12 $OUT/trace-pw2.txt
LEFT=$(( 570 - ($(date +%s) - T0) )); echo "t=$(( $(date +%s) - T0 )) left=$LEFT"
timeout $LEFT python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -x -k tiny > $OUT/tests.log 2>&1; tail -5 $OUT/tests.log
