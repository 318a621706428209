// sync.cuh — dependency counters in global memory: release signals, bounded acquire waits, tracing.
#pragma once
#include "common.cuh"

#ifndef ADAMK_PROFILE
#define ADAMK_PROFILE 0   // 1: record globaltimer stamps per task (a profiling build)
#endif

namespace adamk {

// Written once by the first block whose wait times out; the host reads it after the launch.
struct ErrorRecord {
  u32 flag;       // 0: fine; 1: a wait timed out
  u32 task;       // task_id (schedule order) of the waiting task
  u32 counter;    // counter index it waited on
  u32 expected;   // value it needed
  u32 observed;   // value it last saw
  u32 block;      // blockIdx.x of the waiter
};

// What every task body gets besides its buffers: where the counters live, this launch's
// epoch and position, the shared memory, and the trace buffer of a profiling build.
struct Step {
  u32* counters;
  ErrorRecord* err;
  u64* trace;        // [num_tasks][3]: before waits, after waits, end (profiling builds)
  int pos;
  u32 epoch;
  u64 timeout_ns;
  float* smem;
};

constexpr int kMaxWaits = 4;

// The waits of one task: counter i must reach count[i] * epoch. Passed by value so one
// instantiation of a task body serves every call site.
struct Waits {
  int n;
  int counter[kMaxWaits];
  u32 count[kMaxWaits];
  int task;
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

__device__ __forceinline__ void trace_mark(const Step& s, int task, int slot) {
  if constexpr (ADAMK_PROFILE) {
    if (threadIdx.x == 0) s.trace[3 * task + slot] = global_ns();
  }
}

// Block until every counter of `w` reaches its target. Thread 0 spins; the barrier then
// passes the acquired view to the whole block. Past `timeout_ns` (or once another block
// reported a timeout) the block records what it waited on and exits, so a schedule bug
// ends the launch with a diagnosis instead of hanging the GPU. Not inlined: there is one
// call per task, and inlined copies of the spin loop make ptxas slow.
__device__ __noinline__ void wait_all(const Step& s, const Waits& w) {
  trace_mark(s, w.task, 0);
  int give_up = 0;
  if (threadIdx.x == 0) {
    for (int i = 0; i < w.n && !give_up; ++i) {
      const u32* c = s.counters + w.counter[i];
      const u32 target = w.count[i] * s.epoch;
      u32 seen = load_acquire(c);
      if (seen >= target) continue;
      const u64 start = global_ns();
      while ((seen = load_acquire(c)) < target) {
        if (*(volatile u32*)&s.err->flag) { give_up = 1; break; }
        if (global_ns() - start > s.timeout_ns) {
          if (atomicCAS(&s.err->flag, 0u, 2u) == 0u) {
            s.err->task = w.task; s.err->counter = w.counter[i]; s.err->expected = target;
            s.err->observed = seen; s.err->block = blockIdx.x;
            __threadfence();
            atomicExch(&s.err->flag, 1u);
          }
          give_up = 1;
          break;
        }
        __nanosleep(32);
      }
    }
  }
  if (__syncthreads_or(give_up)) asm volatile("exit;");
  trace_mark(s, w.task, 1);
}

// Publish the writes of the last `n` tasks: every thread has finished (barrier), then one
// release add of n.
__device__ __noinline__ void signal_counter(const Step& s, int counter, u32 n) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(s.counters + counter), "r"(n) : "memory");
  }
}

// Pull [bytes) at p into L2 while the block still waits on its inputs.
__device__ __noinline__ void prefetch_l2(const void* p, size_t bytes) {   // one call per task: keep ptxas fast
  const char* base = reinterpret_cast<const char*>(p);
  for (size_t off = (size_t)threadIdx.x * 128; off < bytes; off += (size_t)kThreads * 128)
    asm volatile("prefetch.global.L2 [%0];" :: "l"(base + off));
}

}  // namespace adamk
