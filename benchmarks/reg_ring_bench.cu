// reg_ring_bench.cu - can registers buffer the weight stream beyond the ring? (docs/perf.md v70, a
// direction: the megakernel's rings are full ~8 us into its ~14 us chain and no shared memory is left,
// while half the register file is unused.) Every block streams its own 60 pages of 32 KB (one
// contiguous span each, as the megakernel's linear pages) through ring.cuh's Ring of 6 slots, and its
// consumer warps wait for each page, read it and release it; once, at page kPauseAt, they pause
// PAUSE_US as the chain pauses them. Two ways to fill the slots:
//   - TMA: the producer warp's bulk copies, at most 2 in flight (the megakernel's ring);
//   - G register groups of 4 warps: group g loads pages g, g + G, ... into registers (16 x 16 B a
//     thread, 32 KB a group, with the L2 evict-first hint) as soon as it has stored the one before,
//     waits for the page's slot, writes it (st.shared), meets on its own named barrier and then one
//     thread arrives on the slot's `full` barrier (its one expected arrival, no bytes counted): the
//     consumers' wait is the same. So G pages more than the ring are held while the consumers pause.
//     (st.async with complete_tx would save the barrier, but PTX defines it only for a cluster of more
//     than one CTA.) With 3 groups 3 pages are in flight against the TMA ring's 2.
// Printed: the kernel's span (first block's start to last block's end, median of 20 launches) and
// the rate, with no pause and with the pause. Predicted (H200): the register groups stream at the
// TMA ring's rate without a pause and finish ~G page-times (~1.1 us each) sooner with it. Measured
// (docs/perf.md v71, H100): all three stream at 2.96-3.01 TB/s; the pause costs the TMA ring 6.5 us,
// 2 groups 3.9 us (two page-times less), 3 groups 6.5 us (not explained).
// sm_90 only:
//
//     nvcc -O3 -arch=sm_90a -std=c++17 -rdc=true -I csrc/kernels benchmarks/reg_ring_bench.cu -o reg_ring_bench && ./reg_ring_bench
//
// (-rdc: ring.cuh declares kOneAtATime extern, which this file defines, all zero, as trip_bench does.)
#define ADAMK_CONSUMER_WARPS 8
#define ADAMK_PRODUCER_WARPS 1
#define ADAMK_MAX_WAITS 4
#define ADAMK_TRACE_SLOTS 4
#define ADAMK_PROFILE 0
#include "common.cuh"
#include "sync.cuh"
#include "ring.cuh"
#ifndef __CUDACC_RTC__
#include <algorithm>
#include <cstdio>
#include <cuda_runtime.h>
#include <vector>
#endif

using namespace adamk;

namespace adamk {
__constant__ int kOneAtATime[1024];   // ring.cuh: no page goes one at a time here
}

constexpr int kSms = 132, kPages = 60, kPageBytes = 32768, kDepth = 6, kInFlight = 2, kPauseAt = 10;
constexpr int kGroupThreads = 128;                               // 4 warps hold a page
constexpr int kVecs = kPageBytes / 16 / kGroupThreads;           // 16-byte registers of a thread a page
using R = Ring<kDepth, kPageBytes, kInFlight>;
static_assert(kVecs == 16, "a group thread holds 16 x 16 bytes of its page");

__device__ __forceinline__ uint4 load_page_vec(const void* p, u64 policy) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p), "l"(policy));
  return v;
}

__device__ __forceinline__ void sts128(u32 addr, const uint4& v) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" :: "r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}

// G == 0: the TMA ring; G > 0: G register groups after the producer warp (G <= kDepth: a group's
// next page then never reaches a slot two phases ahead of the consumers; run() asserts it).
template <int G, bool PAUSE>
__global__ void __launch_bounds__(kThreads + G * kGroupThreads, 1)
bench(const bf16_t* w, float* out, u64* stats, u32 epoch, ErrorRecord* err, u64 pause_ns) {
  const Step s{nullptr, err, nullptr, 0, epoch, 2000000000ull};
  const u64 start = global_ns();
  R::init(s);                                                    // every thread of the block meets here
  const char* mine = reinterpret_cast<const char*>(w) + (size_t)blockIdx.x * kPages * kPageBytes;
  if constexpr (G > 0) {
  if (threadIdx.x >= kThreads) {                                 // a register group
    const int g = (threadIdx.x - kThreads) / kGroupThreads, t = (threadIdx.x - kThreads) % kGroupThreads;
    const u64 policy = l2_evict_first();
    for (int j = g; j < kPages; j += G) {
      uint4 v[kVecs];
#pragma unroll
      for (int i = 0; i < kVecs; ++i) v[i] = load_page_vec(mine + (size_t)j * kPageBytes + (i * kGroupThreads + t) * 16, policy);
      if (j >= kDepth) mbarrier_wait(s, R::empty(j), (R::use(j) - 1) & 1, 0);   // the slot's last page released
#pragma unroll
      for (int i = 0; i < kVecs; ++i) sts128(R::page(j) + (i * kGroupThreads + t) * 16, v[i]);
      asm volatile("bar.sync %0, %1;" :: "r"(2 + g), "n"(kGroupThreads) : "memory");   // the group's stores done
      if (t == 0) mbarrier_arrive(R::full(j));                    // release: the page is the consumers'
    }
    return;
  }
  }
  if (is_producer()) {                                           // the TMA ring's producer warp
    if (G == 0) {
      for (int j = 0; j < kPages; ++j)
        R::fill(s, j, 0, 1, kPageBytes, [&](int) { return mine + (size_t)j * kPageBytes; }, [](int) { return 0u; });
      R::drain(s, kPages);
    }
    return;
  }
  float acc = 0.f;
  for (int j = 0; j < kPages; ++j) {
    if (PAUSE && j == kPauseAt) {                                // the chain: the consumers wait on activations
      const u64 t0 = global_ns();
      while (global_ns() - t0 < pause_ns) __nanosleep(200);
    }
    R::wait_page(s, j, 0);
    const u32 page = R::page(j);
    for (int c = threadIdx.x * 16; c < kPageBytes; c += kConsumerThreads * 16) {   // every byte read once
      float f[8];
      unpack8(lds128(page + c), f);
      for (int e = 0; e < 8; ++e) acc += f[e];
    }
    R::release(j);
  }
  out[blockIdx.x * kConsumerThreads + threadIdx.x] = acc;
  if (threadIdx.x == 0) {
    stats[2 * blockIdx.x] = start;
    stats[2 * blockIdx.x + 1] = global_ns();
  }
}

static_assert(kThreads + 5 * kGroupThreads <= 1024, "at most 5 register groups in a block");

#ifndef __CUDACC_RTC__   // the host side (tests/test_codegen.py builds the kernels with NVRTC)

template <int G, bool PAUSE>
void run(const char* what, const bf16_t* w, float* out, u64* stats, ErrorRecord* err, double pause_us) {
  static_assert(G <= kDepth && kThreads + G * kGroupThreads <= 1024, "G groups fit the block and the ring");
  auto kernel = bench<G, PAUSE>;
  const int smem = R::kBytes, threads = kThreads + G * kGroupThreads;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  std::vector<u64> spans;
  for (int it = 0; it < 23; ++it) {
    kernel<<<kSms, threads, smem>>>(w, out, stats, 1000u + it, err, (u64)(pause_us * 1000));
    std::vector<u64> h(2 * kSms);
    cudaMemcpy(h.data(), stats, h.size() * 8, cudaMemcpyDeviceToHost);
    if (it < 3) continue;
    u64 first = ~0ull, last = 0;
    for (int b = 0; b < kSms; ++b) first = std::min(first, h[2 * b]), last = std::max(last, h[2 * b + 1]);
    spans.push_back(last - first);
  }
  std::sort(spans.begin(), spans.end());
  const double us = spans[spans.size() / 2] / 1e3;
  ErrorRecord e;
  cudaMemcpy(&e, err, sizeof e, cudaMemcpyDeviceToHost);
  printf("%-40s %7.1f us  %5.2f TB/s  (%s, error flag %u)\n", what, us, (double)kSms * kPages * kPageBytes / us / 1e6,
         cudaGetErrorString(cudaGetLastError()), e.flag);
}

int main() {
  bf16_t* w; float* out; u64* stats; ErrorRecord* err;
  const size_t n = (size_t)kSms * kPages * kPageBytes;
  cudaMalloc(&w, n); cudaMemset(w, 0x3c, n);
  cudaMalloc(&out, kSms * kConsumerThreads * 4);
  cudaMalloc(&stats, 2 * kSms * 8);
  cudaMalloc(&err, sizeof(ErrorRecord)); cudaMemset(err, 0, sizeof(ErrorRecord));
  const double pause = 14.0;
  run<0, false>("TMA ring, 2 in flight", w, out, stats, err, 0);
  run<2, false>("2 register groups", w, out, stats, err, 0);
  run<3, false>("3 register groups", w, out, stats, err, 0);
  run<0, true>("TMA ring, paused 14 us at page 10", w, out, stats, err, pause);
  run<2, true>("2 register groups, paused", w, out, stats, err, pause);
  run<3, true>("3 register groups, paused", w, out, stats, err, pause);
  ErrorRecord e;
  cudaMemcpy(&e, err, sizeof e, cudaMemcpyDeviceToHost);
  printf("done: %s, error record flag %u\n", cudaGetErrorString(cudaDeviceSynchronize()), e.flag);
}
#endif
