// attention.cuh — decode attention: query head `q_head` over positions 0..pos of its KV head, or,
// split over the sequence (flash-decoding), over part `split` of them, plus the combine of the parts.
// Part 0 of the group's first query head also appends the new (rotated) k and v at `pos`;
// every task rotates the new k itself, so no task reads a row another task writes this step.
#pragma once
#include "common.cuh"
#include "linear.cuh"
#include "sync.cuh"

namespace adamk {

__host__ __device__ constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

// Element d of the rotate-half RoPE of head vector x at position pos.
__device__ __forceinline__ float rope_at(const float* x, int d, int half, const float* inv_freq, int pos) {
  if (inv_freq == nullptr) return x[d];
  const int i = d < half ? d : d - half;
  float s, c;
  sincosf((float)pos * inv_freq[i], &s, &c);
  return d < half ? x[d] * c - x[d + half] * s : x[d] * c + x[d - half] * s;
}

constexpr float kEmpty = -1e30f;   // max score of no positions: finite, so merging two empty states stays finite

// A task's work area (smem.attention_work_bytes).
template <int HD>
struct AttentionWork {
  static constexpr int kQs = 0;                    // float[HD]: rotated query, scaled by scale * log2 e
  static constexpr int kKnew = HD * 4;             // float[HD]: the new key row, rounded to bf16
  static constexpr int kVnew = 2 * HD * 4;         // float[HD]: the new value row
  static constexpr int kPart = 3 * HD * 4;         // float[kWarps][HD + 2]: per-warp acc, max, sum
  static constexpr int kBytes = kPart + kWarps * (HD + 2) * 4;
};

// Merge online-softmax state (m2, l2, a2) into (m, l, a); scores are in base 2.
__device__ __forceinline__ void merge_state(float& m, float& l, float a[8], float m2, float l2, const float a2[8]) {
  const float mn = fmaxf(m, m2), c1 = fast_exp2(m - mn), c2 = fast_exp2(m2 - mn);
  l = l * c1 + l2 * c2;
#pragma unroll
  for (int e = 0; e < 8; ++e) a[e] = a[e] * c1 + a2[e] * c2;
  m = mn;
}

// n_splits == 1: out[q_head] = softmax(q k^T) v. Otherwise part `split` covers its share of
// positions 0..pos and writes out[(split * num_heads + q_head) * (HD + 2)...] = (acc[HD], max, sum),
// unnormalised, for attention_combine.
template <int HD>
__device__ __forceinline__ void attention_task(const Step& s, const Waits& waits, int task, int work_offset,
                                               float* out, const float* q, const float* k, const float* v,
                                               bf16_t* k_cache, bf16_t* v_cache, const float* inv_freq, float scale,
                                               int q_head, int group, int max_seq, int num_heads, int split,
                                               int n_splits) {
  static_assert(HD % 8 == 0 && HD <= 256, "a cached row is read 16 bytes per lane");
  constexpr int kLanesPerPos = pow2_at_least(HD / 8);   // lanes sharing one cached row
  constexpr int kPosPerWarp = 32 / kLanesPerPos;
  constexpr int kStride = HD + 2;                       // per-warp partial: acc[HD], m, l
  constexpr float kLog2e = 1.4426950408889634f;

  check_smem(s, work_offset + AttentionWork<HD>::kBytes, task);
  const int pos = s.pos, kv_head = q_head / group, tid = threadIdx.x, half = HD / 2;
  using W = AttentionWork<HD>;
  float* qs = reinterpret_cast<float*>(s.smem + work_offset + W::kQs);
  float* knew = reinterpret_cast<float*>(s.smem + work_offset + W::kKnew);
  float* vnew = reinterpret_cast<float*>(s.smem + work_offset + W::kVnew);
  float* part = reinterpret_cast<float*>(s.smem + work_offset + W::kPart);
  // This part's positions [t_begin, t_end): an equal share of 0..pos, the last ones shorter.
  const int share = (pos + n_splits) / n_splits;
  const int t_begin = min(split * share, pos + 1), t_end = min(t_begin + share, pos + 1);
  bf16_t* kc = k_cache + (size_t)kv_head * max_seq * HD;
  bf16_t* vc = v_cache + (size_t)kv_head * max_seq * HD;

  // The cached rows before `pos` do not depend on this step: stream them into L2 while waiting.
  if (waits.n > 0) {
    const int cached = max(0, min(t_end, pos) - t_begin);
    prefetch_l2(kc + (size_t)t_begin * HD, (size_t)cached * HD * sizeof(bf16_t));
    prefetch_l2(vc + (size_t)t_begin * HD, (size_t)cached * HD * sizeof(bf16_t));
    wait_all(s, waits, task);
  } else {
    consumer_sync();   // the previous task of this block is done with the work area
  }
  const bool appends = q_head % group == 0 && split == 0;
  for (int d = tid; d < HD; d += kConsumerThreads) {
    const bf16_t kb = to_bf16(rope_at(k + kv_head * HD, d, half, inv_freq, pos));
    const bf16_t vb = to_bf16(v[kv_head * HD + d]);
    knew[d] = to_float(kb);
    vnew[d] = to_float(vb);
    if (appends) {
      kc[(size_t)pos * HD + d] = kb;
      vc[(size_t)pos * HD + d] = vb;
    }
    qs[d] = rope_at(q + q_head * HD, d, half, inv_freq, pos) * (scale * kLog2e);
  }
  consumer_sync();

  const int warp = tid / 32, lane = tid % 32;
  const int sub = lane / kLanesPerPos, chunk = lane % kLanesPerPos;
  const bool has_chunk = chunk < HD / 8;
  float qr[8], acc[8], m = kEmpty, l = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    qr[e] = has_chunk ? qs[chunk * 8 + e] : 0.f;
    acc[e] = 0.f;
  }
  // Row t < pos comes from the cache, row pos from smem. Loads run one iteration ahead; the
  // trip count is uniform across the warp, so the shuffles see every lane.
  auto load_row = [&](int t, uint4& kr, uint4& vr) {
    const bool cached = t < pos && t < t_end && has_chunk;
    kr = cached ? *reinterpret_cast<const uint4*>(kc + (size_t)t * HD + chunk * 8) : make_uint4(0u, 0u, 0u, 0u);
    vr = cached ? *reinterpret_cast<const uint4*>(vc + (size_t)t * HD + chunk * 8) : make_uint4(0u, 0u, 0u, 0u);
  };
  constexpr int kStep = kWarps * kPosPerWarp;
  uint4 kr, vr;
  load_row(t_begin + warp * kPosPerWarp + sub, kr, vr);
  for (int t0 = t_begin + warp * kPosPerWarp; t0 < t_end; t0 += kStep) {
    const int t = t0 + sub;
    uint4 kn, vn;
    load_row(t + kStep, kn, vn);
    float kf[8], vf[8];
    unpack8(kr, kf);
    unpack8(vr, vf);
    if (t == pos && has_chunk) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        kf[e] = knew[chunk * 8 + e];
        vf[e] = vnew[chunk * 8 + e];
      }
    }
    float score = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) score = fmaf(qr[e], kf[e], score);
#pragma unroll
    for (int off = 1; off < kLanesPerPos; off <<= 1) score += shfl_xor(score, off);
    if (t < t_end) merge_state(m, l, acc, score, 1.f, vf);   // one position: m = score, l = 1, acc = v
    kr = kn;
    vr = vn;
  }
  // Merge the kPosPerWarp lane groups of this warp, then the warps through shared memory.
#pragma unroll
  for (int off = kLanesPerPos; off < 32; off <<= 1) {
    float a2[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) a2[e] = shfl_xor(acc[e], off);
    const float m2 = shfl_xor(m, off), l2 = shfl_xor(l, off);
    merge_state(m, l, acc, m2, l2, a2);
  }
  float* mine = part + warp * kStride;
  if (sub == 0 && has_chunk) {
#pragma unroll
    for (int e = 0; e < 8; ++e) mine[chunk * 8 + e] = acc[e];
  }
  if (lane == 0) {
    mine[HD] = m;
    mine[HD + 1] = l;
  }
  consumer_sync();
  for (int d = tid; d < HD; d += kConsumerThreads) {
    float mx = kEmpty;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, part[w * kStride + HD]);
    float num = 0.f, den = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float* p = part + w * kStride;
      const float c = fast_exp2(p[HD] - mx);
      num += p[d] * c;
      den += p[HD + 1] * c;
    }
    if (n_splits == 1) {
      out[q_head * HD + d] = num / den;
    } else {
      float* mine_out = out + ((size_t)split * num_heads + q_head) * kStride;
      mine_out[d] = num;
      if (d == 0) {
        mine_out[HD] = mx;
        mine_out[HD + 1] = den;
      }
    }
  }
  consumer_sync();   // the work area is reused by the next task on this block
}

// Element d of head h of the attention output, merged from the n_splits parts of attention_task in
// part order. Part 0 is never empty (it holds position 0), so the sum is never zero.
template <int HD>
__device__ __forceinline__ float merged(const float* partial, int num_heads, int n_splits, int h, int d) {
  constexpr int kStride = HD + 2;
  float mx = kEmpty;
  for (int j = 0; j < n_splits; ++j) mx = fmaxf(mx, partial[((size_t)j * num_heads + h) * kStride + HD]);
  float num = 0.f, den = 0.f;
  for (int j = 0; j < n_splits; ++j) {
    const float* p = partial + ((size_t)j * num_heads + h) * kStride;
    const float c = fast_exp2(p[HD] - mx);
    num += p[d] * c;
    den += p[HD + 1] * c;
  }
  return num / den;
}

// Heads [head_begin, head_end) of out from the parts (for a split attention whose reader cannot merge).
template <int HD>
__device__ __forceinline__ void attention_combine(const Step& s, const Waits& waits, int task, float* out,
                                                  const float* partial, int num_heads, int n_splits, int head_begin,
                                                  int head_end) {
  if (waits.n > 0) wait_all(s, waits, task);
  for (int i = threadIdx.x; i < (head_end - head_begin) * HD; i += kConsumerThreads)
    out[head_begin * HD + i] = merged<HD>(partial, num_heads, n_splits, head_begin + i / HD, i % HD);
}

// Consumers: the input staging of a linear that reads a split attention (prologue attn_combine):
// xs[0, XS) = the merged output's columns [k0, k0 + k_len), zero past them; like linear_input, between
// two consumer barriers. The parts cost no dependency level of their own.
template <int XS, int HD>
__device__ __forceinline__ void attention_input(const Step& s, int work_offset, const float* partial, int num_heads,
                                                int n_splits, int k0, int k_len, int task) {
  check_smem(s, work_offset + LinearWork<XS>::kBytes, task);
  float* xs = reinterpret_cast<float*>(s.smem + work_offset + LinearWork<XS>::kXs);
  consumer_sync();
  for (int i = threadIdx.x; i < XS; i += kConsumerThreads)
    xs[i] = i < k_len ? merged<HD>(partial, num_heads, n_splits, (k0 + i) / HD, (k0 + i) % HD) : 0.f;
  consumer_sync();
}

}  // namespace adamk
