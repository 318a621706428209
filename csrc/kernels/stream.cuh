// stream.cuh — each SM's weight tiles stream through a shared-memory ring with cp.async.
// The generator lists the linear tasks an SM runs, in order; the ring always holds the next
// kStreamSlots chunks (TILE_ROWS rows x 256 columns) of that list in flight, across task
// boundaries and across dependency waits, so the SM pulls weights at a constant depth
// whatever its tasks are doing. A task consumes its chunks in order and refills each slot
// it frees with the chunk kStreamSlots further down the list.
#pragma once
#include "common.cuh"

#ifndef ADAMK_STREAM_SLOTS
#define ADAMK_STREAM_SLOTS 8
#endif
#ifndef ADAMK_TILE_ROWS
#define ADAMK_TILE_ROWS 16
#endif

namespace adamk {

constexpr int kStreamSlots = ADAMK_STREAM_SLOTS;
constexpr int kTileRows = ADAMK_TILE_ROWS;
constexpr int kChunkCols = 256;                          // 32 lanes x 8 bf16
constexpr int kChunkElems = kTileRows * kChunkCols;      // one slot, bf16 elements

// One linear task's weight tile, as the stream sees it.
struct StreamTile {
  const bf16_t* w;   // first element of row row_begin
  int k;             // row length (elements)
  int rows;          // rows in the tile (<= kTileRows)
};

// Per-block cursor over the SM's tiles; every thread keeps an identical copy.
struct Stream {
  const StreamTile* tiles;
  int n_tiles;
  int tile;          // next tile to issue from
  int chunk;         // next chunk of that tile
  u32 issued;        // chunks (commit groups) issued so far
  u32 consumed;      // chunks consumed so far
  bf16_t* ring;      // [kStreamSlots][kTileRows][kChunkCols]
};

__device__ __forceinline__ u32 shared_address(const void* p) {
  u64 a;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
  return (u32)a;
}

// Copy 16 bytes global -> shared without the registers; src_bytes 0 writes zeros.
__device__ __forceinline__ void copy_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(shared_address(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}

// Issue the next chunk of the list into its slot (or nothing past the end) and close one
// commit group either way, so group i is always chunk i.
__device__ __forceinline__ void stream_issue(Stream& st) {
  if (st.tile < st.n_tiles) {
    const StreamTile t = st.tiles[st.tile];
    const int col0 = st.chunk * kChunkCols;
    bf16_t* slot = st.ring + (size_t)(st.issued % kStreamSlots) * kChunkElems;
    for (int p = threadIdx.x; p < kTileRows * (kChunkCols / 8); p += kThreads) {
      const int r = p / (kChunkCols / 8), c = (p % (kChunkCols / 8)) * 8;
      const bool in = r < t.rows && col0 + c < t.k;
      copy_async16(slot + r * kChunkCols + c, in ? t.w + (size_t)r * t.k + col0 + c : t.w, in ? 16 : 0);
    }
    if (++st.chunk * kChunkCols >= t.k) {
      st.chunk = 0;
      ++st.tile;
    }
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
  ++st.issued;
}

// Fill the ring at the start of the SM's program.
__device__ __forceinline__ void stream_start(Stream& st) {
  for (int i = 0; i < kStreamSlots; ++i) stream_issue(st);
}

// The slot of the next chunk, once every thread's copies into it have landed.
__device__ __forceinline__ const bf16_t* stream_acquire(Stream& st) {
  asm volatile("cp.async.wait_group %0;" :: "n"(kStreamSlots - 1) : "memory");
  __syncthreads();
  return st.ring + (size_t)(st.consumed % kStreamSlots) * kChunkElems;
}

// Done reading the slot: refill it with the chunk kStreamSlots ahead.
__device__ __forceinline__ void stream_release(Stream& st) {
  __syncthreads();
  ++st.consumed;
  stream_issue(st);
}

}  // namespace adamk
