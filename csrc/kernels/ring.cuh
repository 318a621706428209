// ring.cuh — the SM's stream: a ring of DEPTH shared-memory pages, each with a `full` and an
// `empty` mbarrier. The pages hold its linear tasks' weights and its attention parts' cached K and V
// rows, none of which depend on this step, so the producer warp streams them from the launch on, in
// the SM's program order. It fills page j into slot j % DEPTH and the copies complete its
// `full` barrier as they land: on sm_90 bulk copies (the TMA engine) of its spans, counted in
// bytes (a linear's page is one span, stored page by page: linear_produce; an attention part's
// page one span of K rows and one of V rows); before sm_90 cp.async by every lane, each lane
// arriving as its copies land. The consumer
// warps wait on `full`, compute, and arrive on `empty`, which lets the producer refill the slot.
// Nothing else synchronises the two roles, so the weight stream never waits on activations, only
// on a slot the consumers still read. At most IN_FLIGHT pages are in flight at once (the rest of
// the ring holds landed pages): an SM's share of DRAM bandwidth needs only that many bytes in the
// memory system, and every byte more queues ahead of the small reads on the critical path (tagged
// activations, instruction fetch), which then wait behind the stream. For the same reason the SM's
// first kOneAtATime[block] pages go one at a time: its pages of the step's latency-bound chain and
// the refill that streams while the chain runs (a table the generator fills per SM:
// codegen/cuda.py one_at_a_time). Consumers never read a page's columns past the
// valid ones (a packed page's zero padding, an attention page's unused rows). The copies carry an L2
// evict-first policy: a step streams more bytes than L2 holds and reads each once, so without the
// hint they evict what is read again (tagged activations).
#pragma once
#include "common.cuh"
#include "sync.cuh"

namespace adamk {

extern __constant__ int kOneAtATime[];   // per block (SM): defined by the generated kernel

__device__ __forceinline__ void mbarrier_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(u32 bar) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared.b64 st, [%0];\n}" :: "r"(bar) : "memory");
}

// The copies this thread issued so far arrive on `bar` when they land (counted in its init).
__device__ __forceinline__ void mbarrier_arrive_copies(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" :: "r"(bar) : "memory");
}

__device__ __forceinline__ bool mbarrier_done(u32 bar, u32 parity) {
  u32 done;
#if __CUDA_ARCH__ >= 900   // try_wait suspends the thread a while in hardware before it answers no
  asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
               : "=r"(done) : "r"(bar), "r"(parity) : "memory");
#else
  asm volatile("{\n .reg .pred p;\n mbarrier.test_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
               : "=r"(done) : "r"(bar), "r"(parity) : "memory");
#endif
  return done != 0;
}

// Wait for the completion of `bar` with `parity`. Bounded like every wait: past the timeout it
// records the wait and gives up, and once any block has given up it gives up at once; the block
// runs on (no thread leaves its warps at a barrier) and the host raises the recorded error. The
// clock and the error flag (a global load) are read only every 64th look, so 132 spinning
// producers do not put a stream of small requests in front of the step's own.
__device__ __forceinline__ void mbarrier_wait(const Step& s, u32 bar, u32 parity, int task) {
  if (mbarrier_done(bar, parity)) return;
  const u64 start = global_ns();
  for (u32 look = 1; !mbarrier_done(bar, parity); ++look) {
    if (look % 64) continue;
    if (*(volatile u32*)&s.err->flag) return;
    if (global_ns() - start > s.timeout_ns) {
      if (threadIdx.x % 32 == 0) report_error(s, kWaitTimeout, task, kRingCounter, parity, 0);
      return;
    }
  }
}

#if __CUDA_ARCH__ >= 900
constexpr u32 kFullArrivals = 1;    // the producer's arrive.expect_tx; the bulk copies count bytes
#else
constexpr u32 kFullArrivals = kProducerThreads;   // one cp.async.mbarrier.arrive per producer thread
#endif

// The ring of every SM (smem.SmPlan): DEPTH slots of SLOT_BYTES at the start of dynamic shared
// memory, then full[DEPTH] and empty[DEPTH] mbarriers; at most IN_FLIGHT pages in flight.
template <int DEPTH, int SLOT_BYTES, int IN_FLIGHT>
struct Ring {
  static_assert(DEPTH >= 1 && SLOT_BYTES % 16 == 0, "pages are filled 16 bytes at a time");
  static_assert(IN_FLIGHT >= 1 && IN_FLIGHT <= DEPTH, "copies in flight fit the ring");
  static constexpr int kSlotBytes = SLOT_BYTES;
  static constexpr int kBarriers = DEPTH * SLOT_BYTES;      // offset of full[0]
  static constexpr int kBytes = kBarriers + 2 * DEPTH * 8;  // smem.SmPlan.work_offset

  static __device__ __forceinline__ u32 page(int j) {
    return shared_address(dynamic_smem) + (j % DEPTH) * SLOT_BYTES;
  }
  static __device__ __forceinline__ u32 full(int j) {
    return shared_address(dynamic_smem) + kBarriers + (j % DEPTH) * 8;
  }
  static __device__ __forceinline__ u32 empty(int j) {
    return shared_address(dynamic_smem) + kBarriers + (DEPTH + j % DEPTH) * 8;
  }
  // The n-th completion of a slot's barrier has parity n & 1; page j is the slot's (j / DEPTH)-th use.
  static __device__ __forceinline__ u32 use(int j) { return (u32)(j / DEPTH); }

  // Once per launch, before any role starts: the barriers of every slot (thread 0), made visible
  // to the async proxy and the whole block.
  static __device__ __noinline__ void init(const Step& s) {
    if (threadIdx.x == 0) {
      for (int i = 0; i < DEPTH; ++i) {
        mbarrier_init(full(i), kFullArrivals);
        mbarrier_init(empty(i), kConsumerWarps);     // one arrival per consumer warp
      }
#if __CUDA_ARCH__ >= 900
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
    }
    __syncthreads();
  }

  // Producer: page j, once its slot is free and page j - IN_FLIGHT (j - 1 among the SM's first
  // kOneAtATime pages) has landed, from `spans` spans of `bytes` bytes each (a multiple of 16): span
  // i from src(i) to byte offset dst(i) of the page. Its `full` barrier completes as they land (at
  // once for no spans). Every page of the SM's stream is filled this way: a linear's packed weight
  // page (one span), an attention part's cached K and V rows.
  template <typename Src, typename Dst>
  static __device__ __forceinline__ void fill(const Step& s, int j, int task, int spans, int bytes, Src src, Dst dst) {
    if (j >= DEPTH) mbarrier_wait(s, empty(j), (use(j) - 1) & 1, task);
    const int in_flight = j < kOneAtATime[blockIdx.x] ? 1 : IN_FLIGHT;
    if (j >= in_flight) mbarrier_wait(s, full(j - in_flight), use(j - in_flight) & 1, task);
    const u32 base = page(j), bar = full(j);
    const u64 policy = l2_evict_first();
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == kConsumerThreads) {             // one lane drives the bulk-copy engine
      asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}"
                   :: "r"(bar), "r"(spans * bytes) : "memory");
      for (int i = 0; i < spans; ++i)
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
                     " [%0], [%1], %2, [%3], %4;"
                     :: "r"(base + dst(i)), "l"(src(i)), "r"(bytes), "r"(bar), "l"(policy) : "memory");
    }
#else
    const int per_span = bytes / 16;
#pragma unroll 4
    for (int p = threadIdx.x - kConsumerThreads; p < spans * per_span; p += kProducerThreads) {
      const int i = p / per_span, c = (p % per_span) * 16;
      asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;"
                   :: "r"(base + dst(i) + c), "l"(reinterpret_cast<const char*>(src(i)) + c), "l"(policy)
                   : "memory");
    }
    mbarrier_arrive_copies(bar);
#endif
  }

  // Producer, after its last page (n pages in all): wait until its copies have landed, so the block
  // never ends with copies still writing into its shared memory (a consumer may have given up on an
  // error and be done). Copies always complete; after an error a slot's barrier phases may have run
  // ahead of the pages, so then it waits a fixed 100 us, ample for IN_FLIGHT pages, instead.
  static __device__ __noinline__ void drain(const Step& s, int n) {
    for (int j = max(0, n - IN_FLIGHT); j < n; ++j) {
      const u64 start = global_ns();
      while (!mbarrier_done(full(j), use(j) & 1))
        if (*(volatile u32*)&s.err->flag && global_ns() - start > 100000) break;
    }
  }

  // Consumer: wait for page j's weights.
  static __device__ __forceinline__ void wait_page(const Step& s, int j, int task) {
    mbarrier_wait(s, full(j), use(j) & 1, task);
  }

  // Consumer: this warp is done with page j (every warp arrives, whether it had rows in it or not).
  static __device__ __forceinline__ void release(int j) {
    __syncwarp();
    if (threadIdx.x % 32 == 0) mbarrier_arrive(empty(j));
  }
};

// In place of a ring in a producer function, after the SM's last page (codegen/cuda.py
// sm_function): the pages the SM streams first are the same bytes every step, so its idle producer
// asks L2 for them (sm_90: one bulk prefetch per page span; before it nothing), and the next
// launch's first pages come from L2 instead of DRAM while that launch's chain is at its start.
template <typename R>
struct NextStepL2 {
  static constexpr int kSlotBytes = R::kSlotBytes;
  template <typename Src, typename Dst>
  static __device__ __forceinline__ void fill(const Step&, int, int, int spans, int bytes, Src src, Dst) {
#if __CUDA_ARCH__ >= 900
    if (threadIdx.x == kConsumerThreads)
      for (int i = 0; i < spans; ++i)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(src(i)), "r"(bytes) : "memory");
#endif
  }
};

}  // namespace adamk
