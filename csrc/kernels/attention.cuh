// attention.cuh — one decode-attention task: query head `q_head` over positions 0..pos of its KV head.
// The task of the group's first query head also appends the new (rotated) k and v at `pos`;
// every task rotates the new k itself, so no task reads a row another task writes this step.
#pragma once
#include "common.cuh"
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

// Merge online-softmax state (m2, l2, a2) into (m, l, a); scores are in base 2.
__device__ __forceinline__ void merge_state(float& m, float& l, float a[8], float m2, float l2, const float a2[8]) {
  const float mn = fmaxf(m, m2), c1 = fast_exp2(m - mn), c2 = fast_exp2(m2 - mn);
  l = l * c1 + l2 * c2;
#pragma unroll
  for (int e = 0; e < 8; ++e) a[e] = a[e] * c1 + a2[e] * c2;
  m = mn;
}

template <int HD>
__device__ __noinline__ void attention_task(const Step& s, const Waits& waits, float* out, const float* q,
                                            const float* k, const float* v, bf16_t* k_cache, bf16_t* v_cache,
                                            const float* inv_freq, float scale, int q_head, int group,
                                            int max_seq) {
  static_assert(HD % 8 == 0 && HD <= 256, "a cached row is read 16 bytes per lane");
  constexpr int kLanesPerPos = pow2_at_least(HD / 8);   // lanes sharing one cached row
  constexpr int kPosPerWarp = 32 / kLanesPerPos;
  constexpr int kStride = HD + 2;                       // per-warp partial: acc[HD], m, l
  constexpr float kEmpty = -1e30f;                      // finite, so merging two empty states stays finite
  constexpr float kLog2e = 1.4426950408889634f;

  const int pos = s.pos, kv_head = q_head / group, tid = threadIdx.x, half = HD / 2;
  float* qs = s.smem;                 // [HD] rotated query, scaled by scale * log2 e    (smem.attention_task)
  float* knew = qs + HD;              // [HD] the new key and value rows, rounded to bf16
  float* vnew = knew + HD;            // [HD]
  float* part = vnew + HD;            // [kWarps][HD + 2]
  bf16_t* kc = k_cache + (size_t)kv_head * max_seq * HD;
  bf16_t* vc = v_cache + (size_t)kv_head * max_seq * HD;

  // The cached rows before `pos` do not depend on this step: stream them into L2 while waiting.
  if (waits.n > 0) {
    prefetch_l2(kc, (size_t)pos * HD * sizeof(bf16_t));
    prefetch_l2(vc, (size_t)pos * HD * sizeof(bf16_t));
    wait_all(s, waits);
  }
  const bool appends = q_head % group == 0;
  for (int d = tid; d < HD; d += kThreads) {
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
  __syncthreads();

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
    const bool cached = t < pos && has_chunk;
    kr = cached ? *reinterpret_cast<const uint4*>(kc + (size_t)t * HD + chunk * 8) : make_uint4(0u, 0u, 0u, 0u);
    vr = cached ? *reinterpret_cast<const uint4*>(vc + (size_t)t * HD + chunk * 8) : make_uint4(0u, 0u, 0u, 0u);
  };
  constexpr int kStep = kWarps * kPosPerWarp;
  uint4 kr, vr;
  load_row(warp * kPosPerWarp + sub, kr, vr);
  for (int t0 = warp * kPosPerWarp; t0 <= pos; t0 += kStep) {
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
    if (t <= pos) merge_state(m, l, acc, score, 1.f, vf);   // one position: m = score, l = 1, acc = v
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
  __syncthreads();
  for (int d = tid; d < HD; d += kThreads) {
    float mx = kEmpty;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, part[w * kStride + HD]);
    float num = 0.f, den = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float* p = part + w * kStride;
      const float c = fast_exp2(p[HD] - mx);
      num += p[d] * c;
      den += p[HD + 1] * c;
    }
    out[q_head * HD + d] = num / den;
  }
  __syncthreads();   // smem is reused by the next task on this block
}

}  // namespace adamk
