// common.cuh — storage types, conversions, 16-byte loads and block reductions shared by task bodies.
// No CUDA headers: NVRTC compiles this without include paths, so any NVRTC >= 12 works offline.
#pragma once

typedef unsigned short bf16_t;   // raw bfloat16 bits
typedef unsigned int u32;
typedef unsigned long long u64;

namespace adamk {

constexpr int kThreads = 256;                 // threads per block; the compiler's BLOCK_THREADS
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16_t v) { return __uint_as_float(((u32)v) << 16); }

// Round to nearest even, as torch's .to(torch.bfloat16) does.
__device__ __forceinline__ bf16_t to_bf16(float f) {
  u32 u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);   // keep NaN a NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (bf16_t)(u >> 16);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16_t* p, float v) { *p = to_bf16(v); }

// Eight bf16 packed in a uint4, lowest address first.
__device__ __forceinline__ void unpack8(const uint4& w, float out[8]) {
  const u32 words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
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

// 2^x in one MUFU instruction; attention works in base 2 (q is pre-scaled by log2 e).
__device__ __forceinline__ float fast_exp2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

// Sum over the block; `scratch` holds kWarps floats. Every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();   // scratch is reused by the next reduction
  return total;
}

}  // namespace adamk
