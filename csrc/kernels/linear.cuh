// linear.cuh — one linear task: rows [row_begin, row_end) of out = prologue(in) @ W^T (+bias) (+residual).
#pragma once
#include "common.cuh"
#include "sync.cuh"

namespace adamk {

enum Prologue { kPlain = 0, kRmsNorm = 1, kSiluMul = 2 };

// Stage the input vector in shared memory as float, with the fused prologue applied.
template <int K, int PROLOGUE, typename InT>
__device__ __forceinline__ void stage_input(float* xs, float* scratch, const InT* in, const float* in2,
                                            const bf16_t* norm_w, float eps) {
  for (int i = threadIdx.x; i < K; i += kThreads) {
    float v = to_float(in[i]);
    if constexpr (PROLOGUE == kSiluMul) v = v / (1.f + expf(-v)) * in2[i];
    xs[i] = v;
  }
  if constexpr (PROLOGUE == kRmsNorm) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < K; i += kThreads) ss += xs[i] * xs[i];   // this thread's own elements
    const float inv_rms = rsqrtf(block_sum(ss, scratch) / K + eps);
    for (int i = threadIdx.x; i < K; i += kThreads) xs[i] = xs[i] * inv_rms * to_float(norm_w[i]);
  }
  __syncthreads();
}

// Warp w owns rows row_begin + w + j * kWarps; each lane reads 16 bytes (8 weights) per
// 256-column chunk. The first kUnroll chunks of every owned row are requested before the
// task waits on its inputs (the weights never depend on them), then each batch of chunks
// is multiplied while the next one is in flight.
template <int K, int TILE_ROWS, int PROLOGUE, typename InT, typename ResT, typename OutT>
__device__ __noinline__ void linear_task(const Step& s, const Waits& waits, OutT* out, const bf16_t* w,
                                         const InT* in, const float* in2, const bf16_t* norm_w, float eps,
                                         const bf16_t* bias, const ResT* residual, int row_begin, int row_end) {
  static_assert(K % 8 == 0, "rows are read 16 bytes (8 bf16) at a time");
  static_assert(TILE_ROWS % kWarps == 0, "every warp owns the same number of rows");
  constexpr int kRowsPerWarp = TILE_ROWS / kWarps;
  constexpr int kChunks = (K + 255) / 256;
  constexpr int kUnroll = kChunks <= 8 ? kChunks : 4;   // double-buffered when K needs several batches
  constexpr int kBatches = (kChunks + kUnroll - 1) / kUnroll;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int rows[kRowsPerWarp];
  float acc[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    rows[j] = row_begin + warp + j * kWarps;
    acc[j] = 0.f;
  }
  uint4 wv[2][kUnroll][kRowsPerWarp];
  auto load_batch = [&](int buf, int batch) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = (batch * kUnroll + u) * 256 + lane * 8;
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j)
        wv[buf][u][j] = (col < K && rows[j] < row_end) ? load_weights16(w + (size_t)rows[j] * K + col)
                                                       : make_uint4(0u, 0u, 0u, 0u);
    }
  };
  load_batch(0, 0);
  if (kBatches > 1 && waits.n > 0)
    prefetch_l2(w + (size_t)row_begin * K, (size_t)(row_end - row_begin) * K * sizeof(bf16_t));
  if (waits.n > 0) wait_all(s, waits);

  float* xs = s.smem;            // [K]       (smem.linear_task)
  float* scratch = s.smem + K;   // [32]
  stage_input<K, PROLOGUE>(xs, scratch, in, in2, norm_w, eps);

#pragma unroll
  for (int b = 0; b < kBatches; ++b) {
    if (b + 1 < kBatches) load_batch((b + 1) % 2, b + 1);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int col = (b * kUnroll + u) * 256 + lane * 8;
      if (col >= K) continue;
      const float4 xa = *reinterpret_cast<const float4*>(xs + col);
      const float4 xb = *reinterpret_cast<const float4*>(xs + col + 4);
      const float x8[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        float wf[8];
        unpack8(wv[b % 2][u][j], wf);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j] = fmaf(wf[e], x8[e], acc[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const float v = warp_sum(acc[j]);
    if (lane == 0 && rows[j] < row_end) {
      float r = v;
      if (bias != nullptr) r += to_float(bias[rows[j]]);
      if (residual != nullptr) r += to_float(residual[rows[j]]);
      store(out + rows[j], r);
    }
  }
  __syncthreads();   // xs is reused by the next task on this block
}

}  // namespace adamk
