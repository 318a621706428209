"""Greedy sampling of a whole model, in two fixed-order levels (csrc/kernels/argmax.cuh), for
each sequence of the batch: an argmax task finds the largest logit of its chunk of the
vocabulary and its index (the lowest on ties) and writes the pair ([batch, chunks, 2]); the
combine task takes the first largest of the chunks' pairs, in chunk order, so the result is the
lowest index of the largest logit whatever the schedule, and writes it as the id of the
sequence's token at pos + 1, and pos + 1 as its next step's position."""
from __future__ import annotations

import numpy as np

from .. import smem
from .base import TAGGED, TaskKind, rows

CHUNK = 4096          # logits of one sequence an argmax task reduces at batches up to 4 (a 128K vocabulary: 32 tasks)
CHUNK_WORDS = 16384   # logits of the whole batch an argmax task reduces at most: one SM polls them at ~20-30
                      # GB/s (16 words in flight a thread), so at batch 16 a 4,096 chunk took 26 us (perf.md v65)


def logits_of(execs) -> str | None:
    """The logits buffer the argmax tasks among `execs` read (None: a layer, no argmax); the host
    reads the last step's logits from it."""
    return next((op.buffer("logits") for op in execs if op.kind_name == Argmax.name), None)


def first_max(values: np.ndarray) -> tuple[float, int]:
    """(largest value, its lowest index), NaNs never chosen."""
    i = int(np.argmax(np.where(np.isnan(values), -np.inf, values)))
    return float(values[i]), i


def chunk_columns(batch: int) -> int:
    """The logits of each sequence one argmax task reduces: CHUNK, halved until the batch's words
    are at most CHUNK_WORDS (batch 8: 2,048; 16: 1,024)."""
    columns = CHUNK
    while columns * batch > CHUNK_WORDS:
        columns //= 2
    return columns


def chunks(vocab: int, batch: int) -> int:
    """The chunks of a vocabulary the argmax tasks reduce, one task each (the tile pass's tasks)."""
    return -(-vocab // chunk_columns(batch))


def chunk_of(op) -> int:
    """The chunk argmax task `op` reduces: its place in the chunks' pairs."""
    return op.tile_range[0] // chunk_columns(op.param("batch"))


class Argmax(TaskKind):
    name = "argmax"
    roles = frozenset({"logits", "out"})

    def cost(self, op, pos) -> dict:
        begin, end = op.tile_range
        return {"read_bytes": op.param("batch") * (end - begin) * TAGGED}

    def reads(self, op):
        return rows(op, op.buffer("logits"), op.param("N"), *op.tile_range)

    def writes(self, op):
        c = chunk_of(op)
        return rows(op, op.buffer("out"), 2 * chunks(op.param("N"), op.param("batch")), 2 * c, 2 * c + 2)

    def simulate(self, sim, op) -> None:
        begin, end = op.tile_range
        c, logits = chunk_of(op), sim.buf(op, "logits").reshape(op.param("batch"), -1)
        for b in range(op.param("batch")):
            value, i = first_max(logits[b, begin:end])
            sim.buf(op, "out")[b, c] = (value, begin + i)

    def functions(self, em, op, name) -> list[str]:
        buf = em.buf_of(op)
        batch = op.param("batch")
        em.asserts.add(f"static_assert(ArgmaxWork<{batch}>::kBytes == {smem.argmax_work_bytes(batch)}, "
                       "\"smem model: argmax work area\");")
        n = op.param("N")
        # every sequence's logits row and its chunks' pairs ([batch, chunks, 2]) in one pass
        return [*em.signature(f"argmax_{name}", "int begin, int end, int chunk"),
                f"  argmax_task<{batch}>(s, task, {em.plan.work_offset}, {buf('out')}, {2 * chunks(n, batch)}, "
                f"{buf('logits')}, {n}, begin, end, chunk);",
                "}"]

    def call(self, em, op, page, new_run) -> list[str]:
        begin, end = op.tile_range
        return self.plain_call(em, op, "argmax", (begin, end, chunk_of(op)),
                               f"largest of logits [{begin}, {end})")


class ArgmaxCombine(TaskKind):
    name = "argmax_combine"
    roles = frozenset({"partial", "out", "position"})

    def cost(self, op, pos) -> dict:
        return {"read_bytes": op.param("batch") * 2 * op.tile_range[1] * TAGGED}

    def reads(self, op):
        return [(op.buffer("partial"), 0, op.param("batch") * 2 * op.tile_range[1])]

    def writes(self, op):   # each sequence's tokens[pos + 1]: no activation
        return [(op.buffer("out"), 0, op.param("batch") * (op.param("max_seq_len") + 1))]

    def simulate(self, sim, op) -> None:
        for b in range(op.param("batch")):
            pairs = sim.buf(op, "partial")[b, :op.tile_range[1]]
            _, c = first_max(pairs[:, 0])          # the first chunk with the largest: its lowest index
            sim.buf(op, "out")[b, sim.pos[b] + 1] = int(pairs[c, 1])

    def functions(self, em, op, name) -> list[str]:
        buf = em.buf_of(op)
        # a batch: each sequence's token at its pos + 1 and its next position (rows of [batch, ...]),
        # sequence b on consumer warp b % kConsumerWarps; the task's stamps once, around them all
        # (thread 0 stamps: its inputs are in once warp 0's sequences are done)
        batch = op.param("batch")
        warp = lambda seq: f"{seq} % kConsumerWarps" if batch > 1 else "0"      # noqa: E731
        return [*em.signature(f"argmax_combine_{name}", "int chunks"),
                *(["  trace_mark(s, task, 0);"] if em.profile else []),
                *em.per_sequence(batch, lambda at, step, seq: (
                    f"argmax_combine({step}, task, {at(buf('out', 'int'), op.param('max_seq_len') + 1)}, "
                    f"{at(buf('position', 'int'), 2)}, {at(buf('partial'), 2 * op.tile_range[1])}, chunks, "
                    f"{warp(seq)});")),
                *(["  trace_mark(s, task, 1);"] if em.profile else []),
                "}"]

    def call(self, em, op, page, new_run) -> list[str]:
        return self.plain_call(em, op, "argmax_combine", (op.tile_range[1],),
                               "the token at pos + 1 from the chunks' largest, in order")
