// linear.cuh — one linear task: rows [row_begin, row_end) of out = prologue(in) @ W^T (+bias) (+residual).
#pragma once
#include "common.cuh"
#include "stream.cuh"
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

// The weights arrive through the SM's stream (stream.cuh), one kTileRows x 256 chunk at a
// time; warp w owns rows w + j * kWarps of the tile, lane l columns 8l..8l+7 of a chunk. The
// stream kept this task's first chunks in flight while earlier tasks ran and while this one
// waits on its inputs.
template <int K, int PROLOGUE, typename InT, typename ResT, typename OutT>
__device__ __noinline__ void linear_task(const Step& s, Stream& st, const Waits& waits, OutT* out,
                                         const InT* in, const float* in2, const bf16_t* norm_w, float eps,
                                         const bf16_t* bias, const ResT* residual, int row_begin, int row_end) {
  static_assert(K % 8 == 0, "rows are read 16 bytes (8 bf16) at a time");
  static_assert(kTileRows % kWarps == 0, "every warp owns the same number of rows");
  constexpr int kRowsPerWarp = kTileRows / kWarps;
  constexpr int kChunks = (K + kChunkCols - 1) / kChunkCols;

  if (waits.n > 0) wait_all(s, waits);
  float* xs = s.smem;            // [K]       (smem.linear_task)
  float* scratch = s.smem + K;   // [32]
  stage_input<K, PROLOGUE>(xs, scratch, in, in2, norm_w, eps);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) acc[j] = 0.f;
  for (int c = 0; c < kChunks; ++c) {
    const bf16_t* slot = stream_acquire(st);
    const int col = c * kChunkCols + lane * 8;
    if (col < K) {
      const float4 xa = *reinterpret_cast<const float4*>(xs + col);
      const float4 xb = *reinterpret_cast<const float4*>(xs + col + 4);
      const float x8[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        float wf[8];
        unpack8(*reinterpret_cast<const uint4*>(slot + (warp + j * kWarps) * kChunkCols + lane * 8), wf);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j] = fmaf(wf[e], x8[e], acc[j]);
      }
    }
    stream_release(st);
  }
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int row = row_begin + warp + j * kWarps;
    const float v = warp_sum(acc[j]);
    if (lane == 0 && row < row_end) {
      float r = v;
      if (bias != nullptr) r += to_float(bias[row]);
      if (residual != nullptr) r += to_float(residual[row]);
      store(out + row, r);
    }
  }
  __syncthreads();   // xs is reused by the next task on this block
}

}  // namespace adamk
