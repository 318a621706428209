// bulk_copy_bench.cu - what one SM's copy engine streams, by the size of its copies: G blocks (one
// per SM) each stream P pages of 32 KB through ring.cuh's Ring (6 slots, IF in flight), each page as
// C bulk copies of 32 KB / C (source spans contiguous, or 2 x their size apart); the consumer warps
// only wait for each page and release it. With few blocks DRAM is idle, so the per-SM figure is the
// copy engine's own: ~40-50 ns per copy whatever its size up to 2 KB (16 x 2 KB: 39 GB/s per SM;
// one 32 KB copy: 73-100), which is why linear weights are stored page by page (linear.cuh
// linear_produce). Figures of the v19 run: docs/perf.md (v19). sm_90 only:
//
//     nvcc -O3 -arch=sm_90a -std=c++17 -I csrc/kernels benchmarks/bulk_copy_bench.cu -o bulk_copy_bench && ./bulk_copy_bench
#define ADAMK_CONSUMER_WARPS 8
#define ADAMK_PRODUCER_WARPS 1
#define ADAMK_MAX_WAITS 4
#define ADAMK_TRACE_SLOTS 4
#include "common.cuh"
#include "sync.cuh"
#include "ring.cuh"
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
using namespace adamk;
constexpr int P = 64, PAGE = 32768;
template <int IF>
__global__ void __launch_bounds__(288, 1) k(const char* w, int copies, int stride_mult, u64* stats, ErrorRecord* err) {
  using R = Ring<6, PAGE, IF>;
  const Step s{nullptr, err, nullptr, 0, 1, 2000000000ull};
  R::init(s);
  const u64 t0 = global_ns();
  const int bytes = PAGE / copies;
  const char* mine = w + (size_t)blockIdx.x * P * PAGE * stride_mult;
  if (is_producer()) {
    for (int j = 0; j < P; ++j) {
      const char* pg = mine + (size_t)j * PAGE * stride_mult;
      R::fill(s, j, 0, copies, bytes, [&](int i) { return (const void*)(pg + (size_t)i * bytes * stride_mult); },
              [&](int i) { return (u32)(i * bytes); });
    }
    R::drain(s, P);
  } else {
    for (int j = 0; j < P; ++j) { R::wait_page(s, j, 0); R::release(j); }
  }
  __syncthreads();
  if (threadIdx.x == 0) { stats[2 * blockIdx.x] = t0; stats[2 * blockIdx.x + 1] = global_ns(); }
}
template <int IF>
void run(const char* w, int G, int copies, int sm, u64* st, ErrorRecord* err) {
  const int smem = Ring<6, PAGE, IF>::kBytes + 16;
  cudaFuncSetAttribute(k<IF>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  std::vector<double> us;
  for (int it = 0; it < 13; ++it) {
    k<IF><<<G, 288, smem>>>(w, copies, sm, st, err);
    std::vector<u64> h(2 * G);
    cudaMemcpy(h.data(), st, 16 * G, cudaMemcpyDeviceToHost);
    u64 a = ~0ull, b = 0;
    for (int i = 0; i < G; ++i) a = std::min(a, h[2 * i]), b = std::max(b, h[2 * i + 1]);
    if (it >= 3) us.push_back((b - a) / 1e3);
  }
  std::sort(us.begin(), us.end());
  const double t = us[us.size() / 2], mb = (double)G * P * PAGE / 1e6;
  printf("G %3d IF %d copies %2d x %5d B stride x%d: %7.1f us  %5.2f TB/s  %5.1f GB/s per SM  %5.0f ns per copy\n",
         G, IF, copies, PAGE / copies, sm, t, mb / t, mb * 1e3 / t / G, t * 1e3 / (P * copies));
}
int main() {
  char* w; u64* st; ErrorRecord* err;
  cudaMalloc(&w, (size_t)132 * P * PAGE * 2); cudaMemset(w, 1, (size_t)132 * P * PAGE * 2);
  cudaMalloc(&st, 132 * 16); cudaMalloc(&err, sizeof(ErrorRecord)); cudaMemset(err, 0, sizeof(ErrorRecord));
  for (int G : {8, 32, 132}) for (int c : {1, 2, 4, 16, 32}) { run<2>(w, G, c, 1, st, err); }
  for (int G : {8, 132}) for (int c : {1, 16}) { run<4>(w, G, c, 1, st, err); run<2>(w, G, c, 2, st, err); }
  printf("done: %s\n", cudaGetErrorString(cudaDeviceSynchronize()));
}
