"""schedule-round-robin: task-level IR -> schedule-level IR, task i on SM i mod num_sms.

Reads the `adamk.task` DAG (in program order, which is topological); writes an
`adamk.schedule` (program.py) with task i on SM i mod num_sms. Every SM runs its tasks in
the global topological order, so every wait is on work that comes earlier everywhere and
the schedule cannot deadlock. The baseline the DAG search is compared against; with
`barrier=True`, the same placement with one grid-wide barrier between ops. The work-queue
variant (`schedule="queue"`) is compiled from this placement too: its codegen ignores the SMs
and lets blocks take tasks at run time.
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
    in_flight: int = 2
    barrier: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        n_tasks = sum(isinstance(o, TaskOp) for o in op.ops)
        emit_schedule(op, round_robin(n_tasks, self.num_sms), self.block_threads, self.stages, self.in_flight,
                      self.smem_budget, self.barrier)


def round_robin(n_tasks: int, num_sms: int) -> list[list[int]]:
    """Task i on SM i mod num_sms, each SM's in program order."""
    return [list(range(sm, n_tasks, num_sms)) for sm in range(num_sms)]
