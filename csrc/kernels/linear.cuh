// linear.cuh — linear tasks: a tile of rows x one K-chunk of out = prologue(in) @ W^T (+bias) (+residual),
// or of a gated linear out = silu(prologue(in) @ W^T) * (prologue(in) @ W2^T) (GATED: its pages hold the
// tile's rows of W, then the same rows of W2, so a warp has both sums of its output rows at hand).
// The producer warp streams the tile's weights through the ring as NPAGES pages of ROWS x PC (stored
// page by page, one bulk copy each: linear_produce); the
// consumer warps stage the prologue-applied input once per run of an op's tasks (linear_input), then
// every task accumulates its rows over its pages (linear_task). Plus the fixed-order combine of K-split
// parts. Inputs that are activations are tagged words (tagged.cuh): reading them is the task's wait.
#pragma once
#include "common.cuh"
#include "mma.cuh"
#include "ring.cuh"
#include "sync.cuh"
#include "tagged.cuh"

namespace adamk {

enum Prologue { kPlain = 0, kRmsNorm = 1, kSiluMul = 2 };

// Rows of a linear task's pages at most (adamk/config.py MAX_TILE_ROWS, emitted into kernel.cu):
// linear_task reduces a task's row sums across a warp's lanes.
#if !defined(ADAMK_MAX_TILE_ROWS)
#error "ADAMK_MAX_TILE_ROWS comes from the generated kernel (adamk/config.py)"
#endif
static_assert(ADAMK_MAX_TILE_ROWS <= 32, "a task's row sums fit one warp's lanes");

// One weight page of a linear task: ROWS x PC bf16, row-major (smem.linear_page_bytes).
template <int ROWS, int PC>
struct WeightPage {
  static constexpr int kBytes = ROWS * PC * 2;
};

// A linear op's work area (smem.linear_work_bytes): the input columns of its K-chunk, padded to
// whole pages (zeros past the chunk), and the scratch: one float per warp of block reductions, for
// an input merged from a split attention its COEF merge weights, or every warp's sums of the task's
// ROWS page rows (linear_task: each warp sums its slice of the columns). A batch of B sequences
// holds B of each: the inputs as bf16 [B][XS] (the tensor cores' operand, linear_mma.cuh), then B
// scratches, each of half the warps' sums (linear_task_batch adds its warps in pairs first: a whole
// scratch per warp kept a SwiGLU's gated task out of the SM's 227 KB at batch 8).
template <int XS, int COEF = 0, int ROWS = 0, int B = 1>
struct LinearWork {
  static constexpr int kXs = 0;                // float[XS], or for a batch bf16[B][XS]
  static constexpr int kInputBytes = B == 1 ? 4 : 2;
  static constexpr int kScratch = B * XS * kInputBytes;   // float[B][kPerSeq]
  static constexpr int kFloats = COEF > 32 ? COEF : 32;
  static constexpr int kSums = (B == 1 ? kWarps : kWarps / 2) * pow2_at_least(ROWS);
  static constexpr int kPerSeq = kFloats > kSums ? kFloats : kSums;
  static constexpr int kBytes = kScratch + B * kPerSeq * 4;
};

// Where sequence `seq`'s staged input columns go: float for one sequence, bf16 for a batch.
template <int XS, int B>
__device__ __forceinline__ void store_xs(int work_offset, int seq, int j, const float v[4]) {
  if constexpr (B == 1) {
    *reinterpret_cast<float4*>(smem_at<float>(work_offset) + j) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    *reinterpret_cast<uint2*>(smem_at<bf16_t>(work_offset) + (size_t)seq * XS + j) =
        make_uint2(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]));
  }
}

// A batch's plain input from a bf16 shadow (down's K-part of a gated output, o_proj's one-part
// attention output) when its XS columns are at most two Vec4 a thread: G sequences' rows a trip,
// every load of the trip out before the first wait, where linear_input's walk takes one sequence a
// trip. Grouping an RMSNorm's rows as well made the walk alone 11% faster and the step slower
// (docs/perf.md v42: its rows land one sequence after another, and the group waits for the last).
// Starts with a consumer barrier and ends with one, as linear_input.
constexpr int kPairRowsGroup = 2;   // sequences a trip: 4 Vec4 a thread

template <int XS, int K, int B, int G>
__device__ __forceinline__ void linear_input_pairs(const Step& s, int work_offset, const paired_t* in, int k0,
                                                   int k_len, int task) {
  constexpr int kStride = 4 * kConsumerThreads;
  constexpr int kIters = (XS + kStride - 1) / kStride;
  static_assert(kIters <= 2 && B > 1 && G >= 1 && XS % 8 == 0, "a batch's rows of two Vec4 a thread at most");
  using W = LinearWork<XS, 0, 0, B>;
  check_smem(s, work_offset + W::kBytes, task);
  trace_mark(s, task, 0);
  consumer_sync();
#pragma unroll 1
  for (int g0 = 0; g0 < B; g0 += G) {
    Vec4<paired_t> a[G][kIters];
    auto at = [&](int b) { return b * kStride + 4 * (int)threadIdx.x; };   // its column of xs
    auto has = [&](int q, int b) { return g0 + q < B && at(b) < k_len; };
    auto src = [&](int q, int b) { return in + (size_t)(g0 + q) * K + k0 + at(b); };
#pragma unroll
    for (int q = 0; q < G; ++q)
#pragma unroll
      for (int b = 0; b < kIters; ++b)
        if (has(q, b)) a[q][b].load(src(q, b));
    await_trip<G * kIters>(s, task, [&](int i) { return has(i / kIters, i % kIters); },
                           [&](int i) -> Vec4<paired_t>& { return a[i / kIters][i % kIters]; },
                           [&](int i) { return src(i / kIters, i % kIters); });
#pragma unroll
    for (int q = 0; q < G; ++q) {
      if (g0 + q >= B) break;
#pragma unroll
      for (int b = 0; b < kIters; ++b) {
        if (at(b) >= XS) continue;
        float v[4] = {0.f, 0.f, 0.f, 0.f};                     // zero past k_len
        if (has(q, b)) a[q][b].get(v);
        store_xs<XS, B>(work_offset + W::kXs, g0 + q, at(b), v);
      }
    }
  }
  consumer_sync();
  trace_mark(s, task, 1);
}

constexpr int kNormRowsTrip = 8;           // Vec4 a lane requests at once (registers)
__host__ __device__ constexpr bool norm_rows_fit(int k) { return k % 4 == 0 && k <= 16 * 4 * 32; }   // the norm weight's registers

// A batch's RMSNorm rows from a bf16 shadow, staged whole (XS == K: one K-part, so k0 = 0 and k_len = K,
// tile.py), a warp a sequence: warp w stages sequences w, w + kWarps, ...; its lanes request the row a
// trip of kTrip Vec4 a lane at a time, sum its squares, and the warp's shuffles give the row's sum, so a
// sequence takes no block barrier and each warp starts on its row as soon as that row has landed, where
// linear_input's walk takes the sequences one after another with a block reduction each (its chain of
// barriers and round trips bounds a batch's staging points: docs/perf.md v42-v44, v49). The norm
// weight is requested once, with the first trip, into registers (the same columns for every row of the
// lane). x is exact in xs (bf16 already); x * w / rms is rounded once, in the scale pass over the lane's
// own columns. Starts with a consumer barrier (the previous run is done with xs) and ends with one.
template <int XS, int K, int B>
__device__ __forceinline__ void linear_input_norm_rows(const Step& s, int work_offset, const paired_t* in,
                                                       const bf16_t* norm_w, float eps, int task) {
  constexpr int kVecs = (K + 4 * 32 - 1) / (4 * 32);      // Vec4 of a row a lane, at most
  constexpr int kTrip = kVecs < kNormRowsTrip ? kVecs : kNormRowsTrip;
  static_assert(XS == K && norm_rows_fit(K) && B > 1, "a batch's whole rows, 16 Vec4 a lane at most");
  using W = LinearWork<XS, 0, 0, B>;
  check_smem(s, work_offset + W::kBytes, task);
  trace_mark(s, task, 0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto at = [&](int c) { return 4 * (c * 32 + lane); };   // the column of a lane's Vec4 c
  auto has = [&](int c) { return c < kVecs && at(c) < K; };
  Vec4<bf16_t> w[kVecs];
#pragma unroll
  for (int c = 0; c < kVecs; ++c)
    if (has(c)) w[c].load(norm_w + at(c));
  consumer_sync();
#pragma unroll 1
  for (int seq = warp; seq < B; seq += kWarps) {
    const paired_t* x = in + (size_t)seq * K;
    float ss = 0.f;
#pragma unroll 1
    for (int c0 = 0; c0 < kVecs; c0 += kTrip) {
      Vec4<paired_t> a[kTrip];
#pragma unroll
      for (int c = 0; c < kTrip; ++c)
        if (has(c0 + c)) a[c].load(x + at(c0 + c));
      await_trip<kTrip>(s, task, [&](int c) { return has(c0 + c); }, [&](int c) -> Vec4<paired_t>& { return a[c]; },
                        [&](int c) { return x + at(c0 + c); });
#pragma unroll
      for (int c = 0; c < kTrip; ++c)
        if (has(c0 + c)) {
          float v[4];
          a[c].get(v);
#pragma unroll
          for (int e = 0; e < 4; ++e) ss += v[e] * v[e];
          store_xs<XS, B>(work_offset + W::kXs, seq, at(c0 + c), v);
        }
    }
    const float inv_rms = rsqrtf(warp_sum(ss) / K + eps);
#pragma unroll
    for (int c = 0; c < kVecs; ++c)        // the lane's own columns: no other lane wrote them
      if (has(c)) {
        float v[4], nw[4];
        unpack4(*reinterpret_cast<const uint2*>(smem_at<bf16_t>(work_offset + W::kXs) + (size_t)seq * XS + at(c)), v);
        w[c].get(nw);
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] *= inv_rms * nw[e];
        store_xs<XS, B>(work_offset + W::kXs, seq, at(c), v);
      }
  }
  consumer_sync();
  trace_mark(s, task, 1);
}

// Consumers: xs[0, XS) = prologue(in)[k0, k0 + k_len), zero past k_len; once for a run of tasks of
// one op and K-part. Every thread issues its whole share of loads (up to kBatch Vec4 at a time)
// before it waits for the first, so staging costs about one round trip to L2, and waiting for the
// producers of a tagged input is part of it (a retry requests the stale Vec4 of the batch again).
// RMSNorm walks the whole row of K for its sum of squares (xs holds in * norm_w, scaled by 1/rms
// once the sum is known). A batch of B sequences (inputs [B][K]) stages each sequence's row in
// turn, with its own sum of squares, into its row of xs (bf16: store_xs). From a bf16 shadow
// (paired_t: tagged.cuh; an RMSNorm's or a plain input's) a batch stages the input itself (already
// bf16, so exact in xs); an RMSNorm applies the norm weight with the scale, so an element is rounded
// to bf16 once after x * w / rms (from tagged floats twice: x * w, then the scale). Starts with a
// consumer barrier (the previous run is done with xs) and ends with one (xs is complete).
template <int XS, int K, int PROLOGUE, typename InT, int B = 1>
__device__ __forceinline__ void linear_input(const Step& s, int work_offset, const InT* in, const InT* in2,
                                             const bf16_t* norm_w, float eps, int k0, int k_len, int task) {
  static_assert(XS % 8 == 0 && K % 8 == 0, "pages read the input 8 columns at a time");
  constexpr bool kNorm = PROLOGUE == kRmsNorm, kSilu = PROLOGUE == kSiluMul;
  constexpr bool kPaired = is_paired<InT>::value;        // a batch's bf16 shadow (tile.py pair_values)
  constexpr bool kLateWeight = kPaired && kNorm;         // the norm weight applied with the scale
  static_assert(!kPaired || (B > 1 && !kSilu), "a bf16 shadow is a batch's RMSNorm or plain input (tile.py)");
  constexpr int kStride = 4 * kConsumerThreads;           // elements of one pass of all consumers
  constexpr int kSpan = kNorm ? K : XS;                   // elements the staging walks
  constexpr int kIters = (kSpan + kStride - 1) / kStride;
  constexpr int kBatch = kSilu ? 4 : 8;                   // Vec4 loads in flight per thread and input
  // A batch whose rows take one trip each requests the next sequence's row as soon as this one's has
  // landed, so its round trip to L2 (~1 us under the weight stream) overlaps this row's reduction and
  // stores; the rows still land one sequence at a time (more at once was slower: docs/perf.md v36).
  // At most two Vec4 a trip (a row of 2048 or fewer): a longer row's second set of loads would hold
  // up to 8 more Vec4 in registers across the reduction's barriers.
  constexpr bool kAhead = B > 1 && kIters <= 2;
  if constexpr (kPaired && !kNorm && kIters <= 2) {   // a batch's plain rows from a shadow: a group a trip
    linear_input_pairs<XS, K, B, (kPairRowsGroup < B ? kPairRowsGroup : B)>(s, work_offset, in, k0, k_len, task);
    return;
  }
  if constexpr (kPaired && kNorm && XS == K && norm_rows_fit(K)) {   // a batch's whole RMSNorm rows: a warp a sequence
    linear_input_norm_rows<XS, K, B>(s, work_offset, in, norm_w, eps, task);
    return;
  }
  constexpr int kVecs = kAhead ? kIters : kBatch;         // Vec4 of one trip
  using W = LinearWork<XS, 0, 0, B>;
  check_smem(s, work_offset + W::kBytes, task);
  float* scratch = smem_at<float>(work_offset + W::kScratch);
  trace_mark(s, task, 0);
  consumer_sync();
  const int base = kNorm ? 0 : k0, valid = kNorm ? K : k_len;   // walk index i reads in[base + i]
  Vec4<InT> ahead[kAhead ? kVecs : 1], ahead2[kAhead ? kVecs : 1];   // kAhead: the next sequence's trip
  // kLateWeight: this thread's columns of the norm weight for every sequence's scale pass, requested
  // now (after the reduction's barriers the first sequence would wait a round trip for them); rows
  // of more than 2048 load them in the scale pass, as the registers they would hold across the walk
  // are more than two Vec4.
  constexpr int kScaleVecs = (XS + kStride - 1) / kStride;
  constexpr bool kEarlyWeight = kLateWeight && kScaleVecs <= 2;
  Vec4<bf16_t> scale_w[kEarlyWeight ? kScaleVecs : 1];
  // An RMSNorm row staged whole (XS == K: one K-part, so k0 = 0 and k_len = K, tile.py) of at most two
  // Vec4 a thread keeps this thread's elements in registers through the reduction: the scale pass
  // then owns the same columns, so it neither re-reads xs nor rounds an element twice, and the sum
  // takes one barrier (each sequence's own scratch, no reuse to guard). A walk is issue-bound
  // (docs/perf.md v42-v44).
  constexpr bool kKeep = kNorm && XS == K && kIters <= 2;
  static_assert(!kKeep || kScaleVecs == kIters, "the scale pass owns the walk's columns");
  if constexpr (kEarlyWeight) {
#pragma unroll
    for (int c = 0; c < kScaleVecs; ++c)
      if (4 * (int)threadIdx.x + c * kStride < k_len) scale_w[c].load(norm_w + k0 + 4 * threadIdx.x + c * kStride);
  }
  auto request_ahead = [&](int seq) {
#pragma unroll
    for (int b = 0; b < kVecs; ++b) {
      const int i = b * kStride + 4 * threadIdx.x;
      if (b < kIters && i < valid) {
        ahead[b].load(in + (size_t)seq * K + base + i);
        if constexpr (kSilu) ahead2[b].load(in2 + (size_t)seq * K + base + i);
      }
    }
  };
  if constexpr (kAhead) request_ahead(0);
#pragma unroll 1
  for (int seq = 0; seq < B; ++seq) {
    const InT* x = in + (size_t)seq * K;
    const InT* x2 = in2 + (size_t)seq * K;
    float ss = 0.f;
    float kept[kKeep ? kIters : 1][4];      // kKeep: this thread's elements (x, or x * w at batch 1)
#pragma unroll 1
    for (int b0 = 0; b0 < kIters; b0 += kBatch) {
      Vec4<InT> a[kVecs], g[kVecs];
      Vec4<bf16_t> nw[kVecs];
      auto at = [&](int b) { return (b0 + b) * kStride + 4 * threadIdx.x; };     // walk index of Vec4 b
      auto has = [&](int b) { return b0 + b < kIters && at(b) < valid; };
      if constexpr (kAhead) {          // its loads went out with the sequence before's
#pragma unroll
        for (int b = 0; b < kVecs; ++b) {
          a[b] = ahead[b];
          g[b] = ahead2[b];
        }
      } else {
#pragma unroll
        for (int b = 0; b < kVecs; ++b)
          if (has(b)) {
            a[b].load(x + base + at(b));
            if constexpr (kSilu) g[b].load(x2 + base + at(b));
          }
      }
#pragma unroll
      for (int b = 0; b < kVecs; ++b)
        if (kNorm && !kLateWeight && has(b)) nw[b].load(norm_w + at(b));
      // the trip: a's Vec4s, then silu_mul's second input's (g)
      auto vec = [&](int i) -> Vec4<InT>& { return i < kVecs ? a[i] : g[i - kVecs]; };
      auto src = [&](int i) { return i < kVecs ? x + base + at(i) : x2 + base + at(i - kVecs); };
      await_trip<kSilu ? 2 * kVecs : kVecs>(s, task, [&](int i) { return has(i < kVecs ? i : i - kVecs); }, vec, src);
      if constexpr (kAhead)
        if (seq + 1 < B) request_ahead(seq + 1);
#pragma unroll
      for (int b = 0; b < kVecs; ++b) {
        const int i = at(b);
        if (b0 + b >= kIters || i >= kSpan) continue;
        float v[4] = {0.f, 0.f, 0.f, 0.f};
        if (i < valid) {
          a[b].get(v);
          if constexpr (kSilu) {
            float up[4];
            g[b].get(up);
#pragma unroll
            for (int e = 0; e < 4; ++e) v[e] = silu(v[e]) * up[e];
          }
          if constexpr (kNorm) {
            float w[4] = {1.f, 1.f, 1.f, 1.f};
            if constexpr (!kLateWeight) nw[b].get(w);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              ss += v[e] * v[e];
              v[e] *= w[e];
            }
          }
        }
        const int j = kNorm ? i - k0 : i;                  // its column of xs
        if constexpr (kKeep) {
#pragma unroll
          for (int e = 0; e < 4; ++e) kept[b0 + b][e] = v[e];
        } else if (!kNorm || (j >= 0 && j < k_len)) {
          store_xs<XS, B>(work_offset + W::kXs, seq, j, v);
        }
      }
    }
    if constexpr (kKeep) {
      const float inv_rms = rsqrtf(block_sum_once(ss, scratch + seq * W::kPerSeq) / K + eps);
#pragma unroll
      for (int c = 0; c < kIters; ++c) {
        const int j = 4 * threadIdx.x + c * kStride;
        if (j < K) {
          float w[4] = {1.f, 1.f, 1.f, 1.f};
          if constexpr (kLateWeight) scale_w[c].get(w);
#pragma unroll
          for (int e = 0; e < 4; ++e) kept[c][e] *= inv_rms * w[e];
          store_xs<XS, B>(work_offset + W::kXs, seq, j, kept[c]);
        }
      }
    } else if constexpr (kNorm) {
      const float zero[4] = {0.f, 0.f, 0.f, 0.f};
      for (int j = k_len + 4 * threadIdx.x; j < XS; j += kStride) store_xs<XS, B>(work_offset + W::kXs, seq, j, zero);
      const float inv_rms = rsqrtf(block_sum(ss, scratch) / K + eps);   // its barriers order the xs writes
      auto scale = [&](int j, const float w[4]) {
        float v[4];
        if constexpr (B == 1) {
          const float4 f = *reinterpret_cast<const float4*>(smem_at<float>(work_offset + W::kXs) + j);
          v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
        } else {   // rounded to bf16 twice (before and after the scale): well within the step's 1e-2
          unpack4(*reinterpret_cast<const uint2*>(smem_at<bf16_t>(work_offset + W::kXs) + (size_t)seq * XS + j), v);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] *= inv_rms * w[e];
        store_xs<XS, B>(work_offset + W::kXs, seq, j, v);
      };
      if constexpr (kEarlyWeight) {
#pragma unroll
        for (int c = 0; c < kScaleVecs; ++c) {
          const int j = 4 * threadIdx.x + c * kStride;
          if (j < k_len) {
            float w[4];
            scale_w[c].get(w);
            scale(j, w);
          }
        }
      } else {
        for (int j = 4 * threadIdx.x; j < k_len; j += kStride) {
          float w[4] = {1.f, 1.f, 1.f, 1.f};
          if constexpr (kLateWeight) {
            Vec4<bf16_t> nw;
            nw.load(norm_w + k0 + j);
            nw.get(w);
          }
          scale(j, w);
        }
      }
    }
  }
  consumer_sync();
  trace_mark(s, task, 1);
}

// Producer: task (row_begin, k_index)'s NPAGES pages, as pages `page`, `page + 1`, ... of the ring, each
// one bulk copy. The runtime stores a linear's weights page by page (runtime/weights.py `pack_pages`,
// the manifest's `packed_weights`): page (b, c) holds rows [b * kHalf, (b + 1) * kHalf) of W (then, GATED,
// the same rows of W2) x the c-th page of columns (PC per page, NPAGES per K-chunk, zeros past the
// weight) as ROWS x PC contiguous bf16, at page index b * col_pages + c. So a page is one copy of
// ROWS * PC * 2 bytes: the copy engine spends ~40 ns per copy, and a page of one copy per row (16-32
// rows of 1-2 KB) held an SM's stream to ~25 GB/s, under its share of DRAM (docs/perf.md, v19).
template <typename R, int ROWS, int PC, int NPAGES, bool GATED = false>
__device__ __forceinline__ void linear_produce(const Step& s, const bf16_t* packed, int col_pages, int row_begin,
                                               int k_index, int page, int task) {
  static_assert(!GATED || ROWS % 2 == 0, "a gated page holds as many rows of each weight");
  static_assert(ROWS * PC * 2 <= R::kSlotBytes, "a page fits its ring slot");
  constexpr int kHalf = GATED ? ROWS / 2 : ROWS;          // rows of one weight per page
  constexpr int kPage = ROWS * PC;                        // elements
  const bf16_t* src = packed + ((size_t)(row_begin / kHalf) * col_pages + (size_t)k_index * NPAGES) * kPage;
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p)
    R::fill(s, page + p, task, 1, kPage * 2, [&](int) { return src + (size_t)p * kPage; }, [](int) { return 0u; });
}

// bias[row] + residual[row] of a finished row. `load` issues the reads before the task's pages, so
// their latency hides under the weights; `value` waits (a tagged residual: for this step's word).
template <typename ResT>
struct Addend {
  bf16_t bias_raw = 0;
  ResT res_raw = 0;
  __device__ __forceinline__ void load(const bf16_t* bias, const ResT* residual, int row) {
    if (bias != nullptr) bias_raw = bias[row];
    if (residual != nullptr) {
      if constexpr (sizeof(ResT) == 8) res_raw = load_word(residual + row);
      else res_raw = residual[row];
    }
  }
  __device__ __forceinline__ float value(const Step& s, const bf16_t* bias, const ResT* residual, int row,
                                         int task) const {
    float v = bias != nullptr ? to_float(bias_raw) : 0.f;
    if (residual != nullptr) {
      if constexpr (sizeof(ResT) == 8) v += ready_value(s, residual + row, res_raw, task);
      else v += to_float(res_raw);
    }
    return v;
  }
};

// Consumers: rows [row_begin, row_end) of out from pages `page` .. `page + NPAGES - 1` (their first
// k_len columns in all) and the staged input. A K-split part gets out = its row of the partial
// buffer and no bias or residual. Every warp takes a slice of each page's columns across all its
// rows, so the input is read from shared memory once per page (a warp per row read it once per warp:
// half the shared-memory traffic of a page, docs/perf.md v20); the task's row sums are reduced
// across lanes (warp_reduce_rows), then across warps through the scratch, in warp order. Warps meet
// on the ring's barriers and twice at the task's end. GATED: page rows [0, ROWS/2) are W's,
// [ROWS/2, ROWS) W2's: output row r is silu(row r) * row r + ROWS/2.
//
// PAGED (a plain tagged input, such as a down projection's: kinds/linear.py `paged_input`): the
// task stages its input itself, page by page, when `stage` (the first task of a run; the others
// find xs complete): page p's input columns are awaited just before page p is used, and page
// p + 1's are requested before page p's columns are written. A down projection's input is the
// whole SwiGLU output, which every SM stages; awaited whole, its last rows (the gate's last tasks)
// held every page of the ring, so the slots freed and the last pages were requested only after
// all of it; now the pages whose columns are ready are used as those columns arrive.
//
// PAIRS: out also has a bf16 shadow (`pairs`, tagged.cuh paired_t) that a paged reader stages (a down
// projection reading the gated output: half the bytes, docs/perf.md v39): warp 0's even lane stores the
// pair word of its row and the next (the tile's rows and n even: tile.py). A PAGED input may be such a
// shadow (InT paired_t).
template <typename R, int XS, int ROWS, int PC, int NPAGES, bool GATED = false, bool PAGED = false,
          bool PAIRS = false, typename InT = tagged_t, typename ResT, typename OutT>
__device__ __forceinline__ void linear_task(const Step& s, int task, int work_offset, OutT* out, const bf16_t* bias,
                                            const ResT* residual, int row_begin, int row_end, int k_len,
                                            int page, const InT* in = nullptr, int k0 = 0, bool stage = false,
                                            paired_t* pairs = nullptr) {
  static_assert(PC % 8 == 0 && NPAGES * PC <= XS, "pages cover the staged input, 16 bytes at a time");
  static_assert(WeightPage<ROWS, PC>::kBytes <= R::kSlotBytes, "a page fits its ring slot");
  static_assert(ROWS >= 1 && ROWS <= ADAMK_MAX_TILE_ROWS, "a warp's row sums reduce by halves: at most ADAMK_MAX_TILE_ROWS rows");
  static_assert(!GATED || ROWS % 2 == 0, "a gated page holds as many rows of each weight");
  // Each thread takes kV adjacent columns of every page row, the block kSweep columns at a time: a
  // warp's reads are 32 x kV contiguous bf16 of a row and 32 x kV floats of the input (conflict-free),
  // the input is read once per page, and every weight byte once.
  constexpr int kV = PC % (4 * kConsumerThreads) == 0 ? 4 : PC % (2 * kConsumerThreads) == 0 ? 2 : 1;
  constexpr int kSweep = kV * kConsumerThreads;
  constexpr int kOut = GATED ? ROWS / 2 : ROWS;          // output rows the task finishes
  constexpr int kR = pow2_at_least(ROWS);                // rows reduced (zero past ROWS)
  using W = LinearWork<XS, 0, ROWS>;
  const u32 xs = shared_address(smem_at(work_offset + W::kXs));
  float* scratch = smem_at<float>(work_offset + W::kScratch);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // The row this thread finishes, and its addends, requested now.
  Addend<ResT> add;
  const int my_row = row_begin + (int)threadIdx.x;
  if (threadIdx.x < kOut && my_row < row_end) add.load(bias, residual, my_row);
  float acc[kR];
#pragma unroll
  for (int j = 0; j < kR; ++j) acc[j] = 0.f;
  // PAGED: this thread's Vec4s of a page's input columns: columns p * PC + 4 * (tid + i * threads).
  constexpr int kVecs = (PC + 4 * kConsumerThreads - 1) / (4 * kConsumerThreads);
  Vec4<InT> cur[PAGED ? kVecs : 1], next[PAGED ? kVecs : 1];
  auto column = [&](int p, int i) { return p * PC + 4 * ((int)threadIdx.x + i * kConsumerThreads); };
  auto has = [&](int p, int i) { return p < NPAGES && column(p, i) < min((p + 1) * PC, k_len); };
  auto request = [&](int p, Vec4<InT>* v) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i)
      if (has(p, i)) v[i].load(in + k0 + column(p, i));
  };
  if constexpr (PAGED) {
    if (stage) {
      check_smem(s, work_offset + W::kBytes, task);
      consumer_sync();               // the previous run is done with xs
      request(0, cur);
    }
  }
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p) {
    if constexpr (PAGED) {
      if (stage) {
        await_trip<kVecs>(s, task, [&](int i) { return has(p, i); }, [&](int i) -> Vec4<InT>& { return cur[i]; },
                          [&](int i) { return in + k0 + column(p, i); });
        request(p + 1, next);
#pragma unroll
        for (int i = 0; i < kVecs; ++i)
          if (has(p, i)) {
            float v[4];
            cur[i].get(v);
            sts128f(xs + column(p, i) * 4, v);
          }
        consumer_sync();             // page p's columns of xs are complete
        if (p == 0) trace_mark(s, task, 1);
      }
    }
    R::wait_page(s, page + p, task);
    if (p == 0) trace_mark(s, task, 3);
    const u32 wt = R::page(page + p);
    const int cols = min(PC, k_len - p * PC);    // the page holds these columns (then zero padding, not read)
#pragma unroll
    for (int b = 0; b < PC; b += kSweep) {
      const int c = b + kV * (int)threadIdx.x;
      if (c < cols) {                            // cols is a multiple of 8, so of kV
        float x[kV];
        lds_floats<kV>(xs + (p * PC + c) * 4, x);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          float w[kV];
          lds_bf16<kV>(wt + (r * PC + c) * 2, w);
#pragma unroll
          for (int e = 0; e < kV; ++e) acc[r] = fmaf(w[e], x[e], acc[r]);
        }
      }
    }
    R::release(page + p);
    if constexpr (PAGED) {
      if (stage) {
#pragma unroll
        for (int i = 0; i < kVecs; ++i) cur[i] = next[i];
      }
    }
  }
  // Row sums: the warp's 32 lanes by halves (a lane keeps half its rows and adds its partner's sums of
  // them), then the warps' sums through shared memory, added in warp order.
  warp_reduce_rows<kR>(acc);
  const float sum = acc[0];
  consumer_sync();                   // the previous task's sums are read
  if (lane % (32 / kR) == 0) scratch[warp * kR + warp_row_of<kR>(lane)] = sum;
  consumer_sync();
  float v = 0.f;
  if (threadIdx.x < kOut && my_row < row_end) {
    auto row_sum = [&](int r) {
      float t = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) t += scratch[w * kR + r];
      return t;
    };
    v = row_sum(threadIdx.x);
    if constexpr (GATED) v = silu(v) * row_sum(threadIdx.x + kOut);
    v += add.value(s, bias, residual, my_row, task);
    store(s, out + my_row, v);
  }
  if constexpr (PAIRS) {
    static_assert(kOut % 2 == 0, "a bf16 shadow's pairs are whole within a tile");
    if (threadIdx.x < 32) {          // warp 0 finishes the task's rows (kOut <= 32)
      const float next_row = shfl_xor(v, 1);
      if (threadIdx.x % 2 == 0 && threadIdx.x < kOut && my_row < row_end) store_pair(s, pairs + my_row, v, next_row);
    }
  }
}

// Rows [row_begin, row_end) of out = the sum of the KSPLIT partial rows (tagged), added in part
// order (so the result does not depend on which part finished first), + bias + residual. A batch's
// B sequences (out and residual [B][n], partial [KSPLIT][B][n]) are one walk over (sequence, row),
// a consumer thread taking every 256th output, so the function is one loop for any batch. PAIRS:
// out also has a bf16 shadow (`pairs`, tagged.cuh paired_t), so a thread finishes two adjacent
// rows, one 16-byte load per part, and stores their float words and then their pair word (the
// rows and n even: tile.py pairs only such outputs).
template <int KSPLIT, int B = 1, bool PAIRS = false, typename ResT, typename OutT>
__device__ __forceinline__ void linear_combine(const Step& s, int task, OutT* out, const tagged_t* partial, int n,
                                               const bf16_t* bias, const ResT* residual, int row_begin,
                                               int row_end, paired_t* pairs = nullptr) {
  constexpr int kE = PAIRS ? 2 : 1;                 // adjacent rows a thread finishes
  trace_mark(s, task, 0);
  const int rows = (row_end - row_begin) / kE;
  for (int i = threadIdx.x; i < B * rows; i += kConsumerThreads) {
    const int seq = B == 1 ? 0 : i / rows, row = row_begin + kE * (B == 1 ? i : i % rows);
    const tagged_t* part = partial + (size_t)seq * n + row;          // part j: j * B * n further
    const ResT* res = residual != nullptr ? residual + (size_t)seq * n : nullptr;
    u64 w[KSPLIT][kE];
    auto request = [&] {
#pragma unroll
      for (int j = 0; j < KSPLIT; ++j) {
        if constexpr (PAIRS) load_words2(part + (size_t)j * B * n, w[j][0], w[j][1]);
        else w[j][0] = load_word(part + (size_t)j * B * n);
      }
    };
    request();
    Addend<ResT> add[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) add[e].load(bias, res, row + e);
    await_words(s, task, [&](u32& tag) -> const tagged_t* {
#pragma unroll
      for (int j = 0; j < KSPLIT; ++j)
#pragma unroll
        for (int e = 0; e < kE; ++e)
          if ((tag = tag_of(w[j][e])) != s.epoch) return part + (size_t)j * B * n + e;
      return nullptr;
    }, request);
    float v[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      v[e] = 0.f;
#pragma unroll
      for (int j = 0; j < KSPLIT; ++j) v[e] += value_of(w[j][e]);
      v[e] += add[e].value(s, bias, res, row + e, task);
      store(s, out + (size_t)seq * n + row + e, v[e]);
    }
    if constexpr (PAIRS) store_pair(s, pairs + (size_t)seq * n + row, v[0], v[1]);
  }
  trace_mark(s, task, 1);
}

}  // namespace adamk
