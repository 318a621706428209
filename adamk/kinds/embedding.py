"""The embedding task of a whole model: for each sequence b of the batch the hidden state of its
token at its position pos[b], row `tokens[b, pos[b]]` of the embedding table, written to the
hidden state's slot 0 (csrc/kernels/embedding.cuh). The ids live on the device, one row
[max_seq_len + 1] per sequence: the host writes the prompt's, each step's argmax the next one."""
from __future__ import annotations

from .base import BF16, TaskKind, rows, shadow_writes


class Embedding(TaskKind):
    name = "embedding"
    roles = frozenset({"tokens", "table", "out"})

    def cost(self, op, pos) -> dict:
        begin, end = op.tile_range
        return {"read_bytes": op.param("batch") * (end - begin) * BF16}

    def reads(self, op):
        return []          # the token id: host memory of this step (no activation)

    def writes(self, op):       # and, at a batch, the hidden state's bf16 shadow (passes/tile.py)
        return rows(op, op.buffer("out"), op.param("N"), *op.tile_range) + shadow_writes(op)

    def simulate(self, sim, op) -> None:
        begin, end = op.tile_range
        for b in range(op.param("batch")):
            token = int(sim.buf(op, "tokens")[b, sim.pos[b]])
            if not 0 <= token < op.param("vocab"):
                raise ValueError(f"token id {token} of sequence {b} outside the vocabulary 0..{op.param('vocab') - 1}")
            row = sim.buf(op, "table")[token, begin:end]
            sim.buf(op, "out")[b, begin:end] = row
            if op.buffer("pairs"):
                sim.buf(op, "pairs")[b, begin:end] = row      # unrounded, as linear.finish()

    def functions(self, em, op, name) -> list[str]:
        buf, n, ids = em.buf_of(op), op.param("N"), op.param("max_seq_len") + 1   # tokens: [batch, ids]
        # a batch: each sequence's token at its position, into its row
        return [*em.signature(f"embedding_{name}", "int begin, int end"),
                *em.per_sequence(op.param("batch"), lambda at, step, _seq: (
                    f"embedding_task<{n}>({step}, task, {at(buf('out'), n)}, {at(buf('tokens', 'int'), ids)}, "
                    f"{buf('table', 'bf16_t')}, {op.param('vocab')}, begin, end"
                    + (f", {at(buf('pairs', 'paired_t'), n)});" if op.buffer("pairs") else ");"))),
                "}"]

    def call(self, em, op, page, new_run) -> list[str]:
        begin, end = op.tile_range
        return self.plain_call(em, op, "embedding", (begin, end), f"row tokens[pos], columns [{begin}, {end})")
