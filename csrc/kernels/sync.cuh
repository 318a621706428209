// sync.cuh — the launch's state (Step), the error record, tracing, and the dependency counters in
// global memory (release signals, bounded acquire waits) of the ablation's grid-barrier and
// work-queue variants. Tasks themselves pass data through tagged activations (tagged.cuh).
#pragma once
#include "common.cuh"
#include "error_record.h"

#ifndef ADAMK_PROFILE
#define ADAMK_PROFILE 0   // 1: record globaltimer stamps per task (a profiling build)
#endif

namespace adamk {

// Written once by the first block that gives up; the host reads it after the launch.
struct ErrorRecord {
  u32 flag;       // 0: fine; 1: written
  u32 task;       // task_id (schedule order) of the task that gave up
  u32 counter;    // kWaitTimeout: counter index it waited on
  u32 expected;   // kWaitTimeout: value it needed; kSmemOverflow: shared-memory bytes it needed
  u32 observed;   // kWaitTimeout: value it last saw; kSmemOverflow: bytes the launch gave
  u32 block;      // blockIdx.x
  u32 reason;     // ErrorReason
  u32 address_lo; // kPollTimeout: the address of the word it polled (the host names its buffer)
  u32 address_hi;
};
static_assert(sizeof(ErrorRecord) <= 4 * kErrorRecordWords, "the host's record buffer holds it");

// What every task body gets besides its buffers: where the counters live, this launch's
// epoch and position (a batch's tasks: their sequence's, at_position), and the trace buffer of a
// profiling build (shared memory: smem_at).
struct Step {
  u32* counters;
  ErrorRecord* err;
  u64* trace;        // [num_tasks][kTraceSlots] (profiling builds): TraceSlot stamps
  int pos;
  u32 epoch;
  u64 timeout_ns;
};

// The step as one sequence of a batch sees it: its own position (the rest is the launch's).
__device__ __forceinline__ Step at_position(const Step& s, int pos) {
  Step t = s;
  t.pos = pos;
  return t;
}

constexpr int kMaxWaits = 4;

static_assert(kMaxWaits == ADAMK_MAX_WAITS, "adamk/codegen MAX_WAITS");

// The waits of one task: counter i must reach count[i] * epoch. The generator puts every
// distinct set in one table (kWaits) and passes a reference, so a call site costs a pointer.
struct Waits {
  int n;
  int counter[kMaxWaits];
  u32 count[kMaxWaits];
};

__device__ __forceinline__ u32 load_acquire(const u32* p) {
  u32 v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ u64 global_ns() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// What a profiling build stamps per task (adamk/codegen/cuda.py TRACE_SLOTS names them): reached
// (before its waits and staging), inputs in (its waits and staging done), end, and its data in:
// its first ring page landed, as warp 0 saw it (a linear's weights, an attention's cached rows).
constexpr int kTraceSlots = ADAMK_TRACE_SLOTS;
static_assert(kTraceSlots == 4, "slots 0..3: reached, inputs in, end, data in");

__device__ __forceinline__ void trace_mark(const Step& s, int task, int slot) {
  if constexpr (ADAMK_PROFILE) {
    if (threadIdx.x == 0) s.trace[kTraceSlots * task + slot] = global_ns();
  }
}

// Claim the error record (first reporter wins) and fill it in. Called by one thread.
__device__ __forceinline__ void report_error(const Step& s, u32 reason, u32 task, u32 counter, u32 expected,
                                             u32 observed, u64 address = 0) {
  if (atomicCAS(&s.err->flag, 0u, 2u) == 0u) {
    s.err->task = task; s.err->counter = counter; s.err->expected = expected;
    s.err->observed = observed; s.err->block = blockIdx.x; s.err->reason = reason;
    s.err->address_lo = (u32)address; s.err->address_hi = (u32)(address >> 32);
    __threadfence();
    atomicExch(&s.err->flag, 1u);
  }
}

__device__ __forceinline__ u32 dynamic_smem_bytes() {
  u32 r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}

// A task about to use shared memory up to byte `end` checks the launch gave that much:
// the model's figure, not a guess, sizes the launch, and a launch one byte short ends
// with a diagnosis instead of corrupting the next block's shared memory.
__device__ __noinline__ void check_smem(const Step& s, u32 end, int task) {
  if (end <= dynamic_smem_bytes()) return;
  if (threadIdx.x == 0) report_error(s, kSmemOverflow, task, 0, end, dynamic_smem_bytes());
  asm volatile("exit;");
}

// Block the consumers until every counter of `w` reaches its target. Thread 0 spins; the
// consumer barrier then passes the acquired view to every consumer (the producer warp streams
// on). Past `timeout_ns` (or once another block reported a timeout) it records what it waited on
// and gives up, and the block runs on (as a tagged poll does), so a schedule bug ends the launch
// with a diagnosis instead of hanging the GPU. Not inlined: inlined spin loops make ptxas slow.
__device__ __noinline__ void wait_all(const Step& s, const Waits& w, int task) {
  trace_mark(s, task, 0);
  if (threadIdx.x == 0) {
    for (int i = 0; i < w.n; ++i) {
      const u32* c = s.counters + w.counter[i];
      const u32 target = w.count[i] * s.epoch;
      u32 seen = load_acquire(c);
      if (seen >= target) continue;
      const u64 start = global_ns();
      while ((seen = load_acquire(c)) < target && !*(volatile u32*)&s.err->flag) {
        if (global_ns() - start > s.timeout_ns) {
          report_error(s, kWaitTimeout, task, w.counter[i], target, seen);
          break;
        }
        __nanosleep(32);
      }
    }
  }
  consumer_sync();
  trace_mark(s, task, 1);
}

// Publish the writes of the last `n` tasks: every consumer has finished (barrier), then one
// release add of n, cumulative over the writes the barrier ordered before it.
__device__ __noinline__ void signal_counter(const Step& s, int counter, u32 n) {
  consumer_sync();
  if (threadIdx.x == 0) {
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
    asm volatile("red.relaxed.gpu.global.add.u32 [%0], %1;" :: "l"(s.counters + counter), "r"(n) : "memory");
  }
}


}  // namespace adamk
