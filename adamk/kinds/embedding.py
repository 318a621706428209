"""The embedding task of a whole model: the hidden state of the token at `pos`, row
`tokens[pos]` of the embedding table, written to the hidden state's slot 0
(csrc/kernels/embedding.cuh). The ids live on the device: the host writes the prompt's, each
step's argmax the next one."""
from __future__ import annotations

from .base import BF16, TaskKind


class Embedding(TaskKind):
    name = "embedding"
    roles = frozenset({"tokens", "table", "out"})

    def cost(self, op, pos) -> dict:
        begin, end = op.tile_range
        return {"read_bytes": (end - begin) * BF16}

    def reads(self, op):
        return []          # the token id: host memory of this step (no activation)

    def writes(self, op):
        return [(op.buffer("out"), *op.tile_range)]

    def simulate(self, sim, op) -> None:
        begin, end = op.tile_range
        token = int(sim.buf(op, "tokens")[sim.pos])
        if not 0 <= token < op.param("vocab"):
            raise ValueError(f"token id {token} outside the vocabulary 0..{op.param('vocab') - 1}")
        sim.vec(op, "out")[begin:end] = sim.buf(op, "table")[token, begin:end]

    def functions(self, em, op, name) -> list[str]:
        buf = em.buf_of(op)
        return [*em.signature(f"embedding_{name}", "int begin, int end"),
                f"  embedding_task<{op.param('N')}>(s, task, {buf('out')}, {buf('tokens', 'int')}, "
                f"{buf('table', 'bf16_t')}, {op.param('vocab')}, begin, end);",
                "}"]

    def call(self, em, op, page, new_run) -> list[str]:
        begin, end = op.tile_range
        return self.plain_call(em, op, "embedding", (begin, end), f"row tokens[pos], columns [{begin}, {end})")
