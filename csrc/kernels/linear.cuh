// linear.cuh — linear tasks: a tile of rows x one K-chunk of out = prologue(in) @ W^T (+bias) (+residual),
// with the tile's weights staged in shared memory by cp.async; and the fixed-order combine of K-split parts.
#pragma once
#include "common.cuh"
#include "sync.cuh"

namespace adamk {

enum Prologue { kPlain = 0, kRmsNorm = 1, kSiluMul = 2 };

// One weight stage: TILE_ROWS x KC bf16, row-major (smem.linear_stage_bytes).
template <int TILE_ROWS, int KC>
struct WeightStage {
  static constexpr int kBytes = TILE_ROWS * KC * 2;
};

// A linear task's work area (smem.linear_work_bytes).
template <int KC>
struct LinearWork {
  static constexpr int kXs = 0;                // float[KC]: the prologue-applied input slice
  static constexpr int kScratch = KC * 4;      // float[32]: block reductions, one float per warp
  static constexpr int kBytes = kScratch + 32 * 4;
};

__device__ __forceinline__ u32 shared_address(const void* p) {
  u64 a;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
  return (u32)a;
}

// 16 bytes global -> shared without the registers; src_bytes 0 writes zeros.
__device__ __forceinline__ void copy_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(shared_address(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}

// Close this thread's current group of copies. An SM's i-th group is always its i-th linear
// task's weights (empty when there is nothing left to stage), so a task finds its own with
// wait_group(depth - 1).
__device__ __forceinline__ void commit_group() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void wait_group() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

// Start copying rows [row_begin, row_end) x columns [k0, k0 + k_len) of W (row length k) into
// the stage at `stage_offset`; the rest of the stage is zero-filled, so a short tile or a
// short last K-part needs no bounds checks when it is used. Weights never depend on this
// step's activations, so this runs ahead of the task, before its inputs are ready.
template <int TILE_ROWS, int KC>
__device__ __forceinline__ void stage_weights(const Step& s, int stage_offset, const bf16_t* w, int k, int row_begin,
                                           int row_end, int k0, int k_len, int task) {
  check_smem(s, stage_offset + WeightStage<TILE_ROWS, KC>::kBytes, task);
  bf16_t* stage = reinterpret_cast<bf16_t*>(s.smem + stage_offset);
  constexpr int kPerRow = KC / 8;
  for (int p = threadIdx.x; p < TILE_ROWS * kPerRow; p += kThreads) {
    const int r = p / kPerRow, c = (p % kPerRow) * 8;
    const bool in = row_begin + r < row_end && c < k_len;
    copy_async16(stage + r * KC + c, in ? w + (size_t)(row_begin + r) * k + k0 + c : w, in ? 16 : 0);
  }
  commit_group();
}

// xs[0, KC) = prologue(in)[k0, k0 + k_len), zero past k_len. RMSNorm needs the whole row's
// sum of squares, so every K-part reads all k inputs for it (they are in L2).
template <int KC, int PROLOGUE, typename InT>
__device__ __forceinline__ void stage_input(float* xs, float* scratch, const InT* in, const float* in2,
                                            const bf16_t* norm_w, float eps, int k, int k0, int k_len) {
  float inv_rms = 1.f;
  if constexpr (PROLOGUE == kRmsNorm) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < k; i += kThreads) {
      const float v = to_float(in[i]);
      ss += v * v;
    }
    inv_rms = rsqrtf(block_sum(ss, scratch) / k + eps);
  }
  for (int i = threadIdx.x; i < KC; i += kThreads) {
    float v = 0.f;
    if (i < k_len) {
      v = to_float(in[k0 + i]);
      if constexpr (PROLOGUE == kSiluMul) v = v / (1.f + expf(-v)) * in2[k0 + i];
      if constexpr (PROLOGUE == kRmsNorm) v = v * inv_rms * to_float(norm_w[k0 + i]);
    }
    xs[i] = v;
  }
}

template <typename ResT, typename OutT>
__device__ __forceinline__ void finish_row(OutT* out, int row, float v, const bf16_t* bias, const ResT* residual) {
  if (bias != nullptr) v += to_float(bias[row]);
  if (residual != nullptr) v += to_float(residual[row]);
  store(out + row, v);
}

// Rows [row_begin, row_end) of out from the weight stage at `stage_offset` (staged earlier by
// stage_weights) and input columns [k0, k0 + k_len). A K-split part gets out = its row of the
// partial buffer and no bias or residual. With TILE_ROWS >= warps, warp w owns rows w + j*warps;
// with fewer rows, kWarpsPerRow warps share a row and add up through shared memory in order.
template <int KC, int TILE_ROWS, int PROLOGUE, int DEPTH, typename InT, typename ResT, typename OutT>
__device__ __forceinline__ void linear_task(const Step& s, const Waits& waits, int task, int stage_offset,
                                            int work_offset, OutT* out, const InT* in, const float* in2,
                                            const bf16_t* norm_w, float eps, const bf16_t* bias,
                                            const ResT* residual, int k, int k0, int k_len, int row_begin,
                                            int row_end) {
  static_assert(KC % 8 == 0, "rows are read 16 bytes (8 bf16) at a time");
  static_assert(TILE_ROWS % kWarps == 0 || kWarps % TILE_ROWS == 0, "warps split rows evenly");
  constexpr int kRowsPerWarp = TILE_ROWS >= kWarps ? TILE_ROWS / kWarps : 1;
  constexpr int kWarpsPerRow = TILE_ROWS >= kWarps ? 1 : kWarps / TILE_ROWS;
  check_smem(s, work_offset + LinearWork<KC>::kBytes, task);
  if (waits.n > 0) wait_all(s, waits, task);
  float* xs = reinterpret_cast<float*>(s.smem + work_offset + LinearWork<KC>::kXs);
  float* scratch = reinterpret_cast<float*>(s.smem + work_offset + LinearWork<KC>::kScratch);
  stage_input<KC, PROLOGUE>(xs, scratch, in, in2, norm_w, eps, k, k0, k_len);
  wait_group<DEPTH - 1>();   // this task's weights have landed (later tasks' may still fly)
  __syncthreads();           // ... for every thread's copies, and xs is complete

  const bf16_t* wt = reinterpret_cast<const bf16_t*>(s.smem + stage_offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, seg = warp % kWarpsPerRow;
  float acc[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) acc[j] = 0.f;
#pragma unroll 4
  for (int c = (seg * 32 + lane) * 8; c < KC; c += kWarpsPerRow * 256) {
    const float4 xa = *reinterpret_cast<const float4*>(xs + c);
    const float4 xb = *reinterpret_cast<const float4*>(xs + c + 4);
    const float x8[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const int r = kWarpsPerRow == 1 ? warp + j * kWarps : warp / kWarpsPerRow;
      float wf[8];
      unpack8(*reinterpret_cast<const uint4*>(wt + r * KC + c), wf);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[j] = fmaf(wf[e], x8[e], acc[j]);
    }
  }
  if constexpr (kWarpsPerRow == 1) {
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const float v = warp_sum(acc[j]);
      const int row = row_begin + warp + j * kWarps;
      if (lane == 0 && row < row_end) finish_row(out, row, v, bias, residual);
    }
  } else {
    const float v = warp_sum(acc[0]);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int row = row_begin + threadIdx.x;
    if (threadIdx.x < TILE_ROWS && row < row_end) {
      float t = 0.f;
      for (int i = 0; i < kWarpsPerRow; ++i) t += scratch[threadIdx.x * kWarpsPerRow + i];
      finish_row(out, row, t, bias, residual);
    }
  }
  __syncthreads();   // the stage and the work area are reused by later tasks of this block
}

// Rows [row_begin, row_end) of out = the sum of the k_split partial rows, added in part order
// (so the result does not depend on which part finished first), + bias + residual.
template <typename ResT, typename OutT>
__device__ __forceinline__ void linear_combine(const Step& s, const Waits& waits, int task, OutT* out,
                                               const float* partial, int n, int k_split, const bf16_t* bias,
                                               const ResT* residual, int row_begin, int row_end) {
  if (waits.n > 0) wait_all(s, waits, task);
  for (int row = row_begin + threadIdx.x; row < row_end; row += kThreads) {
    float v = 0.f;
    for (int j = 0; j < k_split; ++j) v += partial[(size_t)j * n + row];
    finish_row(out, row, v, bias, residual);
  }
}

}  // namespace adamk
