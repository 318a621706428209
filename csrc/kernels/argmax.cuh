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

// The work area of an argmax task: each consumer warp's (largest, index) (smem.argmax_work_bytes).
struct ArgmaxWork {
  static constexpr int kBytes = kConsumerWarps * 8;
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

// Logits [begin, end) -> out[2 * chunk] = the largest, out[2 * chunk + 1] = its index.
__device__ __noinline__ void argmax_task(const Step& s, int task, int work, tagged_t* out, const tagged_t* logits,
                                         int begin, int end, int chunk) {
  check_smem(s, work + ArgmaxWork::kBytes, task);
  trace_mark(s, task, 0);
  float v = minus_infinity();
  int index = kNoIndex;
  for (int i = begin + threadIdx.x; i < end; i += kConsumerThreads)
    keep_larger(v, index, ready_value(s, logits + i, load_word(logits + i), task), i);
  trace_mark(s, task, 1);
  warp_larger(v, index);
  float2* pairs = smem_at<float2>(work);
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) pairs[warp] = make_float2(v, __int_as_float(index));
  consumer_sync();
  if (threadIdx.x == 0) {
    for (int w = 0; w < kConsumerWarps; ++w) keep_larger(v, index, pairs[w].x, __float_as_int(pairs[w].y));
    store(s, out + 2 * chunk, v);
    store(s, out + 2 * chunk + 1, (float)index);   // exact: a vocabulary is below 2^24
  }
  consumer_sync();   // the work area is read before the next task writes it
}

// The chunks' pairs in order -> tokens[pos + 1] and the next step's position. One warp.
__device__ __noinline__ void argmax_combine(const Step& s, int task, int* tokens, int* position,
                                            const tagged_t* partial, int chunks) {
  trace_mark(s, task, 0);
  if (threadIdx.x >= 32) return;
  float v = minus_infinity();
  int index = kNoIndex;
  for (int c = threadIdx.x; c < chunks; c += 32) {
    const float cv = ready_value(s, partial + 2 * c, load_word(partial + 2 * c), task);
    const float ci = ready_value(s, partial + 2 * c + 1, load_word(partial + 2 * c + 1), task);
    keep_larger(v, index, cv, (int)ci);
  }
  warp_larger(v, index);
  if (threadIdx.x == 0) {
    tokens[s.pos + 1] = index;
    position[(s.epoch + 1u) & 1u] = s.pos + 1;
  }
  trace_mark(s, task, 1);
}

}  // namespace adamk
