"""schedule-round-robin: task-level IR -> schedule-level IR.

Reads the `adamk.task` DAG (in program order, which is topological); writes an
`adamk.schedule` with task i on SM i mod num_sms, one `adamk.counter` per source op that
some task waits on, and on every SM, before each task, an `adamk.wait` for each producer
op it depends on that this SM has not already waited for this step. Because every SM
runs its tasks in the global topological order, every wait is on work that comes earlier
everywhere, so the schedule cannot deadlock. A run of tasks of one op with no wait between
them publishes with one signal of the run's length: consumers wait for the whole op
anyway, and each signal costs a memory fence. (The DAG search replaces this placement.)
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block
from xdsl.passes import ModulePass

from ..dialects.schedule import CounterOp, ExecOp, ScheduleOp, SignalOp, SmOp, WaitOp
from ..dialects.task import BufferOp, TaskOp
from ..errors import ScheduleError


def check_smem(schedule: ScheduleOp, budget: int):
    """Every SM's plan fits the per-block budget, or an error naming the SM and its biggest tasks."""
    for sm in schedule.sms:
        plan = schedule.plan(sm)
        if plan.peak > budget:
            execs = [o for o in sm.body.block.ops if isinstance(o, ExecOp)]
            stage = max(execs, key=lambda o: o.stage_bytes.value.data)
            work = max(execs, key=lambda o: o.work_bytes.value.data)
            raise ScheduleError(f"SM {sm.index.value.data} needs {plan.peak} B of shared memory ({plan.depth} stages "
                                f"x {plan.slot_bytes} B for task {stage.sym_name.data} + {plan.work_bytes} B work "
                                f"area for task {work.sym_name.data}); the per-block budget is {budget} B")


def counter_name(source: str) -> str:
    return f"{source}.done"


@dataclass(frozen=True)
class RoundRobinSchedulePass(ModulePass):
    name = "schedule-round-robin"
    num_sms: int = 1
    block_threads: int = 256
    smem_budget: int = 99 * 1024
    stages: int = 2

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        buffers = [o for o in op.ops if isinstance(o, BufferOp)]
        tasks = [o for o in op.ops if isinstance(o, TaskOp)]
        tasks_per_source: dict[str, int] = {}
        for t in tasks:
            tasks_per_source[t.source.data] = tasks_per_source.get(t.source.data, 0) + 1
        waited_on = sorted({d.owner.source.data for t in tasks for d in t.deps},
                           key=list(tasks_per_source).index)
        counters = {s: CounterOp(counter_name(s), i, tasks_per_source[s]) for i, s in enumerate(waited_on)}

        programs: list[list] = [[] for _ in range(self.num_sms)]
        seen: list[set] = [set() for _ in range(self.num_sms)]
        for task_id, t in enumerate(tasks):
            sm = task_id % self.num_sms
            for src in sorted({d.owner.source.data for d in t.deps}, key=list(tasks_per_source).index):
                if src not in seen[sm]:
                    seen[sm].add(src)
                    programs[sm].append(WaitOp(counter_name(src), tasks_per_source[src]))
            program = programs[sm]
            if program and isinstance(program[-1], SignalOp) and program[-1].counter.data == counter_name(
                    t.source.data):
                pending = program.pop().count.value.data        # extend the run's signal past this task
            else:
                pending = 0
            program.append(ExecOp(task_id, t.copy_body_properties()))
            if t.source.data in counters:
                program.append(SignalOp(counter_name(t.source.data), pending + 1))

        schedule = ScheduleOp(self.num_sms, self.block_threads, self.stages,
                              [SmOp(i, p) for i, p in enumerate(programs)])
        check_smem(schedule, self.smem_budget)
        for b in buffers:
            b.detach()
        op.body.detach_block(0)
        op.body.add_block(Block([*buffers, *counters.values(), schedule]))
