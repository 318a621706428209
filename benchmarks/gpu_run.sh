#!/usr/bin/env bash
# One device-tool call on the H200 machine: install the wheels the machine lacks (xDSL and its
# pins, in .whl: `bash ../shared/device/wheels.sh`), then run the named parts in order, each
# one's log under $OUT. Carry .whl with the call.
#
#   bash benchmarks/gpu_run.sh tests bench trace sanitize
#
#   tests     the GPU tests (tests/test_gpu.py; PYTEST_ARGS adds options, e.g. "-k tiny")
#   bench     bench_layer at pos 512 and 4095 with the baselines (VARIANTS, default below)
#   trace     profiling builds' per-SM traces, H200 target, at each of TRACE_POS (default 512) for each
#             of TRACE_SCHEDULES (default round-robin; both comma-separated), under $OUT/trace-<schedule>-<pos>
#   stream    benchmarks/stream_bench.cu: the ring's stream alone, and L2-hit / DRAM-miss latency under it
#   trip      benchmarks/trip_bench.cu: a staging trip's latency by its bytes (4-64 KB an SM) and the SM's
#             copies in flight (0-2 pages), with every SM reading the same lines or its own; then the
#             walks: linear.cuh's staging of a batch's rows timed alone under the stream
#   stalls    Nsight Compute's warp-stall sampling of one step (1B layer, H200 target, at each of STALL_POS,
#             default 512) per function and instruction: benchmarks/stalls.py
#   sanitize  compute-sanitizer memcheck, racecheck, synccheck on the tiny preset's kernels
#   runtime   build the C++ runtime as `pip install .` does (the wheels it needs in .whl too:
#             bash ../shared/device/wheels.sh scikit-build-core==1.1.2 pybind11==3.1.0 pathspec packaging;
#             the device has CMake, and the cmake wheel's 30 MB leave no room for arts.tgz in a call's 64 MiB),
#             then tests/test_gpu_cpp.py (the C++ runtime against the Python one, the ops, the C++ example)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
TRACE_SCHEDULES=${TRACE_SCHEDULES:-round-robin} TRACE_POS=${TRACE_POS:-512} STALL_POS=${STALL_POS:-512}
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
        for pos in ${TRACE_POS//,/ }; do
          python3 benchmarks/trace_layer.py --gpu H200 --pos "$pos" --schedule "$schedule" \
            --out "$OUT/trace-$schedule-$pos" 2>&1 | tee "$OUT/trace-$schedule-$pos.log" || status=1
        done
      done ;;
    stream)
      nvcc -O3 -arch=sm_90a -std=c++17 -I csrc/kernels benchmarks/stream_bench.cu -o /tmp/stream_bench \
        && /tmp/stream_bench 2>&1 | tee "$OUT/stream.log" || status=1 ;;
    trip)   # -rdc: ring.cuh declares kOneAtATime extern (the generated kernel defines it; trip_bench does)
      nvcc -O3 -arch=sm_90a -std=c++17 -rdc=true -I csrc/kernels benchmarks/trip_bench.cu -o /tmp/trip_bench \
        && /tmp/trip_bench 2>&1 | tee "$OUT/trip.log" || status=1 ;;
    stalls)
      python3 benchmarks/stalls.py --out /tmp/st > /dev/null || status=1
      for pos in ${STALL_POS//,/ }; do
        { ncu --clock-control none --cache-control none --section SourceCounters --section WarpStateStats --warp-sampling-interval 2 \
             -k regex:adamk_decode_step --launch-skip 3 --launch-count 1 -f --export /tmp/st/prof \
             python3 benchmarks/stalls.py --run /tmp/st --pos "$pos" > "$OUT/ncu-$pos.log" 2>&1 \
          && ncu --import /tmp/st/prof.ncu-rep --page source --csv --print-source sass > /tmp/st/sass.csv \
          && python3 benchmarks/stalls.py --report /tmp/st 2>&1 | tee "$OUT/stalls-$pos.txt"; } || status=1
        gzip -c /tmp/st/sass.csv > "$OUT/sass-$pos.csv.gz" 2>/dev/null
        ncu --import /tmp/st/prof.ncu-rep --page details --csv > "$OUT/details-$pos.csv" 2>/dev/null
      done ;;
    runtime)
      start=$(date +%s)
      PATH=/tmp/site/bin:$PATH python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
          --target /tmp/built . > "$OUT/runtime-build.log" 2>&1 && cp /tmp/built/adamk/_runtime*.so adamk/ \
        && echo "C++ runtime built in $(( $(date +%s) - start )) s" \
        && PATH=/tmp/site/bin:$PATH python3 -m pytest -q -p no:cacheprovider tests/test_gpu_cpp.py ${PYTEST_ARGS:-} 2>&1 \
          | tee "$OUT/runtime.log" || status=1 ;;
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
