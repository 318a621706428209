"""Shared-memory footprint of the kernel, in bytes.

This is the one place that knows how shared memory is laid out; the tiling pass stamps
each task's scratch on it, the scheduler sizes the kernel as the weight ring plus the
largest scratch of the tasks it places, and csrc/kernels/*.cuh carve the same buffers in
the same order:

    [ weight ring: stream_slots x tile_rows x 256 bf16 ][ task scratch (reused by every task) ]

The ring's depth is the temporal axis (weight chunks in flight ahead of the task that
consumes them); the tile rows are the spatial axis; the scratch holds the reduction input
(K floats). K-splitting, which shrinks the scratch, comes with the 3D model.
"""
from __future__ import annotations

from .config import BLOCK_THREADS

F32 = 4
WARPS = BLOCK_THREADS // 32
REDUCE_SCRATCH = 32 * F32   # one float per warp for block-wide reductions, padded to 32


def linear_task(k: int) -> int:
    """xs[K] (the prologue-applied input vector, float) + reduction scratch."""
    return k * F32 + REDUCE_SCRATCH


def attention_task(head_dim: int) -> int:
    """qs, knew, vnew [head_dim] each (the rotated query, the new key and value rows)
    + per-warp partials [warps][head_dim + 2]."""
    return (3 * head_dim + WARPS * (head_dim + 2)) * F32


CHUNK_COLS = 256      # columns of one streamed weight chunk (stream.cuh kChunkCols)
BF16 = 2


def stream_ring(slots: int, tile_rows: int) -> int:
    """The weight ring: `slots` chunks of tile_rows x 256 bf16."""
    return slots * tile_rows * CHUNK_COLS * BF16


def kernel(slots: int, tile_rows: int, task_scratch: int) -> int:
    return stream_ring(slots, tile_rows) + task_scratch
