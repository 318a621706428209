"""What every task kind provides (adamk/kinds/__init__.py), and helpers they share."""
from __future__ import annotations

import numpy as np

BF16, F32 = 2, 4


def f32_literal(v: float) -> str:
    """A float constant of generated C++ (finite: the frontend refuses NaN and Inf)."""
    if not np.isfinite(v):
        raise ValueError(f"{v} has no C++ literal here; the frontend should have refused it")
    s = str(np.float32(v))
    return s + ("f" if any(c in s for c in ".e") else ".f")


class TaskKind:
    name: str
    roles: frozenset           # buffer roles every task of the kind names

    def cost(self, tile, k_split: int, pos: int, k_len: int, k: int, prologue: str, head_dim: int,
             parts: int) -> dict:
        """The fields of its cost.TaskCost: stage_bytes, read_bytes, inputs."""
        raise NotImplementedError

    def simulate(self, sim, op) -> None:
        """Execute one task of the kind in the CPU simulator (sim.mem holds the buffers)."""
        raise NotImplementedError

    def functions(self, em, op, name: str) -> list[str]:
        """kernel.cu's functions for the op of `op` (its constants filled in), named after `name`."""
        raise NotImplementedError

    def call(self, em, op, waits, page, new_run: bool) -> list[str]:
        """The consumers' lines that run task `op` (waits before it, its ring page `page`)."""
        raise NotImplementedError

    @staticmethod
    def waiting_call(em, op, waits, function: str, args, what: str) -> list[str]:
        """The call of a task whose function waits itself: `function_op<n>(s, b, task, waits, *args)`."""
        task_id = op.task_id.value.data
        return ([] if waits else em.marks(task_id)) + [
            f"  {function}_{em.op_name(op)}(s, b, {task_id}, {em.waits_ref(waits, task_id)}, "
            f"{', '.join(map(str, args))});  // {em.comment(op)}: {what}"]

    def pages(self, op) -> int:
        """Ring pages a task of the kind streams (the producer's line)."""
        return 0

    def staged(self, op):
        """What the task's input staging leaves in the work area, or None (the work area is
        used otherwise, so the next linear stages again)."""
        return None


class CombineKind(TaskKind):
    """A combine of a split op's parts over the tile [begin, end): it waits itself, reads the
    parts in fixed order; its function is `combine_op<n>(s, b, task, waits, begin, end)`."""

    def call(self, em, op, waits, page, new_run) -> list[str]:
        begin, end = op.tile_range
        return self.waiting_call(em, op, waits, "combine", (begin, end), f"[{begin}, {end}), sum of parts")
