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
#include "ring.cuh"
#include "sync.cuh"
#include "tagged.cuh"

namespace adamk {

enum Prologue { kPlain = 0, kRmsNorm = 1, kSiluMul = 2 };

// One weight page of a linear task: ROWS x PC bf16, row-major (smem.linear_page_bytes).
template <int ROWS, int PC>
struct WeightPage {
  static constexpr int kBytes = ROWS * PC * 2;
};

// A linear op's work area (smem.linear_work_bytes): the input columns of its K-chunk, padded to
// whole pages (zeros past the chunk), and the scratch of reductions (one float per warp) or, for an
// input merged from a split attention, its COEF merge weights.
template <int XS, int COEF = 0>
struct LinearWork {
  static constexpr int kXs = 0;                // float[XS]: the prologue-applied input slice
  static constexpr int kScratch = XS * 4;      // float[max(32, COEF)]
  static constexpr int kBytes = kScratch + (COEF > 32 ? COEF : 32) * 4;
};

// Consumers: xs[0, XS) = prologue(in)[k0, k0 + k_len), zero past k_len; once for a run of tasks of
// one op and K-part. Every thread issues its whole share of loads (up to kBatch Vec4 at a time)
// before it waits for the first, so staging costs about one round trip to L2, and waiting for the
// producers of a tagged input is part of it (a retry requests the stale Vec4 of the batch again).
// RMSNorm walks the whole row of K for its sum of squares (xs holds in * norm_w, scaled by 1/rms
// once the sum is known). Starts with a consumer barrier
// (the previous run is done with xs) and ends with one (xs is complete).
template <int XS, int K, int PROLOGUE, typename InT>
__device__ __forceinline__ void linear_input(const Step& s, int work_offset, const InT* in, const InT* in2,
                                             const bf16_t* norm_w, float eps, int k0, int k_len, int task) {
  static_assert(XS % 8 == 0 && K % 8 == 0, "pages read the input 8 columns at a time");
  constexpr bool kNorm = PROLOGUE == kRmsNorm, kSilu = PROLOGUE == kSiluMul;
  constexpr int kStride = 4 * kConsumerThreads;           // elements of one pass of all consumers
  constexpr int kSpan = kNorm ? K : XS;                   // elements the staging walks
  constexpr int kIters = (kSpan + kStride - 1) / kStride;
  constexpr int kBatch = kSilu ? 4 : 8;                   // Vec4 loads in flight per thread and input
  using W = LinearWork<XS>;
  check_smem(s, work_offset + W::kBytes, task);
  float* xs = smem_at<float>(work_offset + W::kXs);
  float* scratch = smem_at<float>(work_offset + W::kScratch);
  trace_mark(s, task, 0);
  consumer_sync();
  const int base = kNorm ? 0 : k0, valid = kNorm ? K : k_len;   // walk index i reads in[base + i]
  float ss = 0.f;
#pragma unroll 1
  for (int b0 = 0; b0 < kIters; b0 += kBatch) {
    Vec4<InT> a[kBatch], g[kBatch];
    Vec4<bf16_t> nw[kBatch];
    auto at = [&](int b) { return (b0 + b) * kStride + 4 * threadIdx.x; };     // walk index of Vec4 b
    auto has = [&](int b) { return b0 + b < kIters && at(b) < valid; };
    // a retry requests again only the stale Vec4 (every SM spins on these lines at once)
    auto request = [&](bool retry) {
      u32 tag;
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (has(b)) {
          if (!retry || a[b].first_stale(s, in + base + at(b), tag)) a[b].load(in + base + at(b));
          if constexpr (kSilu)
            if (!retry || g[b].first_stale(s, in2 + base + at(b), tag)) g[b].load(in2 + base + at(b));
        }
    };
    request(false);
#pragma unroll
    for (int b = 0; b < kBatch; ++b)
      if (kNorm && has(b)) nw[b].load(norm_w + at(b));
    await_words(s, task, [&](u32& tag) -> const tagged_t* {
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (has(b)) {
          if (const tagged_t* p = a[b].first_stale(s, in + base + at(b), tag)) return p;
          if constexpr (kSilu)
            if (const tagged_t* p = g[b].first_stale(s, in2 + base + at(b), tag)) return p;
        }
      return nullptr;
    }, [&] { request(true); });
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
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
          float w[4];
          nw[b].get(w);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            ss += v[e] * v[e];
            v[e] *= w[e];
          }
        }
      }
      const int j = kNorm ? i - k0 : i;                  // its column of xs
      if (!kNorm || (j >= 0 && j < k_len)) *reinterpret_cast<float4*>(xs + j) = make_float4(v[0], v[1], v[2], v[3]);
    }
  }
  if constexpr (kNorm) {
    for (int j = k_len + 4 * threadIdx.x; j < XS; j += kStride)
      *reinterpret_cast<float4*>(xs + j) = make_float4(0.f, 0.f, 0.f, 0.f);
    const float inv_rms = rsqrtf(block_sum(ss, scratch) / K + eps);   // its barriers order the xs writes
    for (int j = 4 * threadIdx.x; j < k_len; j += kStride) {
      float4* p = reinterpret_cast<float4*>(xs + j);
      const float4 v = *p;
      *p = make_float4(v.x * inv_rms, v.y * inv_rms, v.z * inv_rms, v.w * inv_rms);
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
// buffer and no bias or residual. With ROWS >= warps, warp w owns page rows w + j*warps; with fewer
// rows, kWarpsPerRow warps share a row and add up through shared memory in order. Warps meet only on
// the ring's barriers (and, for shared rows, once at the end). GATED: page rows [0, ROWS/2) are W's,
// [ROWS/2, ROWS) W2's, so warp w's rows j and j + kOutPerWarp are the gate and up of one output row.
//
// PAGED (a plain tagged input, such as a down projection's: kinds/linear.py `paged_input`): the
// task stages its input itself, page by page, when `stage` (the first task of a run; the others
// find xs complete): page p's input columns are awaited just before page p is used, and page
// p + 1's are requested before page p's columns are written. A down projection's input is the
// whole SwiGLU output, which every SM stages; awaited whole, its last rows (the gate's last tasks)
// held every page of the ring, so the slots freed and the last pages were requested only after
// all of it; now the pages whose columns are ready are used as those columns arrive.
template <typename R, int XS, int ROWS, int PC, int NPAGES, bool GATED = false, bool PAGED = false, typename ResT,
          typename OutT>
__device__ __forceinline__ void linear_task(const Step& s, int task, int work_offset, OutT* out, const bf16_t* bias,
                                            const ResT* residual, int row_begin, int row_end, int k_len,
                                            int page, const tagged_t* in = nullptr, int k0 = 0, bool stage = false) {
  static_assert(PC % 8 == 0 && NPAGES * PC <= XS, "pages cover the staged input, 16 bytes at a time");
  static_assert(ROWS % kWarps == 0 || kWarps % ROWS == 0, "warps split rows evenly");
  static_assert(WeightPage<ROWS, PC>::kBytes <= R::kSlotBytes, "a page fits its ring slot");
  static_assert(!GATED || (ROWS / 2) % kWarps == 0, "a warp pairs each gate row with the same up row");
  constexpr int kRowsPerWarp = ROWS >= kWarps ? ROWS / kWarps : 1;
  constexpr int kWarpsPerRow = ROWS >= kWarps ? 1 : kWarps / ROWS;
  constexpr int kOutPerWarp = GATED ? kRowsPerWarp / 2 : kRowsPerWarp;   // output rows a warp finishes
  const u32 xs = shared_address(smem_at(work_offset + LinearWork<XS>::kXs));
  float* scratch = smem_at<float>(work_offset + LinearWork<XS>::kScratch);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, seg = warp % kWarpsPerRow;
  // The rows whose sums this thread finishes, and their addends, requested now.
  Addend<ResT> add[kOutPerWarp];
#pragma unroll
  for (int j = 0; j < kOutPerWarp; ++j) {
    const int row = kWarpsPerRow == 1 ? row_begin + warp + j * kWarps : row_begin + threadIdx.x;
    const bool finishes = kWarpsPerRow == 1 ? lane == 0 : threadIdx.x < ROWS;
    if (finishes && row < row_end) add[j].load(bias, residual, row);
  }
  float acc[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) acc[j] = 0.f;
  // PAGED: this thread's Vec4s of a page's input columns: columns p * PC + 4 * (tid + i * threads).
  constexpr int kVecs = (PC + 4 * kConsumerThreads - 1) / (4 * kConsumerThreads);
  Vec4<tagged_t> cur[PAGED ? kVecs : 1], next[PAGED ? kVecs : 1];
  auto column = [&](int p, int i) { return p * PC + 4 * ((int)threadIdx.x + i * kConsumerThreads); };
  auto has = [&](int p, int i) { return p < NPAGES && column(p, i) < min((p + 1) * PC, k_len); };
  auto request = [&](int p, Vec4<tagged_t>* v, bool retry) {   // a retry requests the stale Vec4 again
    u32 tag;
#pragma unroll
    for (int i = 0; i < kVecs; ++i)
      if (has(p, i) && (!retry || v[i].first_stale(s, in + k0 + column(p, i), tag))) v[i].load(in + k0 + column(p, i));
  };
  if constexpr (PAGED) {
    if (stage) {
      check_smem(s, work_offset + LinearWork<XS>::kBytes, task);
      consumer_sync();               // the previous run is done with xs
      request(0, cur, false);
    }
  }
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p) {
    if constexpr (PAGED) {
      if (stage) {
        await_words(s, task, [&](u32& tag) -> const tagged_t* {
#pragma unroll
          for (int i = 0; i < kVecs; ++i)
            if (has(p, i))
              if (const tagged_t* w = cur[i].first_stale(s, in + k0 + column(p, i), tag)) return w;
          return nullptr;
        }, [&] { request(p, cur, true); });
        request(p + 1, next, false);
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
    const int cols = min(PC, k_len - p * PC);    // the page holds these columns (then zero padding)
    // A warp takes 256 columns at a time, each lane columns c1 = 4 lane and c2 = c1 + 128 of them:
    // its input reads are 16 bytes at a 16-byte stride (conflict-free), its weight reads 8 bytes at
    // an 8-byte stride. (8 adjacent columns per lane read the fp32 input at a 32-byte stride: 2-way
    // bank conflicts on every input load.) The input is zero past k_len; past `cols` the page is
    // zero padding, not read.
#pragma unroll 4
    for (int b = seg * 256; b < cols; b += kWarpsPerRow * 256) {
      const int c1 = b + 4 * lane, c2 = c1 + 128;
      const bool h1 = c1 < cols, h2 = c2 < cols;
      const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 xa = h1 ? lds128f(xs + (p * PC + c1) * 4) : zero, xb = h2 ? lds128f(xs + (p * PC + c2) * 4) : zero;
      const float x8[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        const int r = kWarpsPerRow == 1 ? warp + j * kWarps : warp / kWarpsPerRow;
        float wf[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (h1) unpack4(lds64(wt + (r * PC + c1) * 2), wf);
        if (h2) unpack4(lds64(wt + (r * PC + c2) * 2), wf + 4);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[j] = fmaf(wf[e], x8[e], acc[j]);
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
  if constexpr (kWarpsPerRow == 1) {
#pragma unroll
    for (int j = 0; j < kOutPerWarp; ++j) {
      float v = warp_sum(acc[j]);
      if constexpr (GATED) v = silu(v) * warp_sum(acc[j + kOutPerWarp]);
      const int row = row_begin + warp + j * kWarps;
      if (lane == 0 && row < row_end) store(s, out + row, v + add[j].value(s, bias, residual, row, task));
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
      store(s, out + row, t + add[0].value(s, bias, residual, row, task));
    }
  }
}

// Rows [row_begin, row_end) of out = the sum of the KSPLIT partial rows (tagged), added in part
// order (so the result does not depend on which part finished first), + bias + residual.
template <int KSPLIT, typename ResT, typename OutT>
__device__ __forceinline__ void linear_combine(const Step& s, int task, OutT* out, const tagged_t* partial, int n,
                                               const bf16_t* bias, const ResT* residual, int row_begin,
                                               int row_end) {
  trace_mark(s, task, 0);
  for (int row = row_begin + threadIdx.x; row < row_end; row += kConsumerThreads) {
    u64 w[KSPLIT];
    auto request = [&] {
#pragma unroll
      for (int j = 0; j < KSPLIT; ++j) w[j] = load_word(partial + (size_t)j * n + row);
    };
    request();
    Addend<ResT> add;
    add.load(bias, residual, row);
    await_words(s, task, [&](u32& tag) -> const tagged_t* {
#pragma unroll
      for (int j = 0; j < KSPLIT; ++j)
        if ((tag = tag_of(w[j])) != s.epoch) return partial + (size_t)j * n + row;
      return nullptr;
    }, request);
    float v = 0.f;
#pragma unroll
    for (int j = 0; j < KSPLIT; ++j) v += value_of(w[j]);
    store(s, out + row, v + add.value(s, bias, residual, row, task));
  }
  trace_mark(s, task, 1);
}

}  // namespace adamk
