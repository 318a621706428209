"""CPU simulator: executes schedule-level IR task by task in numpy (float32).

It walks the SMs' programs with the schedule validator's interleaving (so a deadlock is
found the same way), and runs each `adamk.exec` with the same tiling as the GPU: a linear
task computes only its rows (and its K-part's columns) from the prologue-applied input
vector, an attention task handles the query heads of its tile (or their part of the
sequence), the group's first rotating and appending k/v at `pos`; combine tasks add the parts
in order.
Activations start as NaN, so a read of something no task wrote shows up in the result. It
is the first oracle for the passes, before any GPU.
"""
from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from .dialects.schedule import ExecOp
from .dialects.task import BufferOp
from .kinds import kind as task_kind
from .search.validate import walk


class Simulator:
    def __init__(self, module: ModuleOp, weights: dict[str, np.ndarray]):
        self.module = module
        self.decls = {b.sym_name.data: b for b in module.ops if isinstance(b, BufferOp)}
        self.mem: dict[str, np.ndarray] = {}
        for name, b in self.decls.items():
            shape = tuple(b.shape.get_values())
            if b.role.data == "weight":
                w = np.asarray(weights[name], dtype=np.float32)
                if w.shape != shape:
                    raise ValueError(f"weight '{name}' has shape {w.shape}, the schedule expects {shape}")
                self.mem[name] = w
            elif b.role.data == "kv_cache":
                self.mem[name] = np.zeros(shape, np.float32)
        self.counters = None
        self.epoch = 0

    def step(self, x: np.ndarray, pos: int) -> np.ndarray:
        for name, b in self.decls.items():
            if b.role.data in ("activation", "output"):
                self.mem[name] = np.full(tuple(b.shape.get_values()), np.nan, np.float32)
        self.mem["x"] = np.asarray(x, np.float32).reshape(tuple(self.decls["x"].shape.get_values()))
        self.pos = int(pos)
        self.epoch += 1
        self.counters = walk(self.module, self.exec, epoch=self.epoch, counters=self.counters)
        return self.mem["y"].copy()

    def exec(self, op: ExecOp):
        task_kind(op.kind.data).simulate(self, op)      # adamk/kinds: one description per kind

    def vec(self, op: ExecOp, role: str) -> np.ndarray:
        """The buffer `op` names in `role`, flat."""
        return self.mem[op.buffer(role)].reshape(-1)
