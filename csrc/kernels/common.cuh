// common.cuh — storage types, conversions, 16-byte shared-memory loads, the warp roles and consumer reductions.
// No CUDA headers: NVRTC compiles this without include paths, so any NVRTC >= 12 works offline.
#pragma once

// The generated kernel defines these from adamk/config.py, the one source of the block's shape.
#if !defined(ADAMK_CONSUMER_WARPS) || !defined(ADAMK_PRODUCER_WARPS)
#error "ADAMK_CONSUMER_WARPS and ADAMK_PRODUCER_WARPS come from the generated kernel (adamk/config.py)"
#endif

typedef unsigned short bf16_t;   // raw bfloat16 bits
typedef unsigned int u32;
typedef unsigned long long u64;

namespace adamk {

// A block is kConsumerWarps warps that compute, then kProducerWarps warps that stream weights.
constexpr int kConsumerWarps = ADAMK_CONSUMER_WARPS;
constexpr int kProducerWarps = ADAMK_PRODUCER_WARPS;
constexpr int kWarps = kConsumerWarps;              // warps that share a task's work
constexpr int kConsumerThreads = 32 * kConsumerWarps;
constexpr int kProducerThreads = 32 * kProducerWarps;
constexpr int kThreads = kConsumerThreads + kProducerThreads;   // the compiler's block_threads
static_assert(kConsumerWarps >= 1 && kThreads <= 1024, "named barrier 1 counts the consumer threads");

__device__ __forceinline__ bool is_producer() { return threadIdx.x >= kConsumerThreads; }

// Barrier of the consumer warps only (named barrier 1): the producer never joins, so a consumer
// barrier never waits for the weight stream.
__device__ __forceinline__ void consumer_sync() {
  asm volatile("bar.sync 1, %0;" :: "n"(kConsumerThreads) : "memory");
}

// The consumer barrier that also tells every consumer whether any of them passed `flag`.
__device__ __forceinline__ bool consumer_sync_or(bool flag) {
  u32 any;
  asm volatile("{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n bar.red.or.pred q, 1, %2, p;\n"
               " selp.u32 %0, 1, 0, q;\n}" : "=r"(any) : "r"((u32)flag), "n"(kConsumerThreads) : "memory");
  return any != 0;
}

// The block's dynamic shared memory, laid out by the model (smem.py): the ring's slots and barriers,
// then the work area. Every pointer into it is taken from this symbol, so the compiler knows it is
// shared memory (LDS / STS), not a generic address (LD.E / ST.E through the global path).
extern __shared__ __align__(16) unsigned char dynamic_smem[];

template <typename T = unsigned char>
__device__ __forceinline__ T* smem_at(int offset) { return reinterpret_cast<T*>(dynamic_smem + offset); }

__device__ __forceinline__ u32 shared_address(const void* p) {
  u64 a;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
  return (u32)a;
}

// 16 bytes from shared memory by its shared-window address: an LDS.128, never a generic load.
__device__ __forceinline__ uint4 lds128(u32 addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// 8 bytes from shared memory (four bf16).
__device__ __forceinline__ uint2 lds64(u32 addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(addr));
  return v;
}

__device__ __forceinline__ float4 lds128f(u32 addr) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts128f(u32 addr, const float v[4]) {
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" :: "r"(addr), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3])
               : "memory");
}

// The L2 cache policy (createpolicy, sm_80+) of data read once a step: the SM's stream of weights
// and cached KV rows, more bytes than L2 holds.
__device__ __forceinline__ u64 l2_evict_first() {
  u64 policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16_t v) { return __uint_as_float(((u32)v) << 16); }

// Round to nearest even, as torch's .to(torch.bfloat16) does, in one conversion instruction (cvt.rn,
// sm_80+): the bit arithmetic it replaces (a NaN test, the odd bit, + 0x7fff, a shift) was ~8
// instructions an element, the largest part of a batch's staging walk, which is issue-bound (ncu:
// docs/perf.md v42-v44). A NaN stays a NaN (the canonical one).
__device__ __forceinline__ bf16_t to_bf16(float f) {
  bf16_t r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
  return r;
}

// Two floats as a bf16 pair (round to nearest even), `lo` in the low half: one instruction.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));   // a to the high half, b to the low
  return r;
}

// Two bf16 packed in a u32, lowest address first: the low half is element 0.
__device__ __forceinline__ void unpack2(u32 w, float out[2]) {
  out[0] = __uint_as_float(w << 16);
  out[1] = __uint_as_float(w & 0xffff0000u);
}

// Eight bf16 packed in a uint4, lowest address first.
__device__ __forceinline__ void unpack8(const uint4& w, float out[8]) {
  const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) unpack2(words[i], out + 2 * i);
}

// Four bf16 packed in a uint2, lowest address first.
__device__ __forceinline__ void unpack4(const uint2& w, float out[4]) {
  unpack2(w.x, out);
  unpack2(w.y, out + 2);
}

// Butterfly shuffle as one instruction (NVRTC's __shfl_xor_sync became a call in task bodies).
__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
  float r;
  asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(lane_mask));
  return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += shfl_xor(v, off);
  return v;
}

// kV adjacent floats (kV = 1, 2 or 4) from shared memory.
template <int kV>
__device__ __forceinline__ void lds_floats(u32 addr, float out[kV]) {
  static_assert(kV == 1 || kV == 2 || kV == 4, "1, 2 or 4 floats");
  if constexpr (kV == 4) {
    const float4 v = lds128f(addr);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else if constexpr (kV == 2) {
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(out[0]), "=f"(out[1]) : "r"(addr));
  } else {
    asm volatile("ld.shared.f32 %0, [%1];" : "=f"(out[0]) : "r"(addr));
  }
}

// kV adjacent bf16 (kV = 1, 2 or 4) from shared memory, as floats.
template <int kV>
__device__ __forceinline__ void lds_bf16(u32 addr, float out[kV]) {
  static_assert(kV == 1 || kV == 2 || kV == 4, "1, 2 or 4 bf16");
  if constexpr (kV == 4) {
    unpack4(lds64(addr), out);
  } else {
    u32 w;
    if constexpr (kV == 2) {
      asm volatile("ld.shared.u32 %0, [%1];" : "=r"(w) : "r"(addr));
      unpack2(w, out);
    } else {
      asm volatile("{\n .reg .u16 h;\n ld.shared.u16 h, [%1];\n cvt.u32.u16 %0, h;\n}" : "=r"(w) : "r"(addr));
      out[0] = to_float((bf16_t)w);
    }
  }
}

// The smallest power of two >= n (n <= 32): the rows a warp's row sums reduce over.
__host__ __device__ constexpr int pow2_at_least(int n) { return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2); }

// p ? x : y as one SEL of registers: a plain ?: of two array elements may become a select of their
// addresses, which puts the array in local memory.
__device__ __forceinline__ float select(bool p, float x, float y) {
  float r;
  asm("{\n .reg .pred q;\n setp.ne.u32 q, %3, 0;\n selp.f32 %0, %1, %2, q;\n}" : "=f"(r) : "f"(x), "f"(y), "r"((u32)p));
  return r;
}

// Sums over the warp's lanes of N per-lane values v[0, N) (N a power of two <= 32): each butterfly
// step (lane distance OFF = 16, 8, ...) halves the values a lane keeps (the lower or upper half, by its
// lane bit) and adds its partner's sums of them, so N values cost ~N shuffles instead of 5 N. Lane l
// ends with the sum of value warp_row_of<N>(l) in v[0]; the 32 / N lanes of one value agree.
// Recursive templates keep every index a constant, so the values stay in registers.
template <int N, int OFF = 16>
__device__ __forceinline__ void warp_reduce_rows(float* v) {
  static_assert(N >= 1 && (N <= 2 * OFF || N == 1) && (N & (N - 1)) == 0, "a power of two of at most 32 values");
  if constexpr (OFF > 0) {
    const bool upper = (threadIdx.x & OFF) != 0;
    if constexpr (N > 1) {
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        const float lo = v[i], hi = v[i + N / 2];
        v[i] = select(upper, hi, lo) + shfl_xor(select(upper, lo, hi), OFF);
      }
      warp_reduce_rows<N / 2, OFF / 2>(v);
    } else {
      v[0] += shfl_xor(v[0], OFF);
      warp_reduce_rows<1, OFF / 2>(v);
    }
  }
}
template <int R>
__device__ __forceinline__ int warp_row_of(int lane) { return lane / (32 / R); }

// The SwiGLU's activation.
__device__ __forceinline__ float silu(float x) { return x / (1.f + expf(-x)); }

// 2^x in one MUFU instruction; attention works in base 2 (q is pre-scaled by log2 e).
__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// Sum over the consumer threads with one barrier; `scratch` holds kWarps floats (16-byte aligned), and
// no one may write it again before the consumers' next barrier (a batch's staging: each sequence its
// own). Every consumer gets the total, the warps' sums added in warp order; they are read 4 at a time,
// as one load each waited in turn was a tenth of a staging walk's stalls (ncu, docs/perf.md v42-v44).
__device__ __forceinline__ float block_sum_once(float v, float* scratch) {
  static_assert(kWarps % 4 == 0, "the warps' sums are read as float4");
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  consumer_sync();
  float4 sums[kWarps / 4];
#pragma unroll
  for (int i = 0; i < kWarps / 4; ++i) sums[i] = reinterpret_cast<const float4*>(scratch)[i];
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kWarps / 4; ++i) total = (((total + sums[i].x) + sums[i].y) + sums[i].z) + sums[i].w;
  return total;
}

// block_sum_once over a scratch the next reduction reuses.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const float total = block_sum_once(v, scratch);
  consumer_sync();   // scratch is reused by the next reduction
  return total;
}

}  // namespace adamk
