#!/usr/bin/env bash
# docs/perf.md v76: where main's layer and whole model lose time now (NextStepL2 landed), the search's
# choice at l2_share 3.0 timed, and main's GPU checks after ff78231.
#
#   bash docs/experiments/v76-run.sh compile   # the CPU machine (~3 min): profiling builds of main's 1B
#        # layer and whole model (H200 target) and main's sanitizer kernels into p76.tgz (ignored)
#   bash docs/experiments/v76-run.sh look      # the device (carry .whl, v73.tgz, v75.tgz, arts.tgz, p76.tgz;
#        # ~4 min): v74-run.sh's final-ab with torch.compile (the layer at 512 and 4095, then the models),
#        # then trace_layer.py and trace_model.py on the profiling builds
#   bash docs/experiments/v76-run.sh check     # the device (carry .whl, p76.tgz; ~5 min): compute-sanitizer
#        # on this tree's tiny kernels, then its GPU tests
#
# Logs under $OUT (default /tmp/out): layer-final.log, model-final.log, trace-layer/, trace-model/ (look);
# san-*.log, gpu-tests.log (check).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-/tmp/out}
case "${1:-}" in
compile)
  PY=${PY:-$ROOT/.venv/bin/python}
  A=/tmp/p76; rm -rf $A && mkdir -p $A
  c() { $PY docs/experiments/v34-compile.py $A/$1 what=$1 profile=True > $A/$1.log 2>&1 \
          || { echo "compile $1 failed: $A/$1.log" >&2; return 1; }; echo "built $1"; }
  set -e
  c layer & a=$!; c model & b=$!; wait $a && wait $b
  $PY benchmarks/sanitize.py --gpu H200 --out $A/san > $A/san.log 2>&1 || { echo "sanitizer kernels: $A/san.log" >&2; exit 1; }
  tar czf "$ROOT/p76.tgz" -C /tmp p76 && ls -la "$ROOT/p76.tgz"
  ;;
look)
  OUT=$OUT BASELINES=1 bash docs/experiments/v74-run.sh final-ab
  tar xzf p76.tgz -C /tmp || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1      # as v74-run.sh's setup
  timeout 90 python3 benchmarks/trace_layer.py --gpu H200 --artifact /tmp/p76/layer --pos 512 --out "$OUT/trace-layer" \
    > "$OUT/trace-layer.log" 2>&1; echo "trace_layer rc $?"; tail -n 30 "$OUT/trace-layer.log"
  timeout 120 python3 benchmarks/trace_model.py --artifact /tmp/p76/model --pos 512 --steps 10 --out "$OUT/trace-model" \
    > "$OUT/trace-model.log" 2>&1; echo "trace_model rc $?"; grep -E "^(##|prologue|epilogue|.*per layer)| 15 " "$OUT/trace-model.log" | head -30
  ;;
check)
  OUT=$OUT SAN=/tmp/p76/san TARS=p76.tgz bash docs/experiments/v74-run.sh check
  ;;
*) echo "usage: bash docs/experiments/v76-run.sh compile | look | check" >&2; exit 2 ;;
esac
