// argmax.cuh — greedy sampling in two fixed-order levels (adamk/kinds/argmax.py): each argmax task
// the largest logit of its chunk and its index, the lowest on ties; then one task the first
// largest of the chunks' pairs in chunk order, written as the id of the token at pos + 1, and pos
// + 1 as the next step's position (the slot of the next epoch's parity, so no block of this step
// reads it). Deterministic whatever the schedule: every comparison prefers the lower index.
#pragma once
#include "common.cuh"
#include "sync.cuh"
#include "tagged.cuh"

namespace adamk {

// The work area of an argmax task of B sequences: each consumer warp's (largest, index) of each
// sequence (smem.argmax_work_bytes).
template <int B>
struct ArgmaxWork {
  static constexpr int kBytes = kConsumerWarps * 8 * B;
};

// (v, i) becomes (v2, i2) if that is larger, or as large with a lower index; NaN never wins.
__device__ __forceinline__ void keep_larger(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) { v = v2; i = i2; }
}

__device__ __forceinline__ void warp_larger(float& v, int& i) {
#pragma unroll
  for (int m = 16; m; m >>= 1) {
    const float v2 = shfl_xor(v, m);
    const int i2 = __float_as_int(shfl_xor(__int_as_float(i), m));
    keep_larger(v, i, v2, i2);
  }
}

constexpr int kNoIndex = 0x7fffffff;
__device__ __forceinline__ float minus_infinity() { return __int_as_float(0xff800000); }

// Logits [begin, end) of each of B sequences (rows `logits_stride` words apart) -> out[b * out_stride
// + 2 * chunk] = sequence b's largest, out[b * out_stride + 2 * chunk + 1] = its index. A thread
// requests kTrip words (kCols columns of every sequence) before it tests any, so the chunk's polls
// take one round trip per kTrip words, not one per word: the B sequences in one pass, not B passes.
template <int B>
__device__ __noinline__ void argmax_task(const Step& s, int task, int work, tagged_t* out, int out_stride,
                                         const tagged_t* logits, int logits_stride, int begin, int end, int chunk) {
  static_assert(B >= 1 && B <= 16, "a batch of 1..16 sequences");
  constexpr int kCols = B >= 4 ? 1 : 4 / B;       // columns a thread requests at once
  constexpr int kTrip = kCols * B;                // words a thread requests at once (at most 16)
  check_smem(s, work + ArgmaxWork<B>::kBytes, task);
  trace_mark(s, task, 0);
  float v[B];
  int index[B];
#pragma unroll
  for (int b = 0; b < B; ++b) { v[b] = minus_infinity(); index[b] = kNoIndex; }
  for (int i0 = begin + threadIdx.x; i0 < end; i0 += kCols * kConsumerThreads) {
    u64 w[kTrip];
#pragma unroll
    for (int c = 0; c < kCols; ++c)
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const int i = i0 + c * kConsumerThreads;
        w[c * B + b] = i < end ? load_word(logits + (size_t)b * logits_stride + i) : 0;
      }
#pragma unroll
    for (int c = 0; c < kCols; ++c)
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const int i = i0 + c * kConsumerThreads;
        if (i < end)
          keep_larger(v[b], index[b], ready_value(s, logits + (size_t)b * logits_stride + i, w[c * B + b], task), i);
      }
  }
  trace_mark(s, task, 1);
  float2* pairs = smem_at<float2>(work);           // [B][kConsumerWarps]
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int b = 0; b < B; ++b) {
    warp_larger(v[b], index[b]);
    if (threadIdx.x % 32 == 0) pairs[b * kConsumerWarps + warp] = make_float2(v[b], __int_as_float(index[b]));
  }
  consumer_sync();
  if (threadIdx.x < B) {                           // thread b: sequence b's chunk, its warps in order
    const int b = threadIdx.x;
    float vb = minus_infinity();
    int ib = kNoIndex;
    for (int w = 0; w < kConsumerWarps; ++w) keep_larger(vb, ib, pairs[b * kConsumerWarps + w].x,
                                                        __float_as_int(pairs[b * kConsumerWarps + w].y));
    store(s, out + (size_t)b * out_stride + 2 * chunk, vb);
    store(s, out + (size_t)b * out_stride + 2 * chunk + 1, (float)ib);   // exact: a vocabulary is below 2^24
  }
  consumer_sync();   // the work area is read before the next task writes it
}

// The chunks' pairs in order -> tokens[pos + 1] and the next step's position, of one sequence, by
// consumer warp `warp` alone: a batch's sequences go to different warps, so their polls of the
// chunks' pairs overlap instead of taking one round trip after another. The task's stamps are the
// caller's (kinds/argmax.py), once for all its sequences.
__device__ __noinline__ void argmax_combine(const Step& s, int task, int* tokens, int* position,
                                            const tagged_t* partial, int chunks, int warp) {
  if (threadIdx.x / 32 != warp) return;
  const int lane = threadIdx.x % 32;
  float v = minus_infinity();
  int index = kNoIndex;
  for (int c = lane; c < chunks; c += 32) {
    const float cv = ready_value(s, partial + 2 * c, load_word(partial + 2 * c), task);
    const float ci = ready_value(s, partial + 2 * c + 1, load_word(partial + 2 * c + 1), task);
    keep_larger(v, index, cv, (int)ci);
  }
  warp_larger(v, index);
  if (lane == 0) {
    tokens[s.pos + 1] = index;
    position[(s.epoch + 1u) & 1u] = s.pos + 1;
  }
}

}  // namespace adamk
