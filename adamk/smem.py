"""Shared-memory footprint of each task body, in bytes.

This is the one place that knows how a task body lays out its shared memory; the tiling
pass stamps it on every task, the scheduler sizes the kernel's dynamic shared memory as
the maximum over the tasks it places, and csrc/kernels/*.cuh carve the same buffers in
the same order. (The 3D model with K-splitting and prefetch depth replaces this.)
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
