// attention.cuh — one decode-attention task: KV head `kv_head` with its GROUP query heads.
// Rotates the new key (RoPE), appends k and v at `pos`, then attends over positions 0..pos
// with an online softmax per (lane group, query head), merged across lanes and warps.
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

// Merge online-softmax state (m2, l2, a2) into (m, l, a).
template <int N>
__device__ __forceinline__ void merge_state(float& m, float& l, float* a, float m2, float l2, const float* a2) {
  const float mn = fmaxf(m, m2), c1 = expf(m - mn), c2 = expf(m2 - mn);
  l = l * c1 + l2 * c2;
#pragma unroll
  for (int e = 0; e < N; ++e) a[e] = a[e] * c1 + a2[e] * c2;
  m = mn;
}

template <int HD, int GROUP>
__device__ __noinline__ void attention_task(const Step& s, const Waits& waits, float* out, const float* q,
                                            const float* k, const float* v, bf16_t* k_cache, bf16_t* v_cache,
                                            const float* inv_freq, float scale, int kv_head, int max_seq) {
  static_assert(HD % 8 == 0 && HD <= 256, "a cached row is read 16 bytes per lane");
  constexpr int kLanesPerPos = pow2_at_least(HD / 8);   // lanes sharing one cached row
  constexpr int kPosPerWarp = 32 / kLanesPerPos;
  constexpr int kStride = HD + 2;                       // per-warp partial: acc[HD], m, l
  constexpr float kEmpty = -1e30f;                      // finite, so merging two empty states stays finite

  const int pos = s.pos;
  float* qs = s.smem;                 // [GROUP][HD]             (smem.attention_task)
  float* part = s.smem + GROUP * HD;  // [kWarps][GROUP][HD + 2]
  bf16_t* kc = k_cache + (size_t)kv_head * max_seq * HD;
  bf16_t* vc = v_cache + (size_t)kv_head * max_seq * HD;
  const int tid = threadIdx.x, half = HD / 2;

  // The cached rows before `pos` do not depend on this step: stream them into L2 while waiting.
  if (waits.n > 0) {
    prefetch_l2(kc, (size_t)pos * HD * sizeof(bf16_t));
    prefetch_l2(vc, (size_t)pos * HD * sizeof(bf16_t));
    wait_all(s, waits);
  }

  for (int d = tid; d < HD; d += kThreads) {
    kc[(size_t)pos * HD + d] = to_bf16(rope_at(k + kv_head * HD, d, half, inv_freq, pos));
    vc[(size_t)pos * HD + d] = to_bf16(v[kv_head * HD + d]);
  }
  for (int i = tid; i < GROUP * HD; i += kThreads) {
    const int h = i / HD, d = i % HD;
    qs[i] = rope_at(q + (kv_head * GROUP + h) * HD, d, half, inv_freq, pos) * scale;
  }
  __syncthreads();   // the appended row and qs are visible to the whole block

  const int warp = tid / 32, lane = tid % 32;
  const int sub = lane / kLanesPerPos, chunk = lane % kLanesPerPos;
  const bool has_chunk = chunk < HD / 8;
  float qr[GROUP][8], m[GROUP], l[GROUP], acc[GROUP][8];
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
    m[h] = kEmpty;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      qr[h][e] = has_chunk ? qs[h * HD + chunk * 8 + e] : 0.f;
      acc[h][e] = 0.f;
    }
  }
  // The trip count is uniform across the warp, so the shuffles below see every lane.
  for (int t0 = warp * kPosPerWarp; t0 <= pos; t0 += kWarps * kPosPerWarp) {
    const int t = t0 + sub;
    const bool valid = t <= pos && has_chunk;
    float kf[8], vf[8];
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    unpack8(valid ? *reinterpret_cast<const uint4*>(kc + (size_t)t * HD + chunk * 8) : zero, kf);
    unpack8(valid ? *reinterpret_cast<const uint4*>(vc + (size_t)t * HD + chunk * 8) : zero, vf);
#pragma unroll
    for (int h = 0; h < GROUP; ++h) {
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) s = fmaf(qr[h][e], kf[e], s);
#pragma unroll
      for (int off = 1; off < kLanesPerPos; off <<= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (t <= pos) merge_state<8>(m[h], l[h], acc[h], s, 1.f, vf);   // one position: m=s, l=1, acc=v
    }
  }
  // Merge the kPosPerWarp lane groups of this warp, then the warps through shared memory.
#pragma unroll
  for (int h = 0; h < GROUP; ++h) {
#pragma unroll
    for (int off = kLanesPerPos; off < 32; off <<= 1) {
      float a2[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) a2[e] = __shfl_xor_sync(0xffffffffu, acc[h][e], off);
      const float m2 = __shfl_xor_sync(0xffffffffu, m[h], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[h], off);
      merge_state<8>(m[h], l[h], acc[h], m2, l2, a2);
    }
    float* mine = part + (warp * GROUP + h) * kStride;
    if (sub == 0 && has_chunk) {
#pragma unroll
      for (int e = 0; e < 8; ++e) mine[chunk * 8 + e] = acc[h][e];
    }
    if (lane == 0) {
      mine[HD] = m[h];
      mine[HD + 1] = l[h];
    }
  }
  __syncthreads();
  for (int i = tid; i < GROUP * HD; i += kThreads) {
    const int h = i / HD, d = i % HD;
    float mx = kEmpty;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, part[(w * GROUP + h) * kStride + HD]);
    float num = 0.f, den = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float* p = part + (w * GROUP + h) * kStride;
      const float c = expf(p[HD] - mx);
      num += p[d] * c;
      den += p[HD + 1] * c;
    }
    out[(kv_head * GROUP + h) * HD + d] = num / den;
  }
  __syncthreads();   // smem is reused by the next task on this block
}

}  // namespace adamk
