// tagged.cuh — activations that carry their own readiness.
//
// Every element of an activation buffer is one 64-bit word: its float32 value in the low half,
// the epoch of the step that wrote it in the high half. An aligned 64-bit access is single-copy
// atomic (PTX memory consistency model), so a reader that sees this step's epoch in a word sees
// the value stored with it. A writer's store is therefore its publication and a reader's load
// its wait: between tasks there is no fence, no counter and no signal, and a task waits only for
// the words it reads, so every dependency is exactly as fine as the data (adamk.poll in the
// schedule IR). Each element is written once per step, and the epoch is new every launch, so a
// word left from an earlier step never looks ready.
#pragma once
#include "common.cuh"
#include "sync.cuh"

namespace adamk {

typedef u64 tagged_t;

__device__ __forceinline__ u32 tag_of(u64 w) { return (u32)(w >> 32); }
__device__ __forceinline__ float value_of(u64 w) { return __uint_as_float((u32)w); }

// Relaxed at gpu scope: the store goes to L2, where every SM's relaxed loads look.
__device__ __forceinline__ void store_word(u64* p, u64 w) {
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" :: "l"(p), "l"(w) : "memory");
}
__device__ __forceinline__ void store(const Step& s, tagged_t* p, float v) {
  store_word(p, ((u64)s.epoch << 32) | __float_as_uint(v));
}
__device__ __forceinline__ void store(const Step&, bf16_t* p, float v) { *p = to_bf16(v); }

__device__ __forceinline__ u64 load_word(const tagged_t* p) {
  u64 w;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(w) : "l"(p));
  return w;
}

// Two consecutive words (16-byte aligned): two single-copy-atomic 64-bit accesses in one load.
__device__ __forceinline__ void load_words2(const tagged_t* p, u64& a, u64& b) {
  asm volatile("ld.relaxed.gpu.global.v2.b64 {%0, %1}, [%2];" : "=l"(a), "=l"(b) : "l"(p));
}

// A bf16 shadow of an activation that stagings read (at a batch the residual stream, a down
// projection's or an o_proj's plain input; at batch 1 the down projection's; tile.py decides which):
// elements 2j and 2j + 1 as a bf16 pair in the low half of one 64-bit word, the epoch in the high
// half, so a staging reads 4 bytes an element instead of 8 (the bytes every SM reads at a staging
// point bound a batch's chain: docs/perf.md v37). A paired_t is one element's 4 bytes and the pair's
// word sits at element 2j, so pointers, rows and layer slots count elements as they do for tagged
// floats (the manifest's dtype `bf16x2_tagged`, 4 bytes an element).
struct paired_t {
  u32 half;
};
template <typename T>
struct is_paired {
  static constexpr bool value = false;
};
template <>
struct is_paired<paired_t> {
  static constexpr bool value = true;
};

// Elements p[0] and p[1] (p even) as this step's pair, written beside their float words (in no order
// with them: a reader of either polls its own word's epoch).
__device__ __forceinline__ void store_pair(const Step& s, paired_t* p, float a, float b) {
  store_word(reinterpret_cast<u64*>(p), ((u64)s.epoch << 32) | pack_bf16(a, b));
}

// Wait until every word a task has requested is this step's. `first_stale(tag)` gives the
// address of a word that is not (its tag in `tag`), or nullptr; `reload()` requests the stale
// ones again, all at once, so a retry costs one round trip however many words are stale (a
// word loaded too early is common: a reader issues its loads as its producers finish). Bounded
// like every wait: past the timeout it records the word and gives up; once any block has given
// up, it gives up too. Giving up leaves whatever the words hold and the block runs on, so no
// thread leaves its warps waiting at a barrier; the host raises the recorded error. The error
// flag is one word that every waiting warp of every SM would read on each retry (a thousand
// requests per round trip to one L2 line, queued ahead of the retries' own), so it is read on
// every 16th retry only; the clock is a register.
template <typename FirstStale, typename Reload>
__device__ __forceinline__ void await_words(const Step& s, int task, FirstStale first_stale, Reload reload) {
  u32 tag;
  const tagged_t* p = first_stale(tag);
  if (p == nullptr) return;
  const u64 start = global_ns();
  for (u32 retry = 1; p != nullptr; ++retry) {
    if (retry % 16 == 0 && *(volatile u32*)&s.err->flag) return;
    if (global_ns() - start > s.timeout_ns) {
      report_error(s, kPollTimeout, task, 0, s.epoch, tag, (u64)p);
      return;
    }
    reload();
    p = first_stale(tag);
  }
}

// One word, reloaded until it is this step's (for a word read on its own).
__device__ __noinline__ u64 poll_word(const Step& s, const tagged_t* p, int task) {
  u64 w = load_word(p);
  await_words(s, task, [&](u32& tag) { tag = tag_of(w); return tag == s.epoch ? (const tagged_t*)nullptr : p; },
              [&] { w = load_word(p); });
  return w;
}

// The value of word p, loaded as `w`, once it is this step's.
__device__ __forceinline__ float ready_value(const Step& s, const tagged_t* p, u64 w, int task) {
  if (tag_of(w) != s.epoch) w = poll_word(s, p, task);
  return value_of(w);
}

// Four consecutive input elements of a staging (the index a multiple of 4): `load` requests
// them, `first_stale` / `load` again wait for them (await_words over a batch of Vec4, whose
// loads all go out before the first wait), `get` gives floats. Host buffers are ready at launch.
// `stale_bits` is nonzero if any word is not this step's: a staging ORs it over its whole trip and
// tests once, where first_stale's early return branches per word (a staging walk is issue-bound, and
// the tag tests, their branches and the loads' wait were a fifth of its stalls: ncu, docs/perf.md v42-v44).
template <typename T>
struct Vec4;

template <>
struct Vec4<bf16_t> {
  uint2 raw;
  __device__ __forceinline__ void load(const bf16_t* p) { raw = *reinterpret_cast<const uint2*>(p); }
  __device__ __forceinline__ const tagged_t* first_stale(const Step&, const bf16_t*, u32&) const { return nullptr; }
  __device__ __forceinline__ u32 stale_bits(const Step&) const { return 0; }
  __device__ __forceinline__ void get(float v[4]) const { unpack4(raw, v); }
};

template <>
struct Vec4<tagged_t> {
  u64 w[4];
  __device__ __forceinline__ void load(const tagged_t* p) {
    load_words2(p, w[0], w[1]);
    load_words2(p + 2, w[2], w[3]);
  }
  __device__ __forceinline__ u32 stale_bits(const Step& s) const {
    return (tag_of(w[0]) ^ s.epoch) | (tag_of(w[1]) ^ s.epoch) | (tag_of(w[2]) ^ s.epoch) | (tag_of(w[3]) ^ s.epoch);
  }
  __device__ __forceinline__ const tagged_t* first_stale(const Step& s, const tagged_t* p, u32& tag) const {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (tag_of(w[e]) != s.epoch) {
        tag = tag_of(w[e]);
        return p + e;
      }
    return nullptr;
  }
  __device__ __forceinline__ void get(float v[4]) const {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = value_of(w[e]);
  }
};

// Four elements of a bf16 shadow: two pair words, one 16-byte load.
template <>
struct Vec4<paired_t> {
  u64 w[2];
  __device__ __forceinline__ void load(const paired_t* p) {
    load_words2(reinterpret_cast<const tagged_t*>(p), w[0], w[1]);
  }
  __device__ __forceinline__ u32 stale_bits(const Step& s) const {
    return (tag_of(w[0]) ^ s.epoch) | (tag_of(w[1]) ^ s.epoch);
  }
  __device__ __forceinline__ const tagged_t* first_stale(const Step& s, const paired_t* p, u32& tag) const {
#pragma unroll
    for (int e = 0; e < 2; ++e)
      if (tag_of(w[e]) != s.epoch) {
        tag = tag_of(w[e]);
        return reinterpret_cast<const tagged_t*>(p + 2 * e);
      }
    return nullptr;
  }
  __device__ __forceinline__ void get(float v[4]) const {
    unpack2((u32)w[0], v);
    unpack2((u32)w[1], v + 2);
  }
};

// A staging trip's wait: the Vec4s `v(i)` (i < N, where `has(i)`), each loaded from `src(i)`. One test
// for the whole trip (their stale_bits ORed: a walk is issue-bound, docs/perf.md v47); only when a word
// is stale, await_words over them, each retry requesting just the stale Vec4s again (every SM spins on
// these lines at once).
template <int N, typename Has, typename V, typename Src>
__device__ __forceinline__ void await_trip(const Step& s, int task, Has has, V v, Src src) {
  u32 stale = 0;
#pragma unroll
  for (int i = 0; i < N; ++i)
    if (has(i)) stale |= v(i).stale_bits(s);
  if (!stale) return;
  await_words(s, task, [&](u32& tag) -> const tagged_t* {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (has(i))
        if (const tagged_t* p = v(i).first_stale(s, src(i), tag)) return p;
    return nullptr;
  }, [&] {
    u32 tag;
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (has(i)) {
        auto& w = v(i);                // `v` gives the trip's own Vec4 (a copy would not compile here)
        if (w.first_stale(s, src(i), tag)) w.load(src(i));
      }
  });
}

}  // namespace adamk
