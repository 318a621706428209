// linear.cuh — linear tasks: a tile of rows x one K-chunk of out = prologue(in) @ W^T (+bias) (+residual).
// The producer warp streams the tile's weights through the ring as NPAGES pages of ROWS x PC; the
// consumer warps stage the prologue-applied input once per run of an op's tasks (linear_input), then
// every task accumulates its rows over its pages (linear_task). Plus the fixed-order combine of K-split parts.
#pragma once
#include "common.cuh"
#include "ring.cuh"
#include "sync.cuh"

namespace adamk {

enum Prologue { kPlain = 0, kRmsNorm = 1, kSiluMul = 2 };

// One weight page of a linear task: ROWS x PC bf16, row-major (smem.linear_page_bytes).
template <int ROWS, int PC>
struct WeightPage {
  static constexpr int kBytes = ROWS * PC * 2;
};

// A linear op's work area (smem.linear_work_bytes): the input columns of its K-chunk, padded to
// whole pages (zeros past the chunk), and the reduction scratch.
template <int XS>
struct LinearWork {
  static constexpr int kXs = 0;                // float[XS]: the prologue-applied input slice
  static constexpr int kScratch = XS * 4;      // float[32]: reductions, one float per warp
  static constexpr int kBytes = kScratch + 32 * 4;
};

// Consumers: xs[0, XS) = prologue(in)[k0, k0 + k_len), zero past k_len; once for a run of tasks
// of one op and K-part. RMSNorm needs the whole row's sum of squares. Starts with a consumer
// barrier (the previous run is done with xs) and ends with one (xs is complete).
template <int XS, int PROLOGUE, typename InT>
__device__ __forceinline__ void linear_input(const Step& s, int work_offset, const InT* in, const float* in2,
                                             const bf16_t* norm_w, float eps, int k, int k0, int k_len, int task) {
  static_assert(XS % 8 == 0, "pages read the input 8 columns at a time");
  check_smem(s, work_offset + LinearWork<XS>::kBytes, task);
  float* xs = reinterpret_cast<float*>(s.smem + work_offset + LinearWork<XS>::kXs);
  float* scratch = reinterpret_cast<float*>(s.smem + work_offset + LinearWork<XS>::kScratch);
  consumer_sync();
  // Four columns per thread and load (k, k0 and k_len are multiples of 8: whole vectors).
  float inv_rms = 1.f;
  if constexpr (PROLOGUE == kRmsNorm) {
    float ss = 0.f;
    for (int i = 4 * threadIdx.x; i < k; i += 4 * kConsumerThreads) {
      float v[4];
      load4(in + i, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) ss += v[e] * v[e];
    }
    inv_rms = rsqrtf(block_sum(ss, scratch) / k + eps);
  }
  for (int i = 4 * threadIdx.x; i < XS; i += 4 * kConsumerThreads) {
    float v[4] = {0.f, 0.f, 0.f, 0.f};
    if (i < k_len) {
      load4(in + k0 + i, v);
      if constexpr (PROLOGUE == kSiluMul) {
        float g[4];
        load4(in2 + k0 + i, g);
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = v[e] / (1.f + expf(-v[e])) * g[e];
      }
      if constexpr (PROLOGUE == kRmsNorm) {
        float nw[4];
        load4(norm_w + k0 + i, nw);
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = v[e] * inv_rms * nw[e];
      }
    }
    *reinterpret_cast<float4*>(xs + i) = make_float4(v[0], v[1], v[2], v[3]);
  }
  consumer_sync();
}

// Producer: the NPAGES pages of rows [row_begin, row_end) x columns [k0, k0 + k_len) of W (row
// length k), as pages `page`, `page + 1`, ... of the ring.
template <int DEPTH, int SLOT_BYTES, int ROWS, int PC, int NPAGES>
__device__ __forceinline__ void linear_produce(const Step& s, const bf16_t* w, int k, int row_begin, int row_end,
                                               int k0, int k_len, int page, int task) {
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p)
    produce_page<DEPTH, SLOT_BYTES, ROWS, PC>(s, w, k, row_begin, row_end, k0 + p * PC, k0 + k_len, page + p, task);
}

template <typename ResT, typename OutT>
__device__ __forceinline__ void finish_row(OutT* out, int row, float v, const bf16_t* bias, const ResT* residual) {
  if (bias != nullptr) v += to_float(bias[row]);
  if (residual != nullptr) v += to_float(residual[row]);
  store(out + row, v);
}

// Consumers: rows [row_begin, row_end) of out from pages `page` .. `page + NPAGES - 1` (their first
// k_len columns in all) and the staged input. A K-split part gets out = its row of the partial
// buffer and no bias or residual. With
// ROWS >= warps, warp w owns rows w + j*warps; with fewer rows, kWarpsPerRow warps share a row and
// add up through shared memory in order. Warps meet only on the ring's barriers (and, for shared
// rows, once at the end).
template <int DEPTH, int SLOT_BYTES, int XS, int ROWS, int PC, int NPAGES, typename ResT, typename OutT>
__device__ __forceinline__ void linear_task(const Step& s, int task, int work_offset, OutT* out, const bf16_t* bias,
                                            const ResT* residual, int row_begin, int row_end, int k_len,
                                            int page) {
  static_assert(PC % 8 == 0 && NPAGES * PC <= XS, "pages cover the staged input, 16 bytes at a time");
  static_assert(ROWS % kWarps == 0 || kWarps % ROWS == 0, "warps split rows evenly");
  constexpr int kRowsPerWarp = ROWS >= kWarps ? ROWS / kWarps : 1;
  constexpr int kWarpsPerRow = ROWS >= kWarps ? 1 : kWarps / ROWS;
  const u32 xs = shared_address(s.smem + work_offset + LinearWork<XS>::kXs);
  float* scratch = reinterpret_cast<float*>(s.smem + work_offset + LinearWork<XS>::kScratch);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, seg = warp % kWarpsPerRow;
  float acc[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) acc[j] = 0.f;
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p) {
    page_ready<DEPTH, SLOT_BYTES>(s, page + p, task);
    const u32 wt = Ring<DEPTH, SLOT_BYTES>::page(s, page + p);
    const int cols = min(PC, k_len - p * PC);    // the page holds these columns; past them, stale bytes
#pragma unroll 4
    for (int c = (seg * 32 + lane) * 8; c < cols; c += kWarpsPerRow * 256) {
      const float4 xa = lds128f(xs + (p * PC + c) * 4), xb = lds128f(xs + (p * PC + c + 4) * 4);
      const float x8[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        const int r = kWarpsPerRow == 1 ? warp + j * kWarps : warp / kWarpsPerRow;
        float wf[8];
        unpack8(lds128(wt + (r * PC + c) * 2), wf);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j] = fmaf(wf[e], x8[e], acc[j]);
      }
    }
    page_release<DEPTH, SLOT_BYTES>(s, page + p);
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
    consumer_sync();                 // the previous task's shared-row sums are read
    if (lane == 0) scratch[warp] = v;
    consumer_sync();
    const int row = row_begin + threadIdx.x;
    if (threadIdx.x < ROWS && row < row_end) {
      float t = 0.f;
      for (int i = 0; i < kWarpsPerRow; ++i) t += scratch[threadIdx.x * kWarpsPerRow + i];
      finish_row(out, row, t, bias, residual);
    }
  }
}

// Rows [row_begin, row_end) of out = the sum of the k_split partial rows, added in part order
// (so the result does not depend on which part finished first), + bias + residual.
template <typename ResT, typename OutT>
__device__ __forceinline__ void linear_combine(const Step& s, const Waits& waits, int task, OutT* out,
                                               const float* partial, int n, int k_split, const bf16_t* bias,
                                               const ResT* residual, int row_begin, int row_end) {
  if (waits.n > 0) wait_all(s, waits, task);
  for (int row = row_begin + threadIdx.x; row < row_end; row += kConsumerThreads) {
    float v = 0.f;
    for (int j = 0; j < k_split; ++j) v += partial[(size_t)j * n + row];
    finish_row(out, row, v, bias, residual);
  }
}

}  // namespace adamk
