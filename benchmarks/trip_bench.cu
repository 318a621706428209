// trip_bench.cu - what one staging trip costs an SM while its weight stream runs: the figure a
// batch's cost model lacks (docs/perf.md v38, v39). Every SM (one block each) streams 32 KB pages
// from DRAM through ring.cuh's Ring (6 slots, IF pages in flight; IF 0: no stream), as the
// megakernel's producer warp does, while its 8 consumer warps make trips: each thread requests
// N 16-byte words with the megakernel's loads (ld.relaxed.gpu, tagged.cuh load_words2), all in
// flight at once, uses them, and the warps meet at a barrier; thread 0 stamps each trip. Between
// trips the consumers release the pages that have landed, so the stream never stops for a full
// ring. The words come from a region that L2 holds: the same 64 KB for every SM ("shared", as a
// staging reads the rows every SM reads) or a region of its own ("private").
//
// What it answers: a trip's latency as a function of the bytes an SM requests at once (4-64 KB)
// and of its copies in flight (0, 1, 2 pages). v39 found four sequences a trip slower than one at a
// time and a rotated walk no faster, so either the SM's reads wait behind its own copies, or each
// trip's bytes travel at some fixed per-SM rate; the table separates the two.
//
// sm_90 (the ring's bulk copies), on the device machine:
//
//     nvcc -O3 -arch=sm_90a -std=c++17 -rdc=true -I csrc/kernels benchmarks/trip_bench.cu -o trip_bench && ./trip_bench
//
// Then the walks: each SM runs the megakernel's own staging (linear.cuh linear_input) of a batch's
// rows, over and over, under the same stream: an RMSNorm row of 2048 from the bf16 shadow, a down
// K-part of 2048 from the shadow and from tagged floats, and batch 1's RMSNorm row for scale. The
// rows are written once before the launch, so a walk here waits on no producer: what it costs a
// sequence is its own trip, stores, reduction and barriers. v38 read ~1.15-1.5 us a sequence off
// the megakernel's staging points, where the trips above take ~0.2 (docs/perf.md v40).
//
// -rdc: ring.cuh declares kOneAtATime extern, which this file defines (the generated kernel does).
#define ADAMK_CONSUMER_WARPS 8
#define ADAMK_PRODUCER_WARPS 1
#define ADAMK_MAX_WAITS 4
#define ADAMK_TRACE_SLOTS 4
#define ADAMK_MAX_TILE_ROWS 32
#include "common.cuh"
#include "sync.cuh"
#include "ring.cuh"
#include "tagged.cuh"
#include "linear.cuh"
#ifndef __CUDACC_RTC__
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>
#include <cuda_runtime.h>
#endif

namespace adamk {
__constant__ int kOneAtATime[1024];   // ring.cuh: no page goes one at a time here (all zero)
}
using namespace adamk;

constexpr int kPage = 32768, kDepth = 6;
constexpr int kPages = 1024;           // pages each SM streams: ~1.4 ms at ~24 GB/s, longer than the trips
constexpr int kTrips = 256;            // trips each SM makes
constexpr int kRegion = 65536;         // bytes of words a trip draws from (rotating)

// One trip of N 16-byte words per consumer thread (N * 4 KB an SM), all requested before the first is
// used; returns their xor so the loads cannot be dropped.
template <int N>
__device__ __forceinline__ u64 trip(const tagged_t* region, int trip_index) {
  constexpr int kWords = kRegion / 16;                       // 16-byte words in the region
  const int first = (trip_index * N * kConsumerThreads) % kWords;
  u64 a[N], b[N];
#pragma unroll
  for (int i = 0; i < N; ++i)
    load_words2(region + 2 * ((first + i * kConsumerThreads + (int)threadIdx.x) % kWords), a[i], b[i]);
  u64 x = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) x ^= a[i] ^ b[i];
  return x;
}

// Each SM's weight stream, as the megakernel's producer warp runs it: kPages pages through ring R, IF
// copies in flight (IF 0: no stream). Between their trips the consumers release the pages that have
// landed, so the stream never stops for a full ring; at the end the rest, so the producer finishes.
template <typename R, int IF>
struct Stream {
  static __device__ __forceinline__ void produce(const Step& s, const char* weights) {
    if (IF == 0) return;
    const char* mine = weights + (size_t)blockIdx.x * kPages * kPage;
    for (int j = 0; j < kPages; ++j)
      R::fill(s, j, 0, 1, kPage, [&](int) { return (const void*)(mine + (size_t)j * kPage); },
              [](int) { return 0u; });
    R::drain(s, kPages);
  }
  // `released`: pages this warp has released (the same count in every lane)
  static __device__ __forceinline__ void release_landed(int& released) {
    if (IF > 0)
      while (released < kPages && mbarrier_done(R::full(released), R::use(released) & 1)) R::release(released++);
  }
  static __device__ __forceinline__ void release_rest(const Step& s, int& released) {
    if (IF > 0)
      for (; released < kPages; ++released) {
        R::wait_page(s, released, 0);
        R::release(released);
      }
  }
};

template <int IF, int N>
__global__ void __launch_bounds__(288, 1) trip_kernel(const char* weights, const tagged_t* words, int shared,
                                                      u64* stamps, u64* sink, ErrorRecord* err) {
  using R = Ring<kDepth, kPage, IF == 0 ? 1 : IF>;
  const Step s{nullptr, err, nullptr, 0, 1, 2000000000ull};
  R::init(s);
  const tagged_t* region = words + (shared ? 0 : (size_t)blockIdx.x * kRegion / 8);
  if (is_producer()) {
    Stream<R, IF>::produce(s, weights);
    return;
  }
  int released = 0;                    // pages this warp has released (the same count in every lane)
  u64 x = 0;
  for (int t = 0; t < kTrips; ++t) {
    consumer_sync();
    const u64 t0 = global_ns();
    x ^= trip<N>(region, t);
    consumer_sync();
    if (threadIdx.x == 0) stamps[(size_t)blockIdx.x * kTrips + t] = global_ns() - t0;
    Stream<R, IF>::release_landed(released);
  }
  Stream<R, IF>::release_rest(s, released);
  if (x == 0x5eed) sink[blockIdx.x] = x;
}

// A walk: linear_input's staging of a batch's rows (K columns each, XS of them staged, from `rows`
// of InT), timed by thread 0 from its first barrier to its last, kWalks times; the stream as above.
constexpr int kWalks = 64;
static_assert(kWalks <= kTrips, "the walks' stamps fit the trips' buffer");

// A walk's ring: the targets' 6 slots, or 4 at batch 16 (whose rows would not fit beside 6: the 1B
// preset's ring at 16, compiler._ring_for).
template <int B>
constexpr int kWalkDepth = B > 8 ? 4 : kDepth;

template <int IF, int B, int XS, int K, int PROLOGUE, typename InT, int G = 0>
__global__ void __launch_bounds__(288, 1) walk_kernel(const char* weights, const InT* rows, const bf16_t* norm_w,
                                                      u64* stamps, ErrorRecord* err) {
  using R = Ring<kWalkDepth<B>, kPage, IF == 0 ? 1 : IF>;
  const Step s{nullptr, err, nullptr, 0, 1, 2000000000ull};
  R::init(s);
  if (is_producer()) {
    Stream<R, IF>::produce(s, weights);
    return;
  }
  int released = 0;
  for (int t = 0; t < kWalks; ++t) {
    consumer_sync();                   // every warp done releasing pages: the walk's time alone
    const u64 t0 = global_ns();
    if constexpr (G == 0)      // the staging the megakernel has; G: a plain shadow's G sequences a trip
      linear_input<XS, K, PROLOGUE, InT, B>(s, R::kBytes, rows, (const InT*)nullptr, norm_w, 1e-5f, 0, XS, 0);
    else
      linear_input_pairs<XS, K, B, G>(s, R::kBytes, rows, 0, XS, 0);
    if (threadIdx.x == 0) stamps[(size_t)blockIdx.x * kWalks + t] = global_ns() - t0;
    Stream<R, IF>::release_landed(released);
  }
  Stream<R, IF>::release_rest(s, released);
}

// Every 8-byte word of n bytes: epoch 1 in the high half, two bf16 1.0 (a shadow's pair) or a float
// 1.0 (a tagged word) in the low: a staging's input, written by this step.
__global__ void fill_words(u64* p, size_t n, u32 low) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n / 8; i += (size_t)gridDim.x * blockDim.x)
    p[i] = (1ull << 32) | low;
}

#ifndef __CUDACC_RTC__
// Three launches (the first warms L2 and is not counted); the median and p90, in us, of stamps
// [first, last) of every SM's `per_sm`. False, with a line naming `what`, if a launch failed.
template <typename Launch>
bool timed(const char* what, Launch launch, const u64* stamps, int blocks, int per_sm, int first, int last,
           double& med, double& p90) {
  std::vector<double> us;
  for (int rep = 0; rep < 3; ++rep) {
    launch();
    if (cudaError_t e = cudaDeviceSynchronize(); e != cudaSuccess) {
      printf("%s: %s\n", what, cudaGetErrorString(e));
      return false;
    }
    std::vector<u64> h((size_t)blocks * per_sm);
    cudaMemcpy(h.data(), stamps, h.size() * 8, cudaMemcpyDeviceToHost);
    if (rep == 0) continue;
    for (int b = 0; b < blocks; ++b)
      for (int t = first; t < last; ++t) us.push_back(h[(size_t)b * per_sm + t] / 1e3);
  }
  std::sort(us.begin(), us.end());
  med = us[us.size() / 2];
  p90 = us[us.size() * 9 / 10];
  return true;
}

template <int IF, int N>
void run(const char* weights, const tagged_t* words, int blocks, int shared, u64* stamps, u64* sink,
         ErrorRecord* err) {
  const int smem = Ring<kDepth, kPage, IF == 0 ? 1 : IF>::kBytes;
  cudaFuncSetAttribute(trip_kernel<IF, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  double med, p90;
  if (!timed("trips", [&] { trip_kernel<IF, N><<<blocks, 288, smem>>>(weights, words, shared, stamps, sink, err); },
             stamps, blocks, kTrips, 16, kTrips * 3 / 4, med, p90))   // trips while the stream runs, past the start
    return;
  const double kb = N * 16.0 * kConsumerThreads / 1024;
  printf("%-7s in flight %d  %5.0f KB a trip: median %6.2f us  p90 %6.2f us  %6.1f GB/s an SM\n",
         shared ? "shared" : "private", IF, kb, med, p90, kb * 1024 / med / 1e3);
}

template <int IF>
void sweep(const char* weights, const tagged_t* words, int blocks, u64* stamps, u64* sink, ErrorRecord* err) {
  for (int shared : {1, 0}) {
    run<IF, 1>(weights, words, blocks, shared, stamps, sink, err);
    run<IF, 2>(weights, words, blocks, shared, stamps, sink, err);
    run<IF, 4>(weights, words, blocks, shared, stamps, sink, err);
    run<IF, 8>(weights, words, blocks, shared, stamps, sink, err);
    run<IF, 16>(weights, words, blocks, shared, stamps, sink, err);
  }
}

template <int IF, int B, int XS, int K, int PROLOGUE, typename InT, int G = 0>
void walk(const char* name, const char* weights, const void* rows, const bf16_t* norm_w, int blocks, u64* stamps,
          ErrorRecord* err) {
  const int smem = Ring<kWalkDepth<B>, kPage, IF == 0 ? 1 : IF>::kBytes + LinearWork<XS, 0, 0, B>::kBytes;
  auto kernel = walk_kernel<IF, B, XS, K, PROLOGUE, InT, G>;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess) {
    printf("%s: %d B of shared memory do not fit\n", name, smem);
    return;
  }
  double med, p90;
  if (!timed(name, [&] { kernel<<<blocks, 288, smem>>>(weights, (const InT*)rows, norm_w, stamps, err); }, stamps,
             blocks, kWalks, 4, kWalks * 3 / 4, med, p90))
    return;
  printf("walk %-34s in flight %d: median %6.2f us  p90 %6.2f us  %5.2f us a sequence\n", name, IF, med, p90, med / B);
}

template <int IF>
void walks(const char* weights, const void* pairs, const void* floats, const bf16_t* norm_w, int blocks, u64* stamps,
           ErrorRecord* err) {
  walk<IF, 8, 2048, 2048, kRmsNorm, paired_t>("batch 8 RMSNorm 2048, shadow", weights, pairs, norm_w, blocks, stamps, err);
  walk<IF, 16, 2048, 2048, kRmsNorm, paired_t>("batch 16 RMSNorm 2048, shadow", weights, pairs, norm_w, blocks, stamps, err);
  walk<IF, 8, 2048, 8192, kPlain, paired_t>("batch 8 plain K-part 2048, shadow", weights, pairs, norm_w, blocks, stamps, err);
  walk<IF, 8, 2048, 8192, kPlain, paired_t, 4>("batch 8 plain K-part 2048, shadow, 4 a trip", weights, pairs, norm_w, blocks, stamps, err);
  walk<IF, 16, 2048, 8192, kPlain, paired_t>("batch 16 plain K-part 2048, shadow", weights, pairs, norm_w, blocks, stamps, err);
  walk<IF, 8, 2048, 8192, kPlain, tagged_t>("batch 8 plain K-part 2048, floats", weights, floats, norm_w, blocks, stamps, err);
  walk<IF, 4, 2048, 2048, kRmsNorm, paired_t>("batch 4 RMSNorm 2048, shadow", weights, pairs, norm_w, blocks, stamps, err);
  walk<IF, 1, 2048, 2048, kRmsNorm, tagged_t>("batch 1 RMSNorm 2048, floats", weights, floats, norm_w, blocks, stamps, err);
}

int main(int argc, char** argv) {
  if (argc > 2 || (argc == 2 && std::string(argv[1]) != "walks")) {
    printf("usage: trip_bench [walks]   (walks: the walks alone)\n");
    return 2;
  }
  const bool trips = argc < 2;
  int blocks = 0;
  cudaDeviceGetAttribute(&blocks, cudaDevAttrMultiProcessorCount, 0);
  char* weights;
  tagged_t* words;
  u64 *stamps, *sink;
  ErrorRecord* err;
  const size_t weight_bytes = (size_t)blocks * kPages * kPage;
  if (cudaMalloc(&weights, weight_bytes) != cudaSuccess) { printf("no memory for %zu B\n", weight_bytes); return 1; }
  cudaMemset(weights, 1, weight_bytes);
  cudaMalloc(&words, (size_t)blocks * kRegion);
  cudaMemset(words, 2, (size_t)blocks * kRegion);
  cudaMalloc(&stamps, (size_t)blocks * kTrips * 8);
  cudaMalloc(&sink, (size_t)blocks * 8);
  cudaMalloc(&err, sizeof(ErrorRecord));
  cudaMemset(err, 0, sizeof(ErrorRecord));
  printf("%d SMs, %d KB pages, a ring of %d\n", blocks, kPage / 1024, kDepth);
  if (trips) {
    sweep<0>(weights, words, blocks, stamps, sink, err);
    sweep<1>(weights, words, blocks, stamps, sink, err);
    sweep<2>(weights, words, blocks, stamps, sink, err);
  }
  // the walks' rows: 16 sequences of 8192 columns (tagged floats: 8), as a shadow (4 bytes an element) and as tagged floats
  const size_t pair_bytes = (size_t)16 * 8192 * 4, float_bytes = (size_t)8 * 8192 * 8;
  u64 *pairs, *floats;
  bf16_t* norm_w;
  cudaMalloc(&pairs, pair_bytes);
  cudaMalloc(&floats, float_bytes);
  cudaMalloc(&norm_w, 8192 * 2);
  fill_words<<<64, 256>>>(pairs, pair_bytes, 0x3f803f80u);
  fill_words<<<64, 256>>>(floats, float_bytes, 0x3f800000u);
  cudaMemset(norm_w, 0x3f, 8192 * 2);     // bf16 0x3f3f: ~0.75
  walks<0>(weights, pairs, floats, norm_w, blocks, stamps, err);
  walks<2>(weights, pairs, floats, norm_w, blocks, stamps, err);
  ErrorRecord h;
  cudaMemcpy(&h, err, sizeof(h), cudaMemcpyDeviceToHost);
  printf("done: %s, error flag %u\n", cudaGetErrorString(cudaDeviceSynchronize()), h.flag);
  return 0;
}
#endif
