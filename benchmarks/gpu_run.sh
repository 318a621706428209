#!/usr/bin/env bash
# One device-tool call on the H200 machine: install the wheels the machine lacks (xDSL and its
# pins, in .whl: `bash ../shared/device/wheels.sh`), then run the named parts in order, each
# one's log under $OUT. Carry .whl with the call.
#
#   bash benchmarks/gpu_run.sh tests bench trace sanitize
#
#   tests     the GPU tests (tests/test_gpu.py; PYTEST_ARGS adds options, e.g. "-k tiny")
#   bench     bench_layer at pos 512 and 4095 with the baselines (VARIANTS, default below)
#   trace     profiling builds' per-SM traces, H200 target, pos 512 (TRACE_SCHEDULES, comma-separated,
#             default round-robin), each under $OUT/trace-<schedule>
#   sanitize  compute-sanitizer memcheck, racecheck, synccheck on the tiny preset's kernels
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
TRACE_SCHEDULES=${TRACE_SCHEDULES:-round-robin}
status=0
for part in "$@"; do
  echo "=== $part ==="
  case "$part" in
    tests)
      python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -x ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" \
        || status=1 ;;
    bench)
      python3 benchmarks/bench_layer.py --variants "${VARIANTS:-H200,H200:schedule=round-robin,L20}" --pos 512,4095 \
        --iters 100 --baselines --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" || status=1 ;;
    trace)
      for schedule in ${TRACE_SCHEDULES//,/ }; do
        python3 benchmarks/trace_layer.py --gpu H200 --pos 512 --schedule "$schedule" --out "$OUT/trace-$schedule" \
          2>&1 | tee "$OUT/trace-$schedule.log" || status=1
      done ;;
    sanitize)
      python3 benchmarks/sanitize.py --gpu H200 --out /tmp/san > /dev/null || status=1
      for tool in memcheck racecheck synccheck; do
        compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 1 \
          python3 benchmarks/sanitize.py --run /tmp/san 2>&1 | tail -25 | tee "$OUT/sanitize-$tool.log" || status=1
      done ;;
    *) echo "unknown part '$part'" >&2; exit 2 ;;
  esac
done
exit $status
