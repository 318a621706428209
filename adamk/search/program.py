"""Turn a placement (which tasks each SM runs, in order) into schedule-level IR.

Shared by the placement passes (round-robin, the DAG search, the grid-barrier variant).
Counters are per source op: a consumer waits for the whole producer op (`<op>.done`
reaching its task count), once per SM, before the first task there that needs it; a run
of same-op tasks on an SM publishes with one release signal of the run's length. With
`barrier=True` the dependency waits are replaced by one grid-wide barrier between
consecutive ops instead (every SM signals `barrier.<k>` after its tasks of op k, and
waits for all SMs before op k + 1): the ablation's barrier variant.
"""
from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block

from ..dialects.schedule import CounterOp, ExecOp, ScheduleOp, SignalOp, WaitOp, sm_program
from ..dialects.task import BufferOp, TaskOp
from ..errors import ScheduleError


def counter_name(source: str) -> str:
    return f"{source}.done"


def op_groups(tasks: list[TaskOp]) -> list[str]:
    """Source ops in program order."""
    return list(dict.fromkeys(t.source.data for t in tasks))


def check_smem(schedule: ScheduleOp, budget: int):
    """The plan fits the per-block budget, or an error naming its biggest tasks."""
    plan = schedule.plan()
    if plan.peak > budget:
        execs = [o for sm in schedule.sms for o in sm.ops if isinstance(o, ExecOp)]
        stage = max(execs, key=lambda o: o.stage_bytes.value.data)
        work = max(execs, key=lambda o: o.work_bytes.value.data)
        raise ScheduleError(f"the kernel needs {plan.peak} B of shared memory per block ({plan.depth} pages x "
                            f"{plan.slot_bytes} B for task {stage.sym_name.data}, their barriers, and "
                            f"{plan.work_bytes} B work area for task {work.sym_name.data}); the per-block budget "
                            f"is {budget} B")


def emit_schedule(module: ModuleOp, programs: list[list[int]], block_threads: int, stages: int, smem_budget: int,
                  barrier: bool = False, queue: bool = False) -> None:
    """Replace the task-level body of `module` with the schedule of `programs` (task indices
    per SM, each SM's in program order). `queue=True` (the work-queue variant, where any block
    may run any task): every task waits for all its producer ops and signals alone."""
    buffers = [o for o in module.ops if isinstance(o, BufferOp)]
    tasks = [o for o in module.ops if isinstance(o, TaskOp)]
    sources = op_groups(tasks)
    count = {s: sum(t.source.data == s for t in tasks) for s in sources}
    if barrier:
        counters = {f"barrier.{k}": CounterOp(f"barrier.{k}", k, len(programs)) for k in range(len(sources) - 1)}
    else:
        waited_on = [s for s in sources if any(d.owner.source.data == s for t in tasks for d in t.deps)]
        counters = {counter_name(s): CounterOp(counter_name(s), i, count[s]) for i, s in enumerate(waited_on)}

    sms = []
    for index, program in enumerate(programs):
        ops, seen = [], set()
        if barrier:
            for k, source in enumerate(sources):
                if k:
                    ops.append(WaitOp(f"barrier.{k - 1}", len(programs)))
                ops += [ExecOp(i, tasks[i].copy_body_properties()) for i in program if tasks[i].source.data == source]
                if k < len(sources) - 1:
                    ops.append(SignalOp(f"barrier.{k}", 1))
        else:
            for i in program:
                t = tasks[i]
                for src in sorted({d.owner.source.data for d in t.deps}, key=sources.index):
                    if src not in seen or queue:
                        seen.add(src)
                        ops.append(WaitOp(counter_name(src), count[src]))
                pending = 0
                if (ops and isinstance(ops[-1], SignalOp) and ops[-1].counter.data == counter_name(t.source.data)
                        and not queue):
                    pending = ops.pop().count.value.data        # extend the run's signal past this task
                ops.append(ExecOp(i, t.copy_body_properties()))
                if counter_name(t.source.data) in counters:
                    ops.append(SignalOp(counter_name(t.source.data), pending + 1))
        sms.append(sm_program(index, ops))

    schedule = ScheduleOp(len(programs), block_threads, stages, sms)
    for b in buffers:
        b.detach()
    module.body.detach_block(0)
    module.body.add_block(Block([*buffers, *counters.values(), schedule, *sms]))
    check_smem(schedule, smem_budget)
