"""Turn a placement (which tasks each SM runs, in order) into schedule-level IR.

Shared by the placement passes (round-robin, the DAG search, the grid-barrier variant).
Tasks pass data through tagged activations, so the only synchronisation a program needs is
what its tasks read: before each task, one `adamk.poll` per range of a tagged activation its
kind reads (the task's loads of those elements are its wait; a write publishes itself, so
nothing is signalled). With `barrier=True` (the ablation's barrier variant) every SM also
passes one grid-wide barrier between consecutive ops (it signals `barrier.<k>` after its
tasks of op k, and waits for all SMs before op k + 1), whose polls then never wait.
"""
from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block

from ..dialects.schedule import (
    CounterOp, ExecOp, LoopBeginOp, LoopEndOp, PollOp, ScheduleOp, SignalOp, WaitOp, sm_program,
)
from ..dialects.task import BufferOp, TaskOp
from ..errors import ScheduleError
from ..kinds import kind as task_kind
from ..kinds.base import TAGGED_DTYPES


def op_groups(tasks: list[TaskOp]) -> list[str]:
    """Source ops in program order."""
    return list(dict.fromkeys(t.source.data for t in tasks))


def polls(task, tagged: set[str]) -> list[PollOp]:
    """The polls before `task`: what its kind reads of the tagged activations (in the slot it reads)."""
    return [PollOp(buffer, b, e, task.slot(buffer)) for buffer, b, e in task_kind(task.kind.data).reads(task)
            if buffer in tagged]

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


def _with_loop(ops: list, layers: int, first_body: int, last_body: int) -> list:
    """`ops` with the loop body's tasks (tasks first_body..last_body, with their polls) between
    loop markers; every SM gets the markers, even with no body task, so every program has the
    same shape. The program is topological, so prologue, body and epilogue tasks come in order."""
    execs = [i for i, o in enumerate(ops) if isinstance(o, ExecOp)]
    before = [i for i in execs if ops[i].task_id.value.data < first_body]
    body = [i for i in execs if first_body <= ops[i].task_id.value.data <= last_body]
    start = before[-1] + 1 if before else 0
    end = body[-1] + 1 if body else start
    return [*ops[:start], LoopBeginOp(layers), *ops[start:end], LoopEndOp(), *ops[end:]]


def emit_schedule(module: ModuleOp, programs: list[list[int]], block_threads: int, stages: int, in_flight: int,
                  smem_budget: int, barrier: bool = False) -> None:
    """Replace the task-level body of `module` with the schedule of `programs` (task indices
    per SM, each SM's in program order)."""
    buffers = [o for o in module.ops if isinstance(o, BufferOp)]
    tasks = [o for o in module.ops if isinstance(o, TaskOp)]
    tagged = {b.sym_name.data for b in buffers if b.dtype.data in TAGGED_DTYPES}
    sources = op_groups(tasks)
    counters = ({f"barrier.{k}": CounterOp(f"barrier.{k}", k, len(programs)) for k in range(len(sources) - 1)}
                if barrier else {})
    layers = max((b.copies for b in buffers if b.role.data == "kv_cache"), default=1)
    body = [i for i, t in enumerate(tasks) if t.in_loop]          # the layer loop's tasks
    if body and body[-1] - body[0] + 1 != len(body):
        raise ScheduleError("the layer loop's tasks are not consecutive in program order")
    sms = []
    for index, program in enumerate(programs):
        ops = []
        for k, source in enumerate(sources if barrier else [None]):
            if k:
                ops.append(WaitOp(f"barrier.{k - 1}", len(programs)))
            for i in program:
                if source is None or tasks[i].source.data == source:
                    ops += [*polls(tasks[i], tagged), ExecOp(i, tasks[i].copy_body_properties())]
            if barrier and k < len(sources) - 1:
                ops.append(SignalOp(f"barrier.{k}", 1))
        if body:
            ops = _with_loop(ops, layers, body[0], body[-1])
        sms.append(sm_program(index, ops))

    schedule = ScheduleOp(len(programs), block_threads, stages, in_flight, sms)
    for b in buffers:
        b.detach()
    module.body.detach_block(0)
    module.body.add_block(Block([*buffers, *counters.values(), schedule, *sms]))
    check_smem(schedule, smem_budget)
