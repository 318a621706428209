// attention.cuh — decode attention: P query heads of one KV head (q_head .. q_head + P - 1, all in
// its GQA group) over positions 0..pos, or, split over the sequence (flash-decoding), over part
// `split` of them, plus the merge of the parts (by the reading linear's input staging, or by a
// combine task). The P heads share every cached row a task reads, so a KV head's rows cross the
// memory system once per part, not once per query head. The cached rows come through the SM's ring
// (ring.cuh) like a linear's weights: they do not depend on this step, so the producer streams them
// from the launch on, in program order, and the task finds them in shared memory. Part 0 of the
// task holding the group's first query head also appends the new (rotated) k and v at `pos`; every
// task rotates the new k itself, so no task reads a cache row another task writes this step. q, k,
// v and the outputs are tagged words.
#pragma once
#include "common.cuh"
#include "linear.cuh"
#include "mma.cuh"
#include "sync.cuh"
#include "tagged.cuh"

namespace adamk {

__host__ __device__ constexpr int cmin(int a, int b) { return a < b ? a : b; }
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

constexpr float kEmpty = -1e30f;   // max score of no positions: finite, so merging two empty states stays finite

#if !defined(ADAMK_ATTENTION_ROWS_PER_LANE)
#error "ADAMK_ATTENTION_ROWS_PER_LANE comes from the generated kernel (adamk/smem.py ATTENTION_ROWS_PER_LANE)"
#endif
// Cached rows a lane group scores per trip of the loop: independent chains (loads, dot products,
// shuffles) in flight together, and one merge into the running state per head per trip.
constexpr int kRowsPerLane = ADAMK_ATTENTION_ROWS_PER_LANE;

// A task's work area (smem.attention_work_bytes): P query heads, the new k and v rows, and the
// per-warp partials of the end.
template <int HD, int P>
struct AttentionWork {
  static constexpr int kQs = 0;                    // float[P][HD]: rotated queries, scaled by scale * log2 e
  static constexpr int kKnew = P * HD * 4;         // float[HD]: the new key row, rounded to bf16
  static constexpr int kVnew = kKnew + HD * 4;     // float[HD]: the new value row
  static constexpr int kPart = kVnew + HD * 4;     // float[kWarps][P][HD + 2]: per-warp acc, max, sum
  static constexpr int kBytes = kPart + kWarps * P * (HD + 2) * 4;
};

// One ring page of an attention part (smem.attention_page_rows): the K rows of ROWS cached
// positions ([ROWS][HD] bf16), then their V rows.
template <int HD, int ROWS>
struct AttentionPage {
  static constexpr int kK = 0;
  static constexpr int kV = ROWS * HD * 2;
  static constexpr int kBytes = 2 * ROWS * HD * 2;
};

// Merge online-softmax state (m2, l2, a2) into (m, l, a); scores are in base 2.
__device__ __forceinline__ void merge_state(float& m, float& l, float a[8], float m2, float l2, const float a2[8]) {
  const float mn = fmaxf(m, m2), c1 = fast_exp2(m - mn), c2 = fast_exp2(m2 - mn);
  l = l * c1 + l2 * c2;
#pragma unroll
  for (int e = 0; e < 8; ++e) a[e] = a[e] * c1 + a2[e] * c2;
  m = mn;
}

// The rotate-half RoPE of the pair (x[i], x[i + half]) at position pos: (x[i]', x[i + half]').
__device__ __forceinline__ void rope_pair(float& lo, float& hi, int i, const float* inv_freq, int pos) {
  if (inv_freq == nullptr) return;
  float s, c;
  sincosf((float)pos * inv_freq[i], &s, &c);
  const float a = lo, b = hi;
  lo = a * c - b * s;
  hi = b * c + a * s;
}

// The positions [t_begin, t_end) of part `split` of n_splits: an equal share of 0..pos, the last
// ones shorter.
__device__ __forceinline__ void attention_part(int pos, int split, int n_splits, int& t_begin, int& t_end) {
  const int share = (pos + n_splits) / n_splits;
  t_begin = min(split * share, pos + 1);
  t_end = min(t_begin + share, pos + 1);
}

// Producer: the cached rows of part `split` (positions [t_begin, min(t_end, pos)); row pos is this
// step's, which the task takes from k and v) as pages `page` .. `page + NPAGES - 1` of the ring, ROWS
// positions each: two bulk copies per page (a KV head's rows are contiguous), none for a page past
// the part's rows. NPAGES covers a part at the longest sequence (smem.attention_pages).
template <typename R, int HD, int ROWS, int NPAGES>
__device__ __forceinline__ void attention_produce(const Step& s, const bf16_t* k_cache, const bf16_t* v_cache,
                                                  int q_head, int group, int max_seq, int split, int n_splits,
                                                  int page, int task) {
  using Page = AttentionPage<HD, ROWS>;
  static_assert(Page::kBytes <= R::kSlotBytes, "an attention page fits its ring slot");
  int t_begin, t_end;
  attention_part(s.pos, split, n_splits, t_begin, t_end);
  const size_t head = (size_t)(q_head / group) * max_seq;
  const int cached = min(t_end, s.pos);
#pragma unroll 1
  for (int p = 0; p < NPAGES; ++p) {
    const int t0 = t_begin + p * ROWS, n = max(0, min(ROWS, cached - t0));
    R::fill(s, page + p, task, n > 0 ? 2 : 0, n * HD * 2,
            [&](int i) { return (i == 0 ? k_cache : v_cache) + (head + t0) * HD; },
            [&](int i) { return (u32)(i == 0 ? Page::kK : Page::kV); });
  }
}

// W u32 words of shared memory at `addr`: 16-byte loads where W is a multiple of 4 (`addr` then
// 16-byte aligned), 8-byte loads otherwise (`addr` 8-byte aligned).
template <int W>
__device__ __forceinline__ void lds_words(u32 addr, u32 out[W]) {
  static_assert(W % 2 == 0, "whole 8-byte loads");
  if constexpr (W % 4 != 0) {
#pragma unroll
    for (int i = 0; i < W / 2; ++i) {
      const uint2 v = lds64(addr + 8 * i);
      out[2 * i] = v.x;
      out[2 * i + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < W / 4; ++i) {
      const uint4 v = lds128(addr + 16 * i);
      out[4 * i] = v.x;
      out[4 * i + 1] = v.y;
      out[4 * i + 2] = v.z;
      out[4 * i + 3] = v.w;
    }
  }
}

// attention_task's loop over its cached rows on the tensor cores (HD a multiple of 32, at most 128; pages
// of whole 16-row tiles): each warp
// takes 16 rows of a page at a time and computes S = Q K^T and then O += P V with mma.m16n8k16, the
// P query heads as M (rows g < P of 16; the others zero), keeping an online-softmax state per head;
// then it folds in row pos (the task's own k and v) if the part holds it, and leaves its state in
// `part` as [warp][P][HD + 2] = (acc, max, sum), as the CUDA-core loop does. Lane 4g + t holds head
// g's max, its share of the sum and acc for dims [t HD/4, (t+1) HD/4). The k index of S runs over
// the dims in another order (dims t HD/4 + 4c + {0, 1}, {2, 3} in chunk c, the same for Q and K), so
// a lane reads HD/4 contiguous dims of its K row; the n index of P V is dim g HD/8 + c in n-tile c,
// so a lane reads HD/8 contiguous dims of each of its 4 V rows. q and the weights p are rounded to
// bf16 for the MMA (accumulation in float); rows past the page's cached ones never reach it.
template <typename R, int HD, int P, int ROWS, int NPAGES>
__device__ __forceinline__ void attention_rows_mma(const Step& s, int task, int page, int t_begin, int t_end,
                                                   const float* qs, const float* knew, const float* vnew,
                                                   float* part) {
  static_assert(HD % 32 == 0 && ROWS % 16 == 0 && P <= 8, "16-row tiles of a page; 8-byte loads of K and V");
  using Page = AttentionPage<HD, ROWS>;
  constexpr int kChunks = HD / 16;     // k chunks of S = Q K^T
  constexpr int kTiles = HD / 8;       // n tiles of O = P V
  constexpr int kQuarter = HD / 4;     // dims of a lane's K row, and of its acc
  constexpr int kEighth = HD / 8;      // dims of each of a lane's V rows
  constexpr int kStride = HD + 2;
  const float kNegInf = -__int_as_float(0x7f800000);
  const int pos = s.pos, warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool mine = g < P;
  u32 qa[kChunks][2];                  // Q's A fragments: row g, k slots (2t, 2t+1) and (2t+8, 2t+9)
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const float* q = qs + (mine ? g : 0) * HD + t * kQuarter + 4 * c;
    qa[c][0] = mine ? pack_bf16(q[0], q[1]) : 0u;
    qa[c][1] = mine ? pack_bf16(q[2], q[3]) : 0u;
  }
  float m = kEmpty, l = 0.f, o[kTiles][4];    // o[c][e], e < 2: head g, dim (2t + e) HD/8 + c
#pragma unroll
  for (int c = 0; c < kTiles; ++c) o[c][0] = o[c][1] = o[c][2] = o[c][3] = 0.f;
#pragma unroll 1
  for (int pg = 0; pg < NPAGES; ++pg) {
    R::wait_page(s, page + pg, task);
    if (pg == 0) trace_mark(s, task, 3);       // its data in: the first page of cached rows landed
    const u32 rows = R::page(page + pg);
    const int valid = max(0, min(ROWS, min(t_end, pos) - (t_begin + pg * ROWS)));   // the page's cached rows
#pragma unroll 1
    for (int r0 = warp * 16; r0 < valid; r0 += kWarps * 16) {
      float sc[2][4];                  // S of rows r0 .. r0+7 and r0+8 .. r0+15 (n = row g of each)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        u32 kw[kQuarter / 2];          // dims t HD/4 + 2i, +1 of row r0 + 8h + g
        lds_words<kQuarter / 2>(rows + Page::kK + ((r0 + 8 * h + g) * HD + t * kQuarter) * 2, kw);
        sc[h][0] = sc[h][1] = sc[h][2] = sc[h][3] = 0.f;
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
          const u32 a[4] = {qa[c][0], 0u, qa[c][1], 0u}, b[2] = {kw[2 * c], kw[2 * c + 1]};
          mma_16816(sc[h], a, b, sc[h]);
        }
      }
      // head g's scores of rows r0 + 2t, +1, r0 + 8 + 2t, +1; the tile's max over the group's 4 lanes
      const int row[4] = {r0 + 2 * t, r0 + 2 * t + 1, r0 + 8 + 2 * t, r0 + 9 + 2 * t};
      float sv[4] = {sc[0][0], sc[0][1], sc[1][0], sc[1][1]}, mt = kEmpty;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sv[i] = row[i] < valid ? sv[i] : kNegInf;     // past the cached rows: weight 0 (stale bytes)
        mt = fmaxf(mt, sv[i]);
      }
      mt = fmaxf(mt, shfl_xor(mt, 1));
      mt = fmaxf(mt, shfl_xor(mt, 2));
      const float mn = fmaxf(m, mt), corr = fast_exp2(m - mn);
      float p[4];                      // as the MMA takes them (bf16), so the sum weighs what O adds
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = to_float(to_bf16(fast_exp2(sv[i] - mn)));
      l = l * corr + ((p[0] + p[1]) + (p[2] + p[3]));
      m = mn;
#pragma unroll
      for (int c = 0; c < kTiles; ++c) {
        o[c][0] *= corr;
        o[c][1] *= corr;
      }
      u32 vw[4][kEighth / 2];          // dims g HD/8 .. of rows row[0..3] (in the page); zero past the cached ones
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        lds_words<kEighth / 2>(rows + Page::kV + (row[i] * HD + g * kEighth) * 2, vw[i]);
#pragma unroll
        for (int w = 0; w < kEighth / 2; ++w) vw[i][w] = row[i] < valid ? vw[i][w] : 0u;   // stale bytes
      }
      const u32 pa[4] = {pack_bf16(p[0], p[1]), 0u, pack_bf16(p[2], p[3]), 0u};
#pragma unroll
      for (int c = 0; c < kTiles; ++c) {
        const u32 b[2] = {pair_of_halves(vw[0][c / 2], vw[1][c / 2], c % 2),
                          pair_of_halves(vw[2][c / 2], vw[3][c / 2], c % 2)};
        mma_16816(o[c], pa, b, o[c]);
      }
    }
    R::release(page + pg);
  }
  if (t_begin <= pos && pos < t_end && warp == 0) {   // row pos: the task's own k and v (float)
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < kQuarter; ++i) d = fmaf(qs[(mine ? g : 0) * HD + t * kQuarter + i], knew[t * kQuarter + i], d);
    d += shfl_xor(d, 1);
    d += shfl_xor(d, 2);
    const float mn = fmaxf(m, d), corr = fast_exp2(m - mn), pn = fast_exp2(d - mn);
    l = l * corr + (t == 0 ? pn : 0.f);
    m = mn;
#pragma unroll
    for (int c = 0; c < kTiles; ++c) {
      o[c][0] = fmaf(o[c][0], corr, pn * vnew[(2 * t) * kEighth + c]);
      o[c][1] = fmaf(o[c][1], corr, pn * vnew[(2 * t + 1) * kEighth + c]);
    }
  }
  l += shfl_xor(l, 1);
  l += shfl_xor(l, 2);
  if (mine) {
    float* state = part + (warp * P + g) * kStride;
#pragma unroll
    for (int c = 0; c < kTiles; ++c) {
      state[(2 * t) * kEighth + c] = o[c][0];
      state[(2 * t + 1) * kEighth + c] = o[c][1];
    }
    if (t == 0) {
      state[HD] = m;
      state[HD + 1] = l;
    }
  }
}

// Elements i and i + HD/2 of a query head's row or the new key, (lo, hi), rotated at pos and left as
// the loop reads them: a query's in q_row scaled by q_scale (scale * log2 e), the key's in k_row
// rounded to bf16, and appended to the cache at pos where the task appends (`kc`: the KV head's rows).
template <int HD>
__device__ __forceinline__ void rotate_into(float* q_row, float* k_row, int i, float lo, float hi, bool is_q,
                                            float q_scale, const float* inv_freq, int pos, bool appends, bf16_t* kc) {
  constexpr int half = HD / 2;
  rope_pair(lo, hi, i, inv_freq, pos);
  if (is_q) {
    q_row[i] = lo * q_scale;
    q_row[i + half] = hi * q_scale;
  } else {
    const bf16_t kl = to_bf16(lo), kh = to_bf16(hi);
    k_row[i] = to_float(kl);
    k_row[i + half] = to_float(kh);
    if (appends) {
      kc[(size_t)pos * HD + i] = kl;
      kc[(size_t)pos * HD + i + half] = kh;
    }
  }
}

// Qwen3's per-head RMSNorm of q and k (attention_task with NORM): the P query heads in qs and the
// new key row in knew, staged raw, each normalised over its HD values (weights q_norm, k_norm: bf16
// [HD]), rotated, then left as the loop reads them: q scaled by scale * log2 e, k rounded to bf16
// (and appended to the cache at pos where the task appends). `scratch`: P + 1 floats.
template <int HD, int P>
__device__ __forceinline__ void attention_head_norms(float* qs, float* knew, float* scratch, const bf16_t* q_norm,
                                                     const bf16_t* k_norm, float eps, const float* inv_freq,
                                                     int pos, float q_scale, bool appends, bf16_t* kc) {
  static_assert(P + 1 <= kWarps, "a warp per head's sum of squares");
  constexpr int half = HD / 2;
  consumer_sync();                   // the raw heads are staged
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp <= P) {                   // warp p < P: query head p; warp P: the key
    const float* h = warp < P ? qs + warp * HD : knew;
    float ss = 0.f;
    for (int d = lane; d < HD; d += 32) ss += h[d] * h[d];
    ss = warp_sum(ss);
    if (lane == 0) scratch[warp] = rsqrtf(ss / HD + eps);
  }
  consumer_sync();
  for (int t = threadIdx.x; t < (P + 1) * half; t += kConsumerThreads) {
    const int head = t / half, i = t % half;
    const bool is_q = head < P;
    float* h = is_q ? qs + head * HD : knew;
    const bf16_t* w = is_q ? q_norm : k_norm;
    const float lo = h[i] * scratch[head] * to_float(w[i]), hi = h[i + half] * scratch[head] * to_float(w[i + half]);
    rotate_into<HD>(h, h, i, lo, hi, is_q, q_scale, inv_freq, pos, appends, kc);
  }
}

// n_splits == 1: out[q_head + p] = softmax(q_p k^T) v for p < P. Otherwise part `split` covers its
// share of positions 0..pos and writes out[(split * num_heads + q_head + p) * (HD + 2)...] =
// (acc[HD], max, sum), unnormalised, for the merge. Its cached rows are ring pages `page` ..
// `page + NPAGES - 1` (attention_produce), in shared memory by the time q, k and v are (the task's
// wait), so its loop reads shared memory only. Each row is read once and scored against the P
// queries (registers: P x 16 floats per lane, hence smem.MAX_HEADS_PER_TASK); each lane group of a
// warp takes kRowsPerLane rows per trip of the loop, kPerTrip rows per warp (not unrolled: a small
// loop body).
//
// PAIRS (unsplit, a batch's o_proj staging its input from a bf16 shadow: tile.py pair_values): out
// also has a shadow `pairs` (tagged.cuh paired_t), so a thread finishes two adjacent elements of a
// head and stores their float words and then their pair word.
template <typename R, int HD, int P, int ROWS, int NPAGES, bool NORM = false, bool PAIRS = false>
__device__ __forceinline__ void attention_task(const Step& s, int task, int work_offset, tagged_t* out,
                                               const tagged_t* q, const tagged_t* k, const tagged_t* v,
                                               bf16_t* k_cache, bf16_t* v_cache, const float* inv_freq, float scale,
                                               int q_head, int group, int max_seq, int num_heads, int split,
                                               int n_splits, int page, const bf16_t* q_norm = nullptr,
                                               const bf16_t* k_norm = nullptr, float norm_eps = 0.f,
                                               paired_t* pairs = nullptr) {
  static_assert(HD % 8 == 0 && HD <= 256, "a cached row is read 16 bytes per lane");
  static_assert(P >= 1, "query heads of one attention task (at most smem.MAX_HEADS_PER_TASK: registers)");
  constexpr int kLanesPerPos = pow2_at_least(HD / 8);   // lanes sharing one cached row
  constexpr int kPosPerWarp = 32 / kLanesPerPos;
  constexpr int kPerTrip = kPosPerWarp * kRowsPerLane;  // rows of one trip of a warp
  constexpr int kStep = kWarps * kPerTrip;              // rows of one trip of all consumer warps
  constexpr int kStride = HD + 2;                       // per-warp partial of a head: acc[HD], m, l
  constexpr float kLog2e = 1.4426950408889634f;
  static_assert(ROWS % kPerTrip == 0, "a warp's rows of a trip lie in one page (smem.attention_page_rows)");
  using Page = AttentionPage<HD, ROWS>;

  check_smem(s, work_offset + AttentionWork<HD, P>::kBytes, task);
  trace_mark(s, task, 0);
  const int pos = s.pos, kv_head = q_head / group, tid = threadIdx.x;
  constexpr int half = HD / 2, kQPairs = P * half;
  using W = AttentionWork<HD, P>;
  float* qs = smem_at<float>(work_offset + W::kQs);
  float* knew = smem_at<float>(work_offset + W::kKnew);
  float* vnew = smem_at<float>(work_offset + W::kVnew);
  float* part = smem_at<float>(work_offset + W::kPart);
  int t_begin, t_end;
  attention_part(pos, split, n_splits, t_begin, t_end);
  bf16_t* kc = k_cache + (size_t)kv_head * max_seq * HD;
  bf16_t* vc = v_cache + (size_t)kv_head * max_seq * HD;

  const int warp = tid / 32, lane = tid % 32;
  const int sub = lane / kLanesPerPos, chunk = lane % kLanesPerPos;
  const bool has_chunk = chunk < HD / 8;

  consumer_sync();   // the previous task of this block is done with the work area
  const bool appends = q_head % group == 0 && split == 0;
  for (int t = tid; t < kQPairs + half + HD; t += kConsumerThreads) {
    // Thread t: the pair (i, i + half) of query head q_head + t / half (t < kQPairs) or of k, or
    // element i of v; its words requested together, then waited for together.
    const bool is_q = t < kQPairs, is_v = t >= kQPairs + half;
    const int i = is_v ? t - kQPairs - half : is_q ? t % half : t - kQPairs;
    const tagged_t* x = is_v ? v + kv_head * HD : is_q ? q + (q_head + t / half) * HD : k + kv_head * HD;
    u64 wa, wb = 0;
    auto request = [&] {
      wa = load_word(x + i);
      if (!is_v) wb = load_word(x + i + half);
    };
    request();
    await_words(s, task, [&](u32& tag) -> const tagged_t* {
      if ((tag = tag_of(wa)) != s.epoch) return x + i;
      if (!is_v && (tag = tag_of(wb)) != s.epoch) return x + i + half;
      return nullptr;
    }, request);
    if (is_v) {
      const bf16_t vb = to_bf16(value_of(wa));
      vnew[i] = to_float(vb);
      if (appends) vc[(size_t)pos * HD + i] = vb;
      continue;
    }
    float lo = value_of(wa), hi = value_of(wb);
    if constexpr (NORM) {            // raw: each head's RMSNorm needs all of it (attention_head_norms)
      float* h = is_q ? qs + (t / half) * HD : knew;
      h[i] = lo;
      h[i + half] = hi;
      continue;
    }
    rotate_into<HD>(qs + (t / half) * HD, knew, i, lo, hi, is_q, scale * kLog2e, inv_freq, pos, appends, kc);
  }
  if constexpr (NORM)
    attention_head_norms<HD, P>(qs, knew, part, q_norm, k_norm, norm_eps, inv_freq, pos, scale * kLog2e, appends, kc);
  consumer_sync();
  trace_mark(s, task, 1);

  // The tensor cores where the page's rows come in 16-row tiles (smem.attention_page_rows) and the
  // accumulators fit the registers; the CUDA-core loop otherwise.
  if constexpr (HD % 32 == 0 && HD <= 128 && ROWS % 16 == 0) {
    attention_rows_mma<R, HD, P, ROWS, NPAGES>(s, task, page, t_begin, t_end, qs, knew, vnew, part);
  } else {
    float qr[P][8], acc[P][8], m[P], l[P];
  #pragma unroll
    for (int p = 0; p < P; ++p) {
      m[p] = kEmpty;
      l[p] = 0.f;
  #pragma unroll
      for (int e = 0; e < 8; ++e) {
        qr[p][e] = has_chunk ? qs[p * HD + chunk * 8 + e] : 0.f;
        acc[p][e] = 0.f;
      }
    }
    // Page by page: its steps of rows (the trip count is uniform across the warp, so the shuffles
    // see every lane), then the warp is done with it.
  #pragma unroll 1
    for (int pg = 0; pg < NPAGES; ++pg) {
      R::wait_page(s, page + pg, task);
      if (pg == 0) trace_mark(s, task, 3);     // its data in: the first page of cached rows landed
      const u32 rows = R::page(page + pg);
      const int t0 = t_begin + pg * ROWS;
  #pragma unroll 1
      for (int r0 = warp * kPerTrip; r0 < ROWS && t0 + r0 < t_end; r0 += kStep) {
        float kf[kRowsPerLane][8], vf[kRowsPerLane][8], score[kRowsPerLane][P];
  #pragma unroll
        for (int u = 0; u < kRowsPerLane; ++u) {
          const int r = r0 + u * kPosPerWarp + sub, t = t0 + r;
          if (has_chunk && t < pos && t < t_end) {        // past the part's copied rows: stale bytes, never read
            unpack8(lds128(rows + Page::kK + (r * HD + chunk * 8) * 2), kf[u]);
            unpack8(lds128(rows + Page::kV + (r * HD + chunk * 8) * 2), vf[u]);
          } else {
  #pragma unroll
            for (int e = 0; e < 8; ++e) {
              kf[u][e] = has_chunk ? knew[chunk * 8 + e] : 0.f;     // row pos; past t_end masked below (finite)
              vf[u][e] = has_chunk ? vnew[chunk * 8 + e] : 0.f;
            }
          }
  #pragma unroll
          for (int p = 0; p < P; ++p) {
            float d = 0.f;
  #pragma unroll
            for (int e = 0; e < 8; ++e) d = fmaf(qr[p][e], kf[u][e], d);
  #pragma unroll
            for (int off = 1; off < kLanesPerPos; off <<= 1) d += shfl_xor(d, off);
            score[u][p] = t < t_end ? d : -__int_as_float(0x7f800000);   // -inf: a row past the part weighs 0
          }
        }
        // The trip's rows as one state per head (max m2, sum l2, acc a2), merged into the running one.
  #pragma unroll
        for (int p = 0; p < P; ++p) {
          float m2 = kEmpty;
  #pragma unroll
          for (int u = 0; u < kRowsPerLane; ++u) m2 = fmaxf(m2, score[u][p]);
          float l2 = 0.f, a2[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  #pragma unroll
          for (int u = 0; u < kRowsPerLane; ++u) {
            const float c = fast_exp2(score[u][p] - m2);
            l2 += c;
  #pragma unroll
            for (int e = 0; e < 8; ++e) a2[e] = fmaf(c, vf[u][e], a2[e]);
          }
          merge_state(m[p], l[p], acc[p], m2, l2, a2);
        }
      }
      R::release(page + pg);
    }
    // Merge the kPosPerWarp lane groups of this warp, then the warps through shared memory.
  #pragma unroll 1
    for (int off = kLanesPerPos; off < 32; off <<= 1) {
  #pragma unroll
      for (int p = 0; p < P; ++p) {
        float a2[8];
  #pragma unroll
        for (int e = 0; e < 8; ++e) a2[e] = shfl_xor(acc[p][e], off);
        const float m2 = shfl_xor(m[p], off), l2 = shfl_xor(l[p], off);
        merge_state(m[p], l[p], acc[p], m2, l2, a2);
      }
    }
  #pragma unroll
    for (int p = 0; p < P; ++p) {
      float* mine = part + (warp * P + p) * kStride;
      if (sub == 0 && has_chunk) {
  #pragma unroll
        for (int e = 0; e < 8; ++e) mine[chunk * 8 + e] = acc[p][e];
      }
      if (lane == 0) {
        mine[HD] = m[p];
        mine[HD + 1] = l[p];
      }
    }
  }
  consumer_sync();
  // Each head's elements merged over the warps' partials; PAIRS (unsplit, tile.py): elements d and
  // d + 1 of a head a thread, for their pair word.
  static_assert(!PAIRS || HD % 2 == 0, "a shadow's pairs are whole within a head");
  constexpr int kE = PAIRS ? 2 : 1;
  for (int pd = kE * tid; pd < P * HD; pd += kE * kConsumerThreads) {
    const int p = pd / HD, d = pd % HD;
    float mx = kEmpty;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, part[(w * P + p) * kStride + HD]);
    float num[kE] = {}, den = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float* pw = part + (w * P + p) * kStride;
      const float c = fast_exp2(pw[HD] - mx);
#pragma unroll
      for (int e = 0; e < kE; ++e) num[e] += pw[d + e] * c;
      den += pw[HD + 1] * c;
    }
    if constexpr (PAIRS) {
      const float val[2] = {num[0] / den, num[1] / den};
      store(s, out + (q_head + p) * HD + d, val[0]);
      store(s, out + (q_head + p) * HD + d + 1, val[1]);
      store_pair(s, pairs + (q_head + p) * HD + d, val[0], val[1]);
    } else if (n_splits == 1) {
      store(s, out + (q_head + p) * HD + d, num[0] / den);
    } else {
      tagged_t* mine_out = out + ((size_t)split * num_heads + q_head + p) * kStride;
      store(s, mine_out + d, num[0]);
      if (d == 0) {
        store(s, mine_out + HD, mx);
        store(s, mine_out + HD + 1, den);
      }
    }
  }
  consumer_sync();   // the work area is reused by the next task on this block
}

// Element d of head h of the attention output, merged from the PARTS parts in part order (for a
// combine task: one element at a time, each part's words read as they come). Part 0 is never
// empty (it holds position 0), so the sum is never zero.
template <int HD, int HEADS, int PARTS>
__device__ __forceinline__ float merged(const Step& s, const tagged_t* partial, int h, int d, int task) {
  constexpr int kStride = HD + 2;
  float mx = kEmpty;
  for (int j = 0; j < PARTS; ++j) {
    const tagged_t* p = partial + ((size_t)j * HEADS + h) * kStride + HD;
    mx = fmaxf(mx, ready_value(s, p, load_word(p), task));
  }
  float num = 0.f, den = 0.f;
  for (int j = 0; j < PARTS; ++j) {
    const tagged_t* p = partial + ((size_t)j * HEADS + h) * kStride;
    const u64 wa = load_word(p + d), wm = load_word(p + HD), wl = load_word(p + HD + 1);
    const float c = fast_exp2(ready_value(s, p + HD, wm, task) - mx);
    num += ready_value(s, p + d, wa, task) * c;
    den += ready_value(s, p + HD + 1, wl, task) * c;
  }
  return num / den;
}

// Heads [head_begin, head_end) of out from the parts (for a split attention whose reader cannot merge).
template <int HD, int HEADS, int PARTS>
__device__ __forceinline__ void attention_combine(const Step& s, int task, tagged_t* out, const tagged_t* partial,
                                                  int head_begin, int head_end) {
  trace_mark(s, task, 0);
  for (int i = threadIdx.x; i < (head_end - head_begin) * HD; i += kConsumerThreads)
    store(s, out + head_begin * HD + i, merged<HD, HEADS, PARTS>(s, partial, head_begin + i / HD, i % HD, task));
  trace_mark(s, task, 1);
}

// Consumers: the input staging of a linear that reads a split attention (prologue attn_combine):
// xs[0, XS) = the merged output's columns [k0, k0 + k_len), zero past them; like linear_input,
// between two consumer barriers, and costing no dependency level of its own. Each thread requests
// the parts' acc words of its first elements and, one thread per head, the parts' (max, sum) words
// together, and waits for them together (one round trip once the parts are written; with more than
// 8 parts the (max, sum) words first, as holding both would spill), then the rest of its elements a
// trip at a time: at most 8 acc words a trip (PARTS, one element, with more parts), as more spilled
// under the kernel's register budget (168 a thread in the 1B model: 512 B at 2048 columns of 4 parts,
// and the staging 3x slower, docs/perf.md v55); the head's thread turns (max, sum) into merge
// weights c_j = 2^(m_j - max) / sum_i l_i 2^(m_i - max) (COEF scratch); each element is then
// sum_j acc_j c_j, in part order.
template <int XS, int HD, int HEADS, int PARTS, int B = 1>
__device__ __forceinline__ void attention_input(const Step& s, int work_offset, const tagged_t* partial, int k0,
                                                int k_len, int task) {
  constexpr int kStride = HD + 2;
  constexpr int kElems = (XS + kConsumerThreads - 1) / kConsumerThreads;   // per thread
  constexpr int kBatch = cmax(1, cmin(kElems, 8 / PARTS));                 // elements with loads in flight
  using W = LinearWork<XS, HEADS * PARTS, 0, B>;
  check_smem(s, work_offset + W::kBytes, task);
  float* coef = smem_at<float>(work_offset + W::kScratch);   // [HEADS][PARTS]
  trace_mark(s, task, 0);
  consumer_sync();
#pragma unroll 1
  for (int seq = 0; seq < B; ++seq) {
    if (seq > 0) consumer_sync();   // the last sequence's merge weights are read
    u64 acc[kBatch][PARTS], wm[PARTS], wl[PARTS];
    auto word = [&](int j, int h, int d) { return partial + ((size_t)(j * B + seq) * HEADS + h) * kStride + d; };
    auto element = [&](int e0, int e, int& h, int& d) {     // false: no element e of batch e0 here
      const int i = (e0 + e) * kConsumerThreads + threadIdx.x;
      h = (k0 + i) / HD;
      d = (k0 + i) % HD;
      return e0 + e < kElems && i < k_len;
    };
    auto issue = [&](int e0, bool retry) {       // a retry requests only the stale words again
#pragma unroll
      for (int e = 0; e < kBatch; ++e) {
        int h, d;
        if (element(e0, e, h, d))
#pragma unroll
          for (int j = 0; j < PARTS; ++j)
            if (!retry || tag_of(acc[e][j]) != s.epoch) acc[e][j] = load_word(word(j, h, d));
      }
    };
    auto stale_acc = [&](int e0, u32& tag) -> const tagged_t* {
#pragma unroll
      for (int e = 0; e < kBatch; ++e) {
        int h, d;
        if (element(e0, e, h, d))
#pragma unroll
          for (int j = 0; j < PARTS; ++j)
            if ((tag = tag_of(acc[e][j])) != s.epoch) return word(j, h, d);
      }
      return nullptr;
    };
    auto request_ml = [&](int h, bool retry) {
#pragma unroll
      for (int j = 0; j < PARTS; ++j) {
        if (!retry || tag_of(wm[j]) != s.epoch) wm[j] = load_word(word(j, h, HD));
        if (!retry || tag_of(wl[j]) != s.epoch) wl[j] = load_word(word(j, h, HD + 1));
      }
    };
    auto stale_ml = [&](int h, u32& tag) -> const tagged_t* {
#pragma unroll
      for (int j = 0; j < PARTS; ++j) {
        if ((tag = tag_of(wm[j])) != s.epoch) return word(j, h, HD);
        if ((tag = tag_of(wl[j])) != s.epoch) return word(j, h, HD + 1);
      }
      return nullptr;
    };
    auto merge_weights = [&](int h) {
      float m[PARTS], mx = kEmpty, den = 0.f;
#pragma unroll
      for (int j = 0; j < PARTS; ++j) {
        m[j] = value_of(wm[j]);
        mx = fmaxf(mx, m[j]);
      }
#pragma unroll
      for (int j = 0; j < PARTS; ++j) den += value_of(wl[j]) * fast_exp2(m[j] - mx);
#pragma unroll
      for (int j = 0; j < PARTS; ++j) coef[h * PARTS + j] = fast_exp2(m[j] - mx) / den;
    };
    // With few parts the (max, sum) words of a thread's first head are awaited with its first acc
    // words; with many, holding both would spill, so they are awaited first.
    constexpr bool kTogether = PARTS <= 8;
    const int h_end = (k0 + k_len + HD - 1) / HD, mine = k0 / HD + threadIdx.x;   // this thread's first head
    auto request = [&](bool retry) {
      issue(0, retry);
      if (kTogether && mine < h_end) request_ml(mine, retry);
    };
    request(false);
    if constexpr (kTogether)
      await_words(s, task, [&](u32& tag) -> const tagged_t* {
        if (mine < h_end)
          if (const tagged_t* p = stale_ml(mine, tag)) return p;
        return stale_acc(0, tag);
      }, [&] { request(true); });
    for (int h = mine; h < h_end; h += kConsumerThreads) {
      if (!kTogether || h != mine) {
        request_ml(h, false);
        await_words(s, task, [&](u32& tag) { return stale_ml(h, tag); }, [&] { request_ml(h, true); });
      }
      merge_weights(h);
    }
    consumer_sync();
#pragma unroll 1
    for (int e0 = 0; e0 < kElems; e0 += kBatch) {
      if (e0 > 0) issue(e0, false);
      if (e0 > 0 || !kTogether)
        await_words(s, task, [&](u32& tag) { return stale_acc(e0, tag); }, [&] { issue(e0, true); });
#pragma unroll
      for (int e = 0; e < kBatch; ++e) {
        const int i = (e0 + e) * kConsumerThreads + threadIdx.x;
        if (e0 + e >= kElems || i >= XS) continue;
        float v = 0.f;
        int h, d;
        if (element(e0, e, h, d)) {
#pragma unroll
          for (int j = 0; j < PARTS; ++j) v += value_of(acc[e][j]) * coef[h * PARTS + j];
        }
        if constexpr (B == 1) smem_at<float>(work_offset + W::kXs)[i] = v;
        else smem_at<bf16_t>(work_offset + W::kXs)[(size_t)seq * XS + i] = to_bf16(v);
      }
    }
  }
  consumer_sync();
  trace_mark(s, task, 1);
}

}  // namespace adamk
