"""CPU simulator: executes schedule-level IR task by task in numpy (float32).

It walks the SMs' programs with the schedule validator's interleaving (so a deadlock is
found the same way), and runs each `adamk.exec` with the same tiling as the GPU: a linear
task computes only its rows (and its K-part's columns) from the prologue-applied input
of every sequence of the batch, an attention task handles the query heads of its tile (or
their part of the sequence) of its one sequence, the group's first rotating and appending k/v
at that sequence's position; combine tasks add the parts in order.
Activations start as NaN, so a read of something no task wrote shows up in the result. It
is the first oracle for the passes, before any GPU.
"""
from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from .dialects.schedule import ExecOp
from .dialects.task import BufferOp, slot_index
from .kinds import kind as task_kind
from .kinds.argmax import logits_of
from .search.validate import schedule_of, walk


def _shape(b: BufferOp) -> tuple[int, ...]:
    shape = tuple(b.shape.get_values())
    return shape if b.slots is None else (b.copies, *shape)


class Simulator:
    """`weights`: name -> array; a layer-indexed weight (a whole model's) is given per layer,
    by each layer's name (the buffer's `layer_names`), or stacked under the buffer's name."""

    def __init__(self, module: ModuleOp, weights: dict[str, np.ndarray], layer_names: dict | None = None):
        self.module = module
        self.decls = {b.sym_name.data: b for b in module.ops if isinstance(b, BufferOp)}
        self.mem: dict[str, np.ndarray] = {}        # a layer-indexed buffer as [slots, *shape]
        for name, b in self.decls.items():
            shape = _shape(b)
            if b.role.data == "weight":
                names = (layer_names or {}).get(name)
                w = (np.stack([np.asarray(weights[n], np.float32) for n in names]) if names
                     else np.asarray(weights[name], dtype=np.float32).reshape(shape))
                if w.shape != shape:
                    raise ValueError(f"weight '{name}' has shape {w.shape}, the schedule expects {shape}")
                self.mem[name] = w
            elif b.role.data in ("kv_cache", "tokens", "position"):
                self.mem[name] = np.zeros(shape, np.int64 if b.dtype.data == "i32" else np.float32)
        self.counters = None
        self.epoch = 0
        self.logits = logits_of(o for sm in schedule_of(module).sms for o in sm.ops if isinstance(o, ExecOp))

    def step(self, x, pos) -> np.ndarray:
        """One step, each sequence b of the batch at its position `pos[b]` (an int for a batch of
        one): of a layer, `x` [batch, hidden] the hidden states in and the outputs returned; of a
        whole model, `x` [batch] the token ids at `pos` and the logits [batch, vocab] returned (the
        next ids are then `self.mem["tokens"][b, pos[b] + 1]`)."""
        for name, b in self.decls.items():
            if b.role.data in ("activation", "output"):
                self.mem[name] = np.full(_shape(b), np.nan, np.float32)
        whole = "tokens" in self.decls
        batch = self.decls["tokens" if whole else "x"].shape.get_values()[0]
        self.pos = np.array(pos, np.int64).reshape(-1)
        if self.pos.shape != (batch,):
            raise ValueError(f"{self.pos.size} positions for a batch of {batch}")
        max_seq = self.mem["k_cache"].shape[-2]
        if not ((0 <= self.pos) & (self.pos < max_seq)).all():
            raise ValueError(f"positions {self.pos.tolist()} outside the KV cache's 0..{max_seq - 1}")
        if whole:
            self.mem["tokens"][np.arange(batch), self.pos] = np.array(x, np.int64).reshape(batch)
        else:
            self.mem["x"] = np.asarray(x, np.float32).reshape(_shape(self.decls["x"]))
        self.epoch += 1
        self.counters = walk(self.module, self.exec, epoch=self.epoch, counters=self.counters)
        if whole:
            return self.mem[self.logits].reshape(batch, -1).copy()
        return self.mem["y"].copy()

    def exec(self, op: ExecOp, layer: int):
        self.layer = layer
        task_kind(op.kind.data).simulate(self, op)      # adamk/kinds: one description per kind

    def buf(self, op: ExecOp, role: str) -> np.ndarray:
        """The buffer `op` names in `role`: its slot at the current layer (task.py)."""
        name = op.buffer(role)
        if self.decls[name].slots is None:
            return self.mem[name]
        return self.mem[name][slot_index(op, name, self.layer)]

    def vec(self, op: ExecOp, role: str) -> np.ndarray:
        """The buffer `op` names in `role`, flat (its slot at the current layer)."""
        return self.buf(op, role).reshape(-1)
