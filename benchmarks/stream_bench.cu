// stream_bench.cu - the SM weight stream of ring.cuh on its own, and what the reads on a decode
// step's critical path cost while it runs. Every block streams its share of W [132 x 240 rows, 2048]
// bf16 (127 MB) through a Ring of 6 pages of 32 KB (16 x 1024) or 12 of 16 KB (8 x 1024), 1-4 in
// flight (bulk copies with the evict-first policy, as the megakernel's linear tasks), or as gated
// pages (8 rows of each half of W, as a gated linear's gate and up rows) with each block's tiles
// contiguous or every kSms-th (round-robin placement); its consumer
// warps wait for each page, compute its dot products and release it. Every 128 KB one lane of each
// block times, with %clock64:
//   - an L2 hit: a tagged word another block stored at the start (ld.relaxed.gpu, as a staging reads);
//   - a DRAM miss: a word of a cold 1 GB buffer, a line no one has read;
// and once, half-way, all 256 consumer threads stage the same 8192 tagged words (64 KB, as the down
// projection's input staging) and it times the staging. The same probes with no stream (the
// producer idle, the consumers pacing themselves) are the baseline. sm_90 only (bulk copies):
//
//     nvcc -O3 -arch=sm_90a -std=c++17 -I csrc/kernels benchmarks/stream_bench.cu -o stream_bench && ./stream_bench
//
// Figures of the v15 session's run on the H200: docs/perf.md (v15); the gated modes: v18.
#define ADAMK_CONSUMER_WARPS 8
#define ADAMK_PRODUCER_WARPS 1
#define ADAMK_MAX_WAITS 4
#define ADAMK_TRACE_SLOTS 4
#include "common.cuh"
#include "sync.cuh"
#include "tagged.cuh"
#include "ring.cuh"
#include <algorithm>
#include <cstdio>
#include <cuda_runtime.h>
#include <vector>

using namespace adamk;

constexpr int kSms = 132, kK = 2048, kRowsPerSm = 16 * 15, kCols = 1024;
constexpr int kProbes = 7;      // per block: one every 128 KB streamed
constexpr int kHotWords = 4096, kVecWords = 8192;
constexpr size_t kColdWords = (size_t)1 << 27;               // 1 GB of u64

// Per block: kProbes L2-hit latencies, kProbes DRAM-miss latencies (cycles), then the staging's
// cycles, the block's start and end (globaltimer ns) and clock64 over that time.
constexpr int kStats = 2 * kProbes + 4;

__device__ __forceinline__ u64 clock_now() {
  u64 t;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(t) :: "memory");
  return t;
}
// The clock once `v` is in its register: the shared store of v waits for the load that writes it,
// and the clock read after it issues after it (a warp issues in order). `sink`: a shared word.
__device__ __forceinline__ u64 clock_after(u64 v, u32 sink) {
  u64 t;
  asm volatile("st.volatile.shared.u64 [%1], %2;\n mov.u64 %0, %%clock64;" : "=l"(t) : "r"(sink), "l"(v) : "memory");
  return t;
}

// Page j of rows [row_begin, row_begin + ROWS) x columns [c0, c0 + PC) of row-major W (row length k),
// one copy per row (GATED: ROWS / 2 rows of W, then the same rows of W2): the megakernel's pages up
// to v18, before linear weights were stored page by page (linear.cuh linear_produce, one copy each).
template <typename R, int ROWS, int PC, bool GATED>
__device__ __forceinline__ void produce_rows(const Step& s, const bf16_t* w, const bf16_t* w2, int k, int row_begin,
                                             int c0, int j) {
  constexpr int kHalf = GATED ? ROWS / 2 : ROWS;
  R::fill(s, j, 0, ROWS, PC * 2,
          [&](int r) { return (!GATED || r < kHalf ? w + (size_t)(row_begin + r) * k : w2 + (size_t)(row_begin + r - kHalf) * k) + c0; },
          [&](int r) { return (u32)(r * PC * 2); });
}

// ROWS x kCols bf16 per page (16: 32 KB, 8: 16 KB), DEPTH pages in the ring.
// MODE 0: a block's rows of one matrix, contiguous; 1: gated pages (ROWS / 2 rows of each half of W
// as gate and up, as a gated linear's), each block a contiguous stretch of tiles; 2: gated pages,
// block b taking tiles b, b + kSms, ... (round-robin placement of a gated linear's tasks).
template <int ROWS, int DEPTH, int IN_FLIGHT, bool STREAM, int MODE = 0>
__global__ void __launch_bounds__(288, 1)
bench(const bf16_t* w, float* out, tagged_t* hot, const u64* cold, size_t cold_base, const tagged_t* vec,
      u64* stats, u32 epoch, ErrorRecord* err) {
  using R = Ring<DEPTH, ROWS * kCols * 2, IN_FLIGHT>;
  constexpr int kPages = kRowsPerSm / ROWS * (kK / kCols), kEvery = 4 * 16 / ROWS;
  const Step s{nullptr, err, nullptr, 0, epoch, 2000000000ull};
  u64* mine = stats + (size_t)blockIdx.x * kStats;
  const u64 start_ns = global_ns(), start_clk = clock_now();
  for (int i = threadIdx.x; i < kHotWords / kSms + 1; i += blockDim.x)   // this block's hot words
    if (blockIdx.x + i * kSms < kHotWords) store(s, hot + blockIdx.x + i * kSms, 1.0f);
  R::init(s);
  const bf16_t* mw = w + (size_t)blockIdx.x * kRowsPerSm * kK;
  if (is_producer()) {
    if (STREAM) {
      for (int j = 0; j < kPages; ++j) {
        const int r0 = j / (kK / kCols) * ROWS, c0 = j % (kK / kCols) * kCols;
        if constexpr (MODE == 0) {
          produce_rows<R, ROWS, kCols, false>(s, mw, nullptr, kK, r0, c0, j);
        } else {
          constexpr int kHalfRows = kSms * kRowsPerSm / 2, kTile = ROWS / 2;
          const int tile = j / (kK / kCols);                          // this block's tile number
          const int t = MODE == 1 ? blockIdx.x * (kRowsPerSm / ROWS) + tile : tile * kSms + blockIdx.x;
          produce_rows<R, ROWS, kCols, true>(s, w, w + (size_t)kHalfRows * kK, kK, t * kTile, c0, j);
        }
      }
      R::drain(s, kPages);
    }
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u32 sink = shared_address(smem_at(R::kBytes));     // one u64 past the ring (kernel smem)
  float acc = 0.f;
  for (int j = 0; j < kPages; ++j) {
    if (STREAM) {
      R::wait_page(s, j, 0);
      const u32 page = R::page(j);
      for (int c = lane * 8; c < kCols; c += 256)
        for (int r = warp; r < ROWS; r += kWarps) {
          float f[8];
          unpack8(lds128(page + (r * kCols + c) * 2), f);
          for (int e = 0; e < 8; ++e) acc += f[e];
        }
      R::release(j);
    } else {
      __nanosleep(1000 * ROWS / 16);        // about a page's time at the stream's rate
    }
    if (j % kEvery == kEvery - 1 && j / kEvery < kProbes && threadIdx.x == 0) {
      const int p = j / kEvery;
      const tagged_t* h = hot + (blockIdx.x * 37 + p * 101 + 1) % kHotWords;   // another block's word
      const u64 t0 = clock_now();
      const u64 a = load_word(h);
      mine[p] = clock_after(a, sink) - t0;
      const u64* c = cold + cold_base + ((size_t)blockIdx.x * kProbes + p) * 16;   // a fresh 128-byte line
      const u64 t1 = clock_now();
      const u64 b = load_word(reinterpret_cast<const tagged_t*>(c));
      mine[kProbes + p] = clock_after(b, sink) - t1;
      acc += (float)(a & 1) + (float)(b & 1);
    }
    if (j == kPages / 2) {     // the staging of a whole vector every SM reads
      consumer_sync();
      const u64 t0 = clock_now();
      float sum = 0.f;
      for (int i = 4 * threadIdx.x; i < kVecWords; i += 4 * kConsumerThreads) {
        Vec4<tagged_t> v;
        v.load(vec + i);
        float f[4];
        v.get(f);
        sum += f[0] + f[1] + f[2] + f[3];
      }
      acc += sum;
      consumer_sync();
      if (threadIdx.x == 0) mine[2 * kProbes] = clock_now() - t0;
    }
  }
  out[blockIdx.x * kConsumerThreads + threadIdx.x] = acc;
  if (threadIdx.x == 0) {
    mine[2 * kProbes + 1] = start_ns;
    mine[2 * kProbes + 2] = global_ns();
    mine[2 * kProbes + 3] = clock_now() - start_clk;
  }
}

static u64 pct(std::vector<u64> v, double q) {
  std::sort(v.begin(), v.end());
  return v[(size_t)(q * (v.size() - 1))];
}

template <int ROWS, int DEPTH, int IN_FLIGHT, bool STREAM, int MODE = 0>
void run(const char* what, const bf16_t* w, float* out, tagged_t* hot, const u64* cold, const tagged_t* vec,
         u64* stats, ErrorRecord* err) {
  auto kernel = bench<ROWS, DEPTH, IN_FLIGHT, STREAM, MODE>;
  const int smem = Ring<DEPTH, ROWS * kCols * 2, IN_FLIGHT>::kBytes + 16;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  std::vector<u64> hit, miss, staging, span;
  double cycles_per_ns = 0;
  static size_t cold_base = 0;
  for (int it = 0; it < 23; ++it) {
    kernel<<<kSms, 288, smem>>>(w, out, hot, cold, cold_base, vec, stats, 1000u + it, err);
    cold_base = (cold_base + (size_t)kSms * kProbes * 16) % (kColdWords - (size_t)kSms * kProbes * 16);
    std::vector<u64> h((size_t)kSms * kStats);
    cudaMemcpy(h.data(), stats, h.size() * 8, cudaMemcpyDeviceToHost);
    if (it < 3) continue;      // warm-up
    u64 first = ~0ull, last = 0;
    for (int b = 0; b < kSms; ++b) {
      const u64* m = h.data() + (size_t)b * kStats;
      for (int p = 0; p < kProbes; ++p) hit.push_back(m[p]), miss.push_back(m[kProbes + p]);
      staging.push_back(m[2 * kProbes]);
      first = std::min(first, m[2 * kProbes + 1]);
      last = std::max(last, m[2 * kProbes + 2]);
      cycles_per_ns += (double)m[2 * kProbes + 3] / (double)(m[2 * kProbes + 2] - m[2 * kProbes + 1]);
    }
    span.push_back(last - first);
  }
  cycles_per_ns /= (double)kSms * 20;
  const double us = pct(span, 0.5) / 1e3, tbs = (double)kSms * kRowsPerSm * kK * 2 / us / 1e6;   // bytes per us / 1e6
  auto ns = [&](u64 c) { return c / cycles_per_ns; };
  printf("%-34s kernel %6.1f us%s  L2 hit %5.0f / %5.0f ns  DRAM miss %5.0f / %5.0f ns  64 KB staging %6.0f ns "
         "(median / p90; %.2f GHz)\n", what, us, STREAM ? "" : " (paced)", ns(pct(hit, .5)), ns(pct(hit, .9)),
         ns(pct(miss, .5)), ns(pct(miss, .9)), ns(pct(staging, .5)), cycles_per_ns);
  if (STREAM) printf("%-34s stream %.2f TB/s\n", "", tbs);
}

int main() {
  bf16_t* w; float* out; tagged_t *hot, *vec; u64 *cold, *stats; ErrorRecord* err;
  const size_t n = (size_t)kSms * kRowsPerSm * kK;
  cudaMalloc(&w, n * 2); cudaMemset(w, 0x3c, n * 2);
  cudaMalloc(&out, kSms * kConsumerThreads * 4);
  cudaMalloc(&hot, kHotWords * 8);
  cudaMalloc(&vec, kVecWords * 8); cudaMemset(vec, 0, kVecWords * 8);
  cudaMalloc(&cold, kColdWords * 8); cudaMemset(cold, 0, kColdWords * 8);
  cudaMalloc(&stats, (size_t)kSms * kStats * 8);
  cudaMalloc(&err, sizeof(ErrorRecord)); cudaMemset(err, 0, sizeof(ErrorRecord));
  run<16, 6, 2, false>("no stream", w, out, hot, cold, vec, stats, err);
  run<16, 6, 1, true>("32 KB pages, 1 in flight", w, out, hot, cold, vec, stats, err);
  run<16, 6, 2, true>("32 KB pages, 2 in flight", w, out, hot, cold, vec, stats, err);
  run<16, 6, 3, true>("32 KB pages, 3 in flight", w, out, hot, cold, vec, stats, err);
  run<8, 12, 2, true>("16 KB pages, 2 in flight", w, out, hot, cold, vec, stats, err);
  run<8, 12, 3, true>("16 KB pages, 3 in flight", w, out, hot, cold, vec, stats, err);
  run<8, 12, 4, true>("16 KB pages, 4 in flight", w, out, hot, cold, vec, stats, err);
  run<16, 6, 2, true, 1>("gated 32 KB pages, contiguous tiles", w, out, hot, cold, vec, stats, err);
  run<16, 6, 2, true, 2>("gated 32 KB pages, round-robin tiles", w, out, hot, cold, vec, stats, err);
  run<16, 6, 4, true, 2>("gated, round-robin, 4 in flight", w, out, hot, cold, vec, stats, err);
  ErrorRecord e;
  cudaMemcpy(&e, err, sizeof e, cudaMemcpyDeviceToHost);
  printf("done: %s, error record flag %u\n", cudaGetErrorString(cudaDeviceSynchronize()), e.flag);
}
