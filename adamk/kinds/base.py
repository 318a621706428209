"""What every task kind provides (adamk/kinds/__init__.py), and helpers they share."""
from __future__ import annotations

import numpy as np

BF16, F32 = 2, 4
TAGGED = 8          # an activation element: float32 value + the epoch of the step that wrote it (tagged.cuh)
PAIRED = 4          # an element of a bf16 shadow: two bf16 + the epoch in one 64-bit word (paired_t)
# Storage of every buffer the kernel touches, bytes per element: weights, KV caches and the host's
# input and output are bf16; activations passed between tasks are tagged words, and the staged
# inputs at a batch (and batch 1's down input) also have a bf16 shadow (passes/tile.py
# `pair_values`) that the stagings read.
DTYPE_BYTES = {"bf16": BF16, "f32_tagged": TAGGED, "bf16x2_tagged": PAIRED,
               "i32": 4}   # i32: a whole model's token ids and position
TAGGED_DTYPES = ("f32_tagged", "bf16x2_tagged")   # words that carry their epoch: what a task polls, zeroed at wrap


def f32_literal(v: float) -> str:
    """A float constant of generated C++ (finite: the frontend refuses NaN and Inf)."""
    if not np.isfinite(v):
        raise ValueError(f"{v} has no C++ literal here; the frontend should have refused it")
    s = str(np.float32(v))
    return s + ("f" if any(c in s for c in ".e") else ".f")


def restages(key, held) -> bool:
    """Whether a task whose kind's `staged` key is `key` stages its input when the work area holds
    `held` (the key of the SM's task before it): unless it reuses exactly that input. A task
    without a key (None) uses the work area its own way and stages what it needs. Codegen, the
    cost model and the calibration fit all decide it here."""
    return key is None or key != held


def rows(op, buffer: str, width: int, begin: int, end: int, at: int = 0) -> list[tuple[str, int, int]]:
    """(buffer, begin, end) of columns [begin, end) of every sequence's row of `width` elements
    (from element `at`): what a task of the whole batch reads or writes of a [batch, width] tensor.
    Whole rows are one range (one poll of a batch's RMSNorm input, not one per sequence)."""
    batch = op.param("batch")
    if begin == 0 and end == width:
        return [(buffer, at, at + batch * width)]
    return [(buffer, at + b * width + begin, at + b * width + end) for b in range(batch)]


def shadow_writes(op) -> list[tuple[str, int, int]]:
    """The elements a task writes of its out's bf16 shadow (passes/tile.py), if it has one: the
    same as of its out, rows [tile) of every sequence's row of N."""
    return rows(op, op.buffer("pairs"), op.param("N"), *op.tile_range) if op.buffer("pairs") else []


class TaskKind:
    name: str
    roles: frozenset           # buffer roles every task of the kind names
    own_cost: str = ""         # the cost model's parameter of a task's own work beyond its pages and
                               # staging (search/cost.py), if the kind has one
    page_share: str = ""       # the cost model's parameter of its pages' rate in SM shares, if not one
    same_pages_each_step: bool = False   # its pages carry the same bytes every step (a linear's weights; an
                               # attention's rows move on): kinds.NextStepL2Pages may prefetch them for the next

    def cost(self, op, pos: int) -> dict:
        """The fields of task `op`'s cost.TaskCost at position `pos`: stage_bytes (what its pages carry),
        read_bytes, inputs, loaded_pages (those of its pages that carry bytes, if not all)."""
        raise NotImplementedError

    def reads(self, op) -> list[tuple[str, int, int]]:
        """(buffer, begin, end): the elements of activations and inputs a task reads (flat).
        Those of tagged activations are what it polls (adamk.poll), and the task DAG's edges are
        the overlaps of these with earlier tasks' `writes`. `op` is an adamk.task / adamk.exec or
        a tile.TaskRecord (both have kind_name, tile_range, k_range, part, parts, buffer(), param())."""
        raise NotImplementedError

    def writes(self, op) -> list[tuple[str, int, int]]:
        """(buffer, begin, end): the elements a task writes (flat); each is written once per step."""
        raise NotImplementedError

    def simulate(self, sim, op) -> None:
        """Execute one task of the kind in the CPU simulator (sim.mem holds the buffers)."""
        raise NotImplementedError

    def functions(self, em, op, name: str) -> list[str]:
        """kernel.cu's functions for the op of `op` (its constants filled in), named after `name`."""
        raise NotImplementedError

    def call(self, em, op, page, new_run: bool) -> list[str]:
        """The consumers' lines that run task `op` from its ring page `page`."""
        raise NotImplementedError

    @staticmethod
    def plain_call(em, op, function: str, args, what: str) -> list[str]:
        """The call of a task whose function stages, polls and stamps itself: `function_op<n>(s, b, task, layer, *args)`."""
        return [f"  {function}_{em.op_name(op)}({em.args(op)}, {', '.join(map(str, args))});  "
                f"// {em.comment(op)}: {what}"]

    def pages(self, op) -> int:
        """Ring pages a task of the kind streams (the producer's line)."""
        return 0

    def produce(self, em, op, page, l2_next: bool = False) -> list[str]:
        """The producer's lines that stream task `op`'s pages from ring page `page` on (a kind with pages);
        `l2_next`: instead, ask L2 for them for the next step (a kind with `same_pages_each_step`)."""
        return []

    def packing(self, op) -> dict | None:
        """How the runtime stores the weights the op's pages stream (a kind whose pages are weights),
        the same for every task of the op: the manifest's `packed_weights` entry."""
        return None

    def staged(self, op):
        """What the task's input staging leaves in the work area, or None (the work area is
        used otherwise, so the next linear stages again)."""
        return None


class CombineKind(TaskKind):
    """A combine of a split op's parts over the tile [begin, end): it reads the parts in fixed
    order, each as its words arrive; its function is `combine_op<n>(s, b, task, layer, begin, end)`."""

    def call(self, em, op, page, new_run) -> list[str]:
        begin, end = op.tile_range
        return self.plain_call(em, op, "combine", (begin, end), f"[{begin}, {end}), sum of parts")
