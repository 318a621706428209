"""The shared-memory model: how many bytes every task and every SM's program need.

It is the one source of truth for the passes, the schedule and codegen (docs/smem.md).
A task's footprint has three axes:

- spatial: the tile, `tile_rows` output rows of a linear;
- reduction: `k_chunk`, the columns of one K-split part (K itself when k_split = 1);
- temporal: `depth`, the weight stages an SM keeps in flight. A linear task's weights
  (tile_rows x k_chunk bf16) are copied into a stage with cp.async; the stages form a
  ring, so while one task computes from its stage the next depth - 1 linear tasks of the
  SM already stream into theirs, before their inputs are ready.

A task's *work area* holds what it computes with besides weights (the prologue-applied
input slice of a linear, the query / new key and value / per-warp partials of an
attention part). An SM's dynamic shared memory is laid out as

    [ stage 0 | stage 1 | ... | stage depth-1 ][ work area ]
      slot_bytes each (its largest stage)        its largest work area

and every byte of it is live for the whole program (the ring is always full), so the
live-buffer constraint at every point of the program is `SmPlan.peak <= budget`. The
kernel's size is the largest peak over its SMs. csrc/kernels/*.cuh carve the same
buffers through `WeightStage` / `LinearWork` / `AttentionWork`, and the generated kernel
static_asserts those equal the figures here.
"""
from __future__ import annotations

import dataclasses

from .config import BLOCK_THREADS

BF16, F32 = 2, 4
WARPS = BLOCK_THREADS // 32
REDUCE_SCRATCH = 32 * F32   # one float per warp for block reductions, padded to 32


def k_chunk(k: int, k_split: int) -> int:
    """Columns of one K-split part: K / k_split rounded up to 8 (rows move 16 bytes at a time)."""
    if k_split == 1:
        return k
    return -(-k // k_split) + 7 & ~7


def k_parts(k: int, k_split: int) -> list[tuple[int, int]]:
    """(k0, k_len) of every part; the last may be shorter. Only non-empty parts exist."""
    c = k_chunk(k, k_split)
    return [k_range(k, c, i) for i in range(-(-k // c))]


def k_range(k: int, k_chunk: int, k_index: int) -> tuple[int, int]:
    """(k0, k_len) of part `k_index`."""
    k0 = k_index * k_chunk
    return k0, min(k_chunk, k - k0)


def fewest_k_parts(k: int, tile_rows: int, stage_bytes: int) -> int:
    """The fewest K-parts whose stage fits `stage_bytes` (parts of at least 8 columns)."""
    parts = 1
    while parts < k // 8 and linear_stage_bytes(tile_rows, k_chunk(k, parts)) > stage_bytes:
        parts += 1
    return len(k_parts(k, parts))


def linear_stage_bytes(tile_rows: int, k_chunk: int) -> int:
    """One weight stage: tile_rows x k_chunk bf16 (`WeightStage` in linear.cuh)."""
    return tile_rows * k_chunk * BF16


def linear_work_bytes(k_chunk: int) -> int:
    """xs[k_chunk] floats (the prologue-applied input slice) + reduction scratch (`LinearWork`)."""
    return k_chunk * F32 + REDUCE_SCRATCH


def attention_work_bytes(head_dim: int) -> int:
    """qs, knew, vnew [head_dim] floats + per-warp partials [warps][head_dim + 2] (`AttentionWork`)."""
    return (3 * head_dim + WARPS * (head_dim + 2)) * F32


@dataclasses.dataclass(frozen=True)
class Footprint:
    """A task's shared memory: its weight stage (0: none) and its work area."""
    stage: int
    work: int

    def alone(self, depth: int) -> int:
        """Bytes an SM needs to run this task with `depth` stages of its size in flight."""
        return (depth * self.stage if self.stage else 0) + self.work


@dataclasses.dataclass(frozen=True)
class SmPlan:
    """One SM's layout: `depth` slots of `slot_bytes`, then the work area."""
    depth: int
    slot_bytes: int
    work_bytes: int

    def stage_offset(self, i: int) -> int:
        """Offset of the stage of the SM's i-th linear task (the ring wraps every `depth`)."""
        return (i % self.depth) * self.slot_bytes

    @property
    def work_offset(self) -> int:
        return self.depth * self.slot_bytes

    @property
    def peak(self) -> int:
        return self.work_offset + self.work_bytes


def sm_plan(footprints, depth: int) -> SmPlan:
    footprints = list(footprints)
    slot = max((f.stage for f in footprints), default=0)
    return SmPlan(depth if slot else 0, slot, max((f.work for f in footprints), default=0))


def unsplit_rows(k: int, stage_bytes: int, tile_rows: int) -> int:
    """Rows of the best tile without K-splitting whose stage fits `stage_bytes`
    (at least one row; at most `tile_rows`)."""
    return fitting_tile_rows(min(tile_rows, stage_bytes // linear_stage_bytes(1, k)))


def fitting_tile_rows(rows: int) -> int:
    """The largest tile the device code takes that is <= rows: a multiple of the warps
    (a warp per row or more rows per warp) or a power of two below it (warps share a row)."""
    if rows >= WARPS:
        return rows // WARPS * WARPS
    return 1 << max(0, rows.bit_length() - 1)


def peak_without_ksplit(linear_ks: list[int], head_dims: list[int], depth: int, stage_bytes: int,
                        tile_rows: int) -> int:
    """Peak of an SM that runs a task of every op under the best plan without K-splitting at
    the same bytes in flight: every linear keeps its whole K per stage, so it takes the most
    rows whose stage fits `stage_bytes`, and its work area holds all K inputs."""
    fps = [Footprint(linear_stage_bytes(unsplit_rows(k, stage_bytes, tile_rows), k), linear_work_bytes(k))
           for k in linear_ks]
    fps += [Footprint(0, attention_work_bytes(hd)) for hd in head_dims]
    return sm_plan(fps, depth).peak

