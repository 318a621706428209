// linear_mma.cuh — a linear task for a batch of B sequences (2..16) on the tensor cores: the tile's
// rows x one K-chunk of out[seq] = prologue(in[seq]) @ W^T (+bias) (+residual[seq]) for every
// sequence from one read of its weight pages, as mma.m16n8k16 (bf16 in, float accumulators): the
// page's rows are M (16 per m-tile), the sequences N (8 per n-tile), the columns K. The input is
// staged as bf16 [B][XS] by linear_input / attention_input with their B, the pages come through the
// ring as for one sequence (linear_produce, the same packed weights), and the task's sums leave
// through the scratch in warp order, as linear_task's do, so a result does not depend on timing.
#pragma once
#include "common.cuh"
#include "linear.cuh"
#include "mma.cuh"
#include "ring.cuh"
#include "sync.cuh"
#include "tagged.cuh"

namespace adamk {

// Consumers: rows [row_begin, row_end) of every sequence's out row (`n` apart: the op's N) from
// pages `page` .. `page + NPAGES - 1` (their first k_len columns in all) and the staged inputs.
// Each warp takes 32 columns of a page at a time: lane 4g + t loads 16 bytes (8 columns from
// 8t) of page rows g and g + 8 of each m-tile and of sequence g of each n-tile, and the two k16
// steps of those 32 columns use them as the fragments' k slots (2t, 2t+1) = columns (8t, 8t+1),
// (2t+8, 2t+9) = (8t+2, 8t+3), then (8t+4 .. 8t+7): a permutation of k, the same for the weight
// and the input, so each product pairs a weight with its own input column. Columns past the page's
// (`cols`, a multiple of 8) and rows or sequences past the tile's are zero, never loaded. GATED: page
// rows [0, ROWS/2) are W's, [ROWS/2, ROWS) W2's: output row r is silu(row r) * row r + ROWS/2.
//
// PAIRS: out also has a bf16 shadow (`pairs`, tagged.cuh paired_t): a thread finishes two adjacent
// rows and stores their pair word after their float words (the tile's rows and n even: tile.py).
template <typename R, int XS, int ROWS, int PC, int NPAGES, int B, bool GATED = false, bool PAIRS = false,
          typename ResT, typename OutT>
__device__ __forceinline__ void linear_task_batch(const Step& s, int task, int work_offset, OutT* out, int n,
                                                  const bf16_t* bias, const ResT* residual, int row_begin,
                                                  int row_end, int k_len, int page, paired_t* pairs = nullptr) {
  static_assert(B >= 2 && B <= 16, "a batch of 2..16 sequences: at most two n-tiles of 8");
  static_assert(PC % 8 == 0 && NPAGES * PC <= XS && XS % 8 == 0, "16-byte loads of the pages and the input");
  static_assert(ROWS >= 1 && ROWS <= ADAMK_MAX_TILE_ROWS, "at most ADAMK_MAX_TILE_ROWS page rows: two m-tiles");
  static_assert(!GATED || ROWS % 2 == 0, "a gated page holds as many rows of each weight");
  static_assert(WeightPage<ROWS, PC>::kBytes <= R::kSlotBytes, "a page fits its ring slot");
  constexpr int kM = (ROWS + 15) / 16;                   // m-tiles of page rows
  constexpr int kN = (B + 7) / 8;                        // n-tiles of sequences
  constexpr int kOut = GATED ? ROWS / 2 : ROWS;          // output rows the task finishes
  constexpr int kR = pow2_at_least(ROWS);                // a warp's rows in the scratch
  constexpr int kE = PAIRS ? 2 : 1;                      // adjacent output rows a thread finishes
  static_assert(kOut % kE == 0, "a bf16 shadow's pairs are whole within a tile");
  using W = LinearWork<XS, 0, ROWS, B>;
  constexpr int kHalf = kWarps / 2;                      // warps w and w + kHalf are added first
  static_assert(kWarps % 2 == 0 && W::kPerSeq >= kHalf * kR, "the scratch holds half the warps' sums of every sequence");
  const u32 xs = shared_address(smem_at(work_offset + W::kXs));
  float* scratch = smem_at<float>(work_offset + W::kScratch);    // [warp % kHalf][kR][B]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float acc[kM][kN][4];
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int j = 0; j < kN; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p) {
    R::wait_page(s, page + p, task);
    if (p == 0) trace_mark(s, task, 3);
    const u32 wt = R::page(page + p);
    const int cols = min(PC, k_len - p * PC);    // the page holds these columns (then zero padding)
#pragma unroll 1
    for (int c0 = warp * 32; c0 < cols; c0 += kWarps * 32) {
      const int col = c0 + 8 * t;
      const bool has = col < cols;
      uint4 a[kM][2], x[kN];
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = 16 * m + 8 * h + g;
          a[m][h] = has && row < ROWS ? lds128(wt + (row * PC + col) * 2) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const int seq = 8 * j + g;
        x[j] = has && seq < B ? lds128(xs + (seq * XS + p * PC + col) * 2) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kN; ++j) {
          const u32 a0[4] = {a[m][0].x, a[m][1].x, a[m][0].y, a[m][1].y}, b0[2] = {x[j].x, x[j].y};
          mma_16816(acc[m][j], a0, b0, acc[m][j]);
          const u32 a1[4] = {a[m][0].z, a[m][1].z, a[m][0].w, a[m][1].w}, b1[2] = {x[j].z, x[j].w};
          mma_16816(acc[m][j], a1, b1, acc[m][j]);
        }
    }
    R::release(page + p);
  }
  // The warps' sums through the scratch (lane 4g + t holds rows g, g + 8 of sequences 2t, 2t + 1 of
  // each tile): the upper half's warps store theirs, each lower warp w adds its own to warp w + kHalf's
  // in place, then each (row, sequence) of the tile is summed over the kHalf pairs in warp order. A
  // fixed order, so a result does not depend on timing.
  consumer_sync();                   // the previous task's sums are read
#pragma unroll
  for (int half = 1; half >= 0; --half) {
    if (warp / kHalf == half)
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kN; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = 16 * m + g + 8 * (e / 2), seq = 8 * j + 2 * t + e % 2;
            float& slot = scratch[((warp % kHalf) * kR + row) * B + seq];
            if (row < ROWS && seq < B) slot = half ? acc[m][j][e] : acc[m][j][e] + slot;
          }
    consumer_sync();
  }
  for (int i = threadIdx.x; i < kOut / kE * B; i += kConsumerThreads) {
    const int seq = i / (kOut / kE), r = kE * (i % (kOut / kE)), row = row_begin + r;
    if (row >= row_end) continue;      // PAIRS: row_end is even, so row + 1 is inside too
    auto row_sum = [&](int rr) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < kHalf; ++w) v += scratch[(w * kR + rr) * B + seq];
      return v;
    };
    const ResT* res = residual != nullptr ? residual + (size_t)seq * n : nullptr;
    float v[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      v[e] = row_sum(r + e);
      if constexpr (GATED) v[e] = silu(v[e]) * row_sum(r + e + kOut);
      Addend<ResT> add;
      add.load(bias, res, row + e);
      v[e] += add.value(s, bias, res, row + e, task);
      store(s, out + (size_t)seq * n + row + e, v[e]);
    }
    if constexpr (PAIRS) store_pair(s, pairs + (size_t)seq * n + row, v[0], v[1]);
  }
}

}  // namespace adamk
