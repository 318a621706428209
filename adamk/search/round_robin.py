"""schedule-round-robin: task-level IR -> schedule-level IR, task i on SM i mod num_sms.

Reads the `adamk.task` DAG (in program order, which is topological); writes an
`adamk.schedule` (program.py) with task i on SM i mod num_sms. Every SM runs its tasks in
the global topological order, so every wait is on work that comes earlier everywhere and
the schedule cannot deadlock. The baseline the DAG search is compared against; with
`barrier=True`, the same placement with one grid-wide barrier between ops.
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from ..dialects.task import TaskOp
from .program import emit_schedule


@dataclass(frozen=True)
class RoundRobinSchedulePass(ModulePass):
    name = "schedule-round-robin"
    num_sms: int = 1
    block_threads: int = 256
    smem_budget: int = 99 * 1024
    stages: int = 2
    barrier: bool = False
    queue: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        n_tasks = sum(isinstance(o, TaskOp) for o in op.ops)
        programs = [list(range(sm, n_tasks, self.num_sms)) for sm in range(self.num_sms)]
        emit_schedule(op, programs, self.block_threads, self.stages, self.smem_budget, self.barrier, self.queue)
