"""The shared-memory model: how many bytes every task and every SM's program need.

It is the one source of truth for the passes, the schedule and codegen (docs/smem.md).
A task's footprint has three axes:

- spatial: the tile, `tile_rows` output rows of a linear (a page holds those rows of each of its
  weights: of two for a gated linear, so the functions below take the page's rows);
- reduction: `k_chunk`, the columns of one K-split part (K itself when k_split = 1), and
  within it the columns of one weight *page* (as many as fit `page_bytes` for the tile's rows);
- temporal: `depth`, the pages an SM keeps in flight. The SM's producer warp streams the
  weights of all its linear tasks and the cached rows of its attention parts, page after page,
  into a ring of `depth` slots
  (ring.cuh); a slot is refilled as soon as the consumer warps release it, so the stream runs
  ahead of the computation by up to depth pages, across task and op boundaries, before the
  inputs of those tasks are ready.

A task's *work area* holds what it computes with besides its pages (the prologue-applied
input of a linear's K-chunk, padded to whole pages, and its scratch, once per sequence of the
batch: a linear task computes its rows for every sequence from one read of its pages; the query / new key and value rows and the
per-warp partials of an attention part, whose cached K and V rows come through the ring as
pages of their own). An SM's dynamic shared memory is laid out as

    [ slot 0 | slot 1 | ... | slot depth-1 ][ full[depth], empty[depth] ][ work area ]
      slot_bytes each (its largest page)       mbarriers, 8 B each          its largest work area

and every byte of it is live for the whole program, so the live-buffer constraint at every
point of the program is `SmPlan.peak <= budget`. The kernel's size is the largest peak over
its SMs. csrc/kernels/*.cuh carve the same buffers through `Ring` / `WeightPage` /
`LinearWork` / `AttentionWork`, and the generated kernel static_asserts those equal the
figures here.
"""
from __future__ import annotations

import dataclasses

from .config import CONSUMER_WARPS

BF16, F32 = 2, 4
WARPS = CONSUMER_WARPS     # warps that share a task (the producer warp only streams)
REDUCE_SCRATCH = 32 * F32   # one float per warp for block reductions, padded to 32
RING_BARRIERS = 2 * 8       # per ring slot: its `full` and `empty` mbarriers (ring.cuh)


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


def gated_tile_rows(tile_rows: int) -> int:
    """Output rows of one task of a gated linear (the SwiGLU's gate and up, one weight page holding
    the task's rows of both): half of `tile_rows` (so its pages have `tile_rows` rows when that is a
    multiple of 2 x WARPS), rounded down to whole warps and at least one row per warp."""
    return max(WARPS, tile_rows // 2 // WARPS * WARPS)


def linear_tile_rows(tile_rows: int, gated: bool) -> int:
    """Output rows of one linear task under the config's `tile_rows`."""
    return gated_tile_rows(tile_rows) if gated else tile_rows


def linear_page_rows(rows: int, gated: bool) -> int:
    """Rows of a linear task's weight pages: its `rows` output rows, of both weights when gated.
    The functions below take these."""
    return 2 * rows if gated else rows


def linear_page_cols(tile_rows: int, k_chunk: int, page_bytes: int) -> int:
    """Columns of one weight page: as many of the K-chunk's as fit `page_bytes` for the tile's
    rows, a multiple of 8 (16 bytes), at least 8."""
    fit = page_bytes // (tile_rows * BF16) // 8 * 8
    return max(8, min(-(-k_chunk // 8) * 8, fit))


def linear_pages(tile_rows: int, k_chunk: int, page_bytes: int) -> int:
    """Pages one linear task streams: its K-chunk in page-sized column blocks."""
    return -(-k_chunk // linear_page_cols(tile_rows, k_chunk, page_bytes))


def linear_page_bytes(tile_rows: int, k_chunk: int, page_bytes: int) -> int:
    """One weight page of a linear task: tile_rows x page columns bf16 (`WeightPage` in linear.cuh)."""
    return tile_rows * linear_page_cols(tile_rows, k_chunk, page_bytes) * BF16


def linear_xs(tile_rows: int, k_chunk: int, page_bytes: int) -> int:
    """Input columns a linear task's work area holds: its K-chunk padded to whole pages."""
    return linear_pages(tile_rows, k_chunk, page_bytes) * linear_page_cols(tile_rows, k_chunk, page_bytes)


def linear_input_bytes(batch: int) -> int:
    """Bytes of one staged input element: float32 for one sequence (the CUDA cores' dot products
    read it as it is), bf16 for a batch (the operand of the tensor cores' bf16 mma)."""
    return F32 if batch == 1 else BF16


def linear_work_bytes(xs: int, coef: int = 0, rows: int = 0, batch: int = 1) -> int:
    """Per sequence of the batch: xs elements (the prologue-applied input, linear_input_bytes each)
    + the scratch (`LinearWork`): one float per warp for block reductions, the `coef` merge weights
    of an input merged from a split attention (heads x parts), or every warp's sums of a task's
    `rows` page rows, padded to a power of two (each warp sums a slice of the columns, linear.cuh
    `linear_task`; a batch's task adds its warps in pairs first, so half the warps' sums)."""
    scratch = max(REDUCE_SCRATCH, coef * F32, (WARPS if batch == 1 else WARPS // 2) * pow2_at_least(rows) * F32)
    return batch * (xs * linear_input_bytes(batch) + scratch)


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n: the rows a warp's row sums reduce over (common.cuh)."""
    return 1 << max(0, n - 1).bit_length()


def linear_footprint(tile_rows: int, k_chunk: int, page_bytes: int, coef: int = 0, batch: int = 1) -> "Footprint":
    """A linear task's pages (its rows, once for the whole batch) and its work area (per sequence)."""
    return Footprint(linear_page_bytes(tile_rows, k_chunk, page_bytes),
                     linear_work_bytes(linear_xs(tile_rows, k_chunk, page_bytes), coef, tile_rows, batch))


def gated_fits(k: int, tile_rows: int, page_bytes: int, depth: int, budget: int, batch: int = 1) -> bool:
    """Whether a gated linear (a SwiGLU's gate and up in one, never split over K) over K inputs
    fits `budget` for the batch (the fuse pass keeps the two linears apart where it does not)."""
    rows = linear_page_rows(linear_tile_rows(tile_rows, True), True)
    return linear_footprint(rows, k, page_bytes, batch=batch).alone(depth, page_bytes) <= budget


def ring_depth(k: int, tile_rows: int, page_bytes: int, depth: int, budget: int, batch: int, floor: int,
               gated: bool = True) -> int:
    """The ring's depth for a batch whose stagings read whole rows of K inputs (the hidden state:
    q/k/v, the LM head, and with `gated` the MLP's gate and up as one gated linear): the deepest of
    `depth` down to `floor` slots at which all of those work areas fit `budget`; `depth` where none
    does. A large batch's inputs beside the target's ring would split every such linear over K and
    keep gate and up apart (a combine level each, the LM head's partials), which costs far more than
    the slots given up: the 1B model at batch 16 on an H100 took 4.15 ms with 6 slots and 2.12 ms
    with 4, while batch 8, which fits at 6, took 3.7% longer at 4 (docs/perf.md v39)."""
    def fits(d: int) -> bool:
        plain = linear_footprint(tile_rows, k, page_bytes, batch=batch).alone(d, page_bytes) <= budget
        return plain and (not gated or gated_fits(k, tile_rows, page_bytes, d, budget, batch))
    for d in range(depth, floor - 1, -1):
        if fits(d):
            return d
    return depth


def fewest_k_parts(k: int, tile_rows: int, page_bytes: int, depth: int, budget: int, batch: int = 1,
                   coef: int = 0) -> int:
    """The fewest K-parts whose footprint fits `budget` with `depth` pages in flight: pages
    stream any K, so only the work area (the batch's inputs of the K-chunk) can need a split."""
    parts = 1
    while parts < k // 8 and \
            linear_footprint(tile_rows, k_chunk(k, parts), page_bytes, coef, batch).alone(depth, page_bytes) > budget:
        parts += 1
    return len(k_parts(k, parts))


MAX_HEADS_PER_TASK = 4   # query heads one attention task scores each cached row against (registers: 16 floats each)
ATTENTION_ROWS_PER_LANE = 2   # cached rows a lane scores per trip of the attention's loop (attention.cuh)


def attention_heads_per_task(group: int) -> int:
    """Query heads of one attention task: the most of its GQA group (a divisor of it) up to
    MAX_HEADS_PER_TASK, which all read the same cached rows."""
    return max(h for h in range(1, min(group, MAX_HEADS_PER_TASK) + 1) if group % h == 0)


def attention_work_bytes(head_dim: int, heads: int) -> int:
    """qs [heads][head_dim], knew, vnew [head_dim] floats, then the per-warp partials
    [warps][heads][head_dim + 2] floats (`AttentionWork`)."""
    return (heads * head_dim + 2 * head_dim + WARPS * heads * (head_dim + 2)) * F32


def attention_page_rows(head_dim: int, page_bytes: int) -> int:
    """Cached positions one ring page of an attention part holds (their K rows, then their V rows:
    `AttentionPage`): as many as fit `page_bytes`, a multiple of the positions a warp reads in one
    trip (32 lanes, 16 bytes of a row each, a power of two of lanes per row, ATTENTION_ROWS_PER_LANE
    rows each), and at least those (a page then takes more than `page_bytes`, and the ring's slots
    grow to it)."""
    lanes = pow2_at_least(head_dim // 8)
    per_trip = 32 // lanes * ATTENTION_ROWS_PER_LANE
    return max(1, page_bytes // (2 * head_dim * BF16) // per_trip) * per_trip


def attention_page_bytes(head_dim: int, rows: int) -> int:
    """One ring page of an attention part holding `rows` positions (`AttentionPage`)."""
    return 2 * rows * head_dim * BF16


def attention_pages(max_seq_len: int, parts: int, head_dim: int, page_bytes: int) -> int:
    """Ring pages of one attention part: its share of the positions at the longest sequence (the
    last position, max_seq_len - 1: attention.cuh attention_part), page_rows at a time."""
    share = (max_seq_len - 1 + parts) // parts
    return -(-share // attention_page_rows(head_dim, page_bytes))


def attention_footprint(head_dim: int, group: int, page_bytes: int) -> "Footprint":
    """An attention task of a GQA group of `group` query heads per KV head: its cached rows' pages
    and its work area."""
    return Footprint(attention_page_bytes(head_dim, attention_page_rows(head_dim, page_bytes)),
                     attention_work_bytes(head_dim, attention_heads_per_task(group)))


def argmax_work_bytes(batch: int) -> int:
    """An argmax task's work area: each consumer warp's (largest, index) of each of the batch's
    sequences (argmax.cuh ArgmaxWork<B>)."""
    return CONSUMER_WARPS * 8 * batch


@dataclasses.dataclass(frozen=True)
class Footprint:
    """A task's shared memory: its weight stage (0: none) and its work area."""
    stage: int
    work: int

    def alone(self, depth: int, slot: int = 0) -> int:
        """Bytes an SM needs to run this task with `depth` pages in flight in slots of its page's
        size or `slot`, if larger (the ring's slots take the largest page of the SM's tasks: with
        other ops' tasks, a whole `page_bytes`)."""
        return (depth * (max(self.stage, slot) + RING_BARRIERS) if self.stage else 0) + self.work


@dataclasses.dataclass(frozen=True)
class SmPlan:
    """One SM's layout: `depth` slots of `slot_bytes`, their mbarriers, then the work area."""
    depth: int
    slot_bytes: int
    work_bytes: int

    @property
    def work_offset(self) -> int:
        return self.depth * (self.slot_bytes + RING_BARRIERS)       # `Ring::kBytes`

    @property
    def peak(self) -> int:
        return self.work_offset + self.work_bytes


def sm_plan(footprints, depth: int) -> SmPlan:
    footprints = list(footprints)
    slot = max((f.stage for f in footprints), default=0)
    return SmPlan(depth if slot else 0, slot, max((f.work for f in footprints), default=0))


def peak_without_ksplit(linear_ks: list[int], attentions: list[tuple[int, int]], depth: int, page_bytes: int,
                        tile_rows: int, gated: list[bool] | None = None, batch: int = 1) -> int:
    """Peak of an SM that runs a task of every op without K-splitting at the same pages in
    flight: every linear's work area holds all K inputs of the batch (`gated[i]`: linear i is a
    gated one; `attentions`: (head_dim, GQA group) of each attention)."""
    gated = gated or [False] * len(linear_ks)
    fps = [linear_footprint(linear_page_rows(linear_tile_rows(tile_rows, g), g), k, page_bytes, batch=batch)
           for k, g in zip(linear_ks, gated)]
    fps += [attention_footprint(hd, group, page_bytes) for hd, group in attentions]
    return sm_plan(fps, depth).peak
