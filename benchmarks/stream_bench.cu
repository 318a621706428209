// stream_bench.cu - what the SM weight stream of ring.cuh can do on its own, without a schedule:
// every block streams its share of W [132 x 240 rows, 2048] bf16 (127 MB) through a ring of DEPTH
// pages (ROWS x PC) by bulk copies; the consumer warps wait on `full`, optionally compute the page's
// dot products, and release `empty`. Variants: the wait loop (WAITV), the pages in flight (FLIGHT),
// and one signal per tile as the schedule's counters do it (FENCE: fence.acq_rel + red, red.release,
// or an ld.acquire), with the cycles that signal took. Plus the down projection's input staging
// alone (every block reads the same 64 KB). sm_90 only (bulk copies):
//
//     nvcc -O3 -arch=sm_90a -std=c++17 -I csrc/kernels benchmarks/stream_bench.cu -o stream_bench && ./stream_bench
//
// What it showed on the H200 is in docs/perf.md (v12).
#define ADAMK_CONSUMER_WARPS 8
#define ADAMK_PRODUCER_WARPS 1
#define ADAMK_MAX_WAITS 4
#include "common.cuh"
#include "sync.cuh"
#include "ring.cuh"
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

using namespace adamk;
__device__ __forceinline__ u64 globaltimer_ns() { u64 t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
static ErrorRecord* g_err; static u32* g_ctr; static u64* g_stats;

template <int WAITV>
__device__ __forceinline__ void wait_bar(const Step& s, u32 bar, u32 parity) {
  if constexpr (WAITV == 0) {
    mbarrier_wait(s, bar, parity, 0);
  } else if constexpr (WAITV == 1) {
    if (mbarrier_done(bar, parity)) return;
    const u64 start = global_ns();
    for (int i = 1;; ++i) {
      if (mbarrier_done(bar, parity)) return;
      if ((i & 255) == 0) {
        if (global_ns() - start > s.timeout_ns) asm volatile("exit;");
      }
    }
  } else {
    for (;;) {
      u32 done;
      asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
                   : "=r"(done) : "r"(bar), "r"(parity) : "memory");
      if (done) return;
    }
  }
}

template <int DEPTH, int ROWS, int PC, int WAITV, int COMPUTE, int FENCE = 0, int FLIGHT = 99>
__global__ void __launch_bounds__(288, 1) stream(const bf16_t* w, int k, int rows_per_sm, float* out, u64 timeout, ErrorRecord* err, u32* ctr, u64* stats) {
  extern __shared__ __align__(16) unsigned char smem[];
  constexpr int SLOT = ROWS * PC * 2;
  using R = Ring<DEPTH, SLOT>;
  Step s{nullptr, err, nullptr, 0, 1, timeout, smem};
  // ring_init without err
  if (threadIdx.x == 0) {
    for (int i = 0; i < DEPTH; ++i) {
      mbarrier_init(R::full(s, i), 1);
      mbarrier_init(R::empty(s, i), kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  float* xs = reinterpret_cast<float*>(smem + R::kBytes);
  for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = 0.001f * (i % 17);
  __syncthreads();
  const int row0 = blockIdx.x * rows_per_sm;
  const int tiles = rows_per_sm / ROWS, pages_per_tile = k / PC;
  if (is_producer()) {
    if (threadIdx.x != kConsumerThreads) return;
    int j = 0;
    for (int t = 0; t < tiles; ++t)
      for (int p = 0; p < pages_per_tile; ++p, ++j) {
        if (j >= DEPTH) wait_bar<WAITV>(s, R::empty(s, j), (R::use(j) - 1) & 1);
        if (FLIGHT < DEPTH && j >= FLIGHT) wait_bar<WAITV>(s, R::full(s, j - FLIGHT), R::use(j - FLIGHT) & 1);
        const u32 dst = R::page(s, j), full = R::full(s, j);
        asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}"
                     :: "r"(full), "r"(ROWS * PC * 2) : "memory");
        for (int r = 0; r < ROWS; ++r)
          asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                       :: "r"(dst + r * PC * 2), "l"(w + (size_t)(row0 + t * ROWS + r) * k + p * PC), "r"(PC * 2), "r"(full)
                       : "memory");
      }
    return;
  }
  constexpr int kRowsPerWarp = ROWS >= kWarps ? ROWS / kWarps : 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u32 xsa = shared_address(xs);
  int j = 0;
  for (int t = 0; t < tiles; ++t) {
    float acc[kRowsPerWarp] = {};
    for (int p = 0; p < pages_per_tile; ++p, ++j) {
      wait_bar<WAITV>(s, R::full(s, j), R::use(j) & 1);
      if constexpr (COMPUTE) {
        const u32 wt = R::page(s, j);
#pragma unroll 4
        for (int c = lane * 8; c < PC; c += 256) {
          const float4 xa = lds128f(xsa + (p * PC + c) * 4), xb = lds128f(xsa + (p * PC + c + 4) * 4);
          const float x8[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
          for (int jj = 0; jj < kRowsPerWarp; ++jj) {
            float wf[8];
            unpack8(lds128(wt + ((warp + jj * kWarps) * PC + c) * 2), wf);
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[jj] = fmaf(wf[e], x8[e], acc[jj]);
          }
        }
      }
      __syncwarp();
      if (lane == 0) mbarrier_arrive(R::empty(s, j));
    }
    if constexpr (FENCE != 0) {
      consumer_sync();
      if (threadIdx.x == 0) {
        const u64 t0 = clock64();
        if constexpr (FENCE == 1) {
          asm volatile("fence.acq_rel.gpu;" ::: "memory");
          asm volatile("red.relaxed.gpu.global.add.u32 [%0], %1;" :: "l"(ctr + blockIdx.x), "r"(1u) : "memory");
        } else if constexpr (FENCE == 2) {
          asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(ctr + blockIdx.x), "r"(1u) : "memory");
        } else {
          u32 v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(ctr + blockIdx.x) : "memory");
          if (v == 0xffffffffu) out[0] = 1.f;
        }
        const u64 dt = clock64() - t0;
        atomicAdd(stats, dt); atomicAdd(stats + 1, 1ull); atomicMax(stats + 2, dt);
      }
    }
    if constexpr (COMPUTE) {
#pragma unroll
      for (int jj = 0; jj < kRowsPerWarp; ++jj) {
        const float v = warp_sum(acc[jj]);
        if (lane == 0) out[row0 + t * ROWS + warp + jj * kWarps] = v;
      }
    }
  }
}

template <int DEPTH, int ROWS, int PC, int WAITV, int COMPUTE, int FENCE = 0, int FLIGHT = 99>
void run(const char* name, const bf16_t* w, int k, int rows_per_sm, float* out, int sms) {
  auto kern = stream<DEPTH, ROWS, PC, WAITV, COMPUTE, FENCE, FLIGHT>;
  cudaMemset(g_stats, 0, 24);
  const int smem = DEPTH * ROWS * PC * 2 + 2 * DEPTH * 8 + k * 4;
  cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaEvent_t a, b;
  cudaEventCreate(&a); cudaEventCreate(&b);
  std::vector<float> ts;
  for (int rep = 0; rep < 30; ++rep) {
    cudaEventRecord(a);
    for (int i = 0; i < 10; ++i) kern<<<sms, 288, smem>>>(w, k, rows_per_sm, out, 2000000000ull, g_err, g_ctr, g_stats);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms; cudaEventElapsedTime(&ms, a, b);
    ts.push_back(ms * 100.f);   // us per launch
  }
  std::sort(ts.begin(), ts.end());
  cudaError_t e = cudaGetLastError();
  const double bytes = (double)sms * rows_per_sm * k * 2;
  u64 st[3]; cudaMemcpy(st, g_stats, 24, cudaMemcpyDeviceToHost);
  if (st[1]) printf("   fence/ld: %llu calls, mean %.0f cycles, max %llu cycles\n", st[1], (double)st[0] / st[1], st[2]);
  printf("%-40s depth %d page %dx%d (%5d B): %7.2f us  %6.2f TB/s  %s\n", name, DEPTH, ROWS, PC, ROWS * PC * 2,
         ts[15], bytes / ts[15] / 1e6, e == cudaSuccess ? "" : cudaGetErrorString(e));
}


// Every block reads the same two float vectors of 8192 (64 KB), all loads in flight, as the down
// projection's input staging does; L2-resident (written by the previous launch).
__global__ void __launch_bounds__(256, 1) broadcast_kernel(const float* a, const float* b, float* out, u64* stats, int write) {
  __shared__ float xs[8192];
  if (write) {   // the previous step's writers: every block writes a slice
    for (int i = blockIdx.x * 256 + threadIdx.x; i < 8192; i += gridDim.x * 256) { ((float*)a)[i] = i * 1e-4f; ((float*)b)[i] = 1.f; }
    return;
  }
  const u64 t0 = globaltimer_ns();
  float v[8][4], g[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int i = 4 * (threadIdx.x + j * 256);
    const float4 x = *reinterpret_cast<const float4*>(a + i), y = *reinterpret_cast<const float4*>(b + i);
    v[j][0] = x.x; v[j][1] = x.y; v[j][2] = x.z; v[j][3] = x.w; g[j][0] = y.x; g[j][1] = y.y; g[j][2] = y.z; g[j][3] = y.w;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) xs[4 * (threadIdx.x + j * 256) + e] = v[j][e] / (1.f + expf(-v[j][e])) * g[j][e];
  __syncthreads();
  const u64 dt = globaltimer_ns() - t0;
  out[blockIdx.x] = xs[threadIdx.x * 7];
  if (threadIdx.x == 0) { atomicAdd(stats, dt); atomicAdd(stats + 1, 1ull); atomicMax(stats + 2, dt); }
}

void broadcast(int sms) {
  float *a, *b, *out; cudaMalloc(&a, 32768); cudaMalloc(&b, 32768); cudaMalloc(&out, 4096);
  for (int rep = 0; rep < 3; ++rep) {
    broadcast_kernel<<<sms, 256>>>(a, b, out, g_stats, 1);
    cudaMemset(g_stats, 0, 24);
    broadcast_kernel<<<sms, 256>>>(a, b, out, g_stats, 0);
    cudaDeviceSynchronize();
    u64 st[3]; cudaMemcpy(st, g_stats, 24, cudaMemcpyDeviceToHost);
    printf("broadcast staging 64 KB per block, %d blocks: mean %.0f ns, max %llu ns\n", sms, (double)st[0] / st[1], st[2]);
  }
}

__global__ void empty_kernel() {}

int main() {
  const int sms = 132, k = 2048, rows_per_sm = 16 * 15;   // 960 KB per SM, 126.8 MB
  bf16_t* w; float* out;
  const size_t n = (size_t)sms * rows_per_sm * k;
  cudaMalloc(&w, n * 2); cudaMalloc(&out, sms * rows_per_sm * 4);
  cudaMemset(w, 0x3c, n * 2);
  cudaMalloc(&g_ctr, 4096); cudaMemset(g_ctr, 0, 4096); cudaMalloc(&g_stats, 24);
  cudaMalloc(&g_err, sizeof(ErrorRecord)); cudaMemset(g_err, 0, sizeof(ErrorRecord));
  // copy bandwidth reference
  {
    bf16_t* w2; cudaMalloc(&w2, n * 2);
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    std::vector<float> ts;
    for (int i = 0; i < 20; ++i) {
      cudaEventRecord(a); cudaMemcpy(w2, w, n * 2, cudaMemcpyDeviceToDevice); cudaEventRecord(b);
      cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); ts.push_back(ms);
    }
    std::sort(ts.begin(), ts.end());
    const double bw = 2.0 * n * 2 / ts[10] / 1e9;   // bytes read + written per second
    printf("copy %zu B: %.2f us, %.2f TB/s (read + write); reading W at that rate: %.2f us\n", n * 2,
           ts[10] * 1e3, bw / 1e12, n * 2 / bw * 1e6);
    cudaFree(w2);
    std::vector<float> te;
    for (int i = 0; i < 20; ++i) {
      cudaEventRecord(a); for (int r = 0; r < 10; ++r) empty_kernel<<<sms, 288>>>(); cudaEventRecord(b);
      cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms, a, b); te.push_back(ms * 100.f);
    }
    std::sort(te.begin(), te.end());
    printf("empty kernel b2b: %.2f us\n", te[10]);
  }
  run<6, 16, 1024, 0, 0>("wait v0 (error flag every look)", w, k, rows_per_sm, out, sms);
  run<6, 16, 1024, 2, 0>("wait v2 (try_wait)", w, k, rows_per_sm, out, sms);
  run<6, 16, 1024, 2, 1>("compute", w, k, rows_per_sm, out, sms);
  run<6, 32, 512, 2, 1>("compute", w, k, rows_per_sm, out, sms);
  run<3, 16, 2048, 2, 1>("compute", w, k, rows_per_sm, out, sms);
  run<12, 16, 512, 2, 1>("compute", w, k, rows_per_sm, out, sms);
  run<6, 16, 1024, 2, 1, 1>("compute + fence.acq_rel+red per tile", w, k, rows_per_sm, out, sms);
  run<6, 16, 1024, 2, 1, 2>("compute + red.release per tile", w, k, rows_per_sm, out, sms);
  run<6, 16, 1024, 2, 1, 3>("compute + ld.acquire per tile", w, k, rows_per_sm, out, sms);
  for (int f : {1, 2, 3, 4}) printf("  (next: %d pages in flight)\n", f), f == 1 ? run<6, 16, 1024, 2, 1, 3, 1>("ld.acquire", w, k, rows_per_sm, out, sms)
      : f == 2 ? run<6, 16, 1024, 2, 1, 3, 2>("ld.acquire", w, k, rows_per_sm, out, sms)
      : f == 3 ? run<6, 16, 1024, 2, 1, 3, 3>("ld.acquire", w, k, rows_per_sm, out, sms)
               : run<6, 16, 1024, 2, 1, 3, 4>("ld.acquire", w, k, rows_per_sm, out, sms);
  run<6, 16, 1024, 2, 1, 1, 2>("fence, 2 pages in flight", w, k, rows_per_sm, out, sms);
  broadcast(sms);
  printf("done: %s\n", cudaGetErrorString(cudaDeviceSynchronize()));
}
