# The experiment scripts' device steps (sourced by v74-run.sh and v76-run.sh from the repository root,
# with $OUT set).
# the device's setup: the wheels, PYTHONPATH, the GPU's name, the tarballs named unpacked under /tmp
setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
  local t
  for t in "$@"; do tar xzf "$t" -C /tmp || exit 1; done
}
# the GPU tests patch-ab.sh device-check runs (or those -k $2 selects), on this tree, within $1 s (default 220)
gpu_tests() {
  timeout ${1:-220} python3 -m pytest -q -p no:cacheprovider tests/test_gpu_batch.py tests/test_gpu.py \
    -k "${2:-tiny or whole_model or llama-3.2-1b-16-H200 or llama-3.2-1b-4-H200}" > "$OUT/gpu-tests.log" 2>&1
  echo "GPU tests rc $?"; tail -n 2 "$OUT/gpu-tests.log"
}
# compute-sanitizer's tools named in $2.. on the sanitizer kernels in $1 (benchmarks/sanitize.py --run)
sanitize() {
  local dir=$1 t; shift
  for t in "$@"; do
    timeout 60 compute-sanitizer --tool $t --report-api-errors no --error-exitcode 1 \
      python3 benchmarks/sanitize.py --run $dir > "$OUT/san-$t.log" 2>&1
    echo "$t rc $?"; tail -n 1 "$OUT/san-$t.log"
  done
}
