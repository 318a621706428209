// embedding.cuh — a whole model's first task: the hidden state of the token at pos, row
// tokens[pos] of the embedding table, as tagged words (its readers' polls wait on them). The ids
// live on the device: the host writes the prompt's, each step's argmax the next one (argmax.cuh).
#pragma once
#include "common.cuh"
#include "sync.cuh"
#include "tagged.cuh"

namespace adamk {

// Columns [begin, end) of the row; an id outside the vocabulary is an error (nothing is written,
// so the readers give up on the error flag, and the host names the id). With `pairs` (a batch's bf16
// shadow of the hidden state, tagged.cuh paired_t; begin and end even) the row goes there too.
template <int N>
__device__ __forceinline__ void embedding_task(const Step& s, int task, tagged_t* out, const int* tokens,
                                               const bf16_t* table, int vocab, int begin, int end,
                                               paired_t* pairs = nullptr) {
  static_assert(N > 0, "the hidden size");
  trace_mark(s, task, 0);
  const int token = tokens[s.pos];
  if (token < 0 || token >= vocab) {
    if (threadIdx.x == 0) report_error(s, kBadToken, task, 0, (u32)vocab, (u32)token);
    return;
  }
  trace_mark(s, task, 1);
  const bf16_t* row = table + (size_t)token * N;
  for (int i = begin + threadIdx.x; i < end; i += kConsumerThreads) store(s, out + i, to_float(row[i]));
  if (pairs != nullptr)
    for (int i = begin + 2 * threadIdx.x; i < end; i += 2 * kConsumerThreads)
      store_pair(s, pairs + i, to_float(row[i]), to_float(row[i + 1]));
  trace_mark(s, task, 3);
}

}  // namespace adamk
