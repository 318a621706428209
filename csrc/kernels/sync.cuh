// sync.cuh — dependency counters in global memory: release signals, bounded acquire waits.
#pragma once
#include "common.cuh"

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

// Not inlined: call sites are many (one per wait in every SM's program) and ptxas time grows
// with inlined copies; a call costs nanoseconds next to a task.
// Block until counters[counter] >= target. Thread 0 spins; the barrier then passes the
// acquired view to the whole block. Past `timeout_ns` (or once another block reported a
// timeout) the block records what it waited on and exits, so a schedule bug ends the
// launch with a diagnosis instead of hanging the GPU.
__device__ __noinline__ void wait_counter(u32* counters, int counter, u32 target, int task,
                                             ErrorRecord* err, u64 timeout_ns) {
  int give_up = 0;
  if (threadIdx.x == 0) {
    u32 seen = load_acquire(counters + counter);
    if (seen < target) {
      const u64 start = global_ns();
      while ((seen = load_acquire(counters + counter)) < target) {
        if (*(volatile u32*)&err->flag) { give_up = 1; break; }
        if (global_ns() - start > timeout_ns) {
          if (atomicCAS(&err->flag, 0u, 2u) == 0u) {
            err->task = task; err->counter = counter; err->expected = target;
            err->observed = seen; err->block = blockIdx.x;
            __threadfence();
            atomicExch(&err->flag, 1u);
          }
          give_up = 1;
          break;
        }
        __nanosleep(64);
      }
    }
  }
  if (__syncthreads_or(give_up)) asm volatile("exit;");
}

// Publish this task's writes: every thread has finished (barrier), then one release add.
__device__ __noinline__ void signal_counter(u32* counters, int counter) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(counters + counter) : "memory");
  }
}

}  // namespace adamk
