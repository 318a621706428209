"""Schedule validator: replays a schedule's counters to prove every wait is satisfied.

`walk` interleaves the SMs' straight-line programs the way the GPU may: each SM runs
until a wait whose counter is short, then the next SM gets a turn. If a full round makes
no progress while programs remain, the schedule deadlocks and the error names every
blocked SM, the counter it waits on and the value it needs. The CPU simulator drives the
same walk with `on_exec` running the task bodies.
"""
from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp

from ..dialects.schedule import CounterOp, ExecOp, ScheduleOp, SignalOp, WaitOp
from ..errors import ScheduleError


def schedule_of(module: ModuleOp) -> ScheduleOp:
    for op in module.ops:
        if isinstance(op, ScheduleOp):
            return op
    raise ScheduleError("module has no adamk.schedule")


def walk(module: ModuleOp, on_exec=None, epoch: int = 1, counters: dict | None = None, on_op=None) -> dict:
    """Run one step; returns the counters. `counters` carries state across steps.
    `on_exec(op)` runs each task; `on_op(sm, op)` sees every op as its SM passes it."""
    declared = {c.sym_name.data: c.per_step.value.data for c in module.ops if isinstance(c, CounterOp)}
    counters = counters if counters is not None else {name: 0 for name in declared}
    programs = [list(sm.body.block.ops) for sm in schedule_of(module).sms]
    pcs = [0] * len(programs)
    while True:
        progress = False
        for sm, prog in enumerate(programs):
            while pcs[sm] < len(prog):
                op = prog[pcs[sm]]
                if isinstance(op, WaitOp):
                    name = op.counter.data
                    if name not in declared:
                        raise ScheduleError(f"SM {sm} waits on undeclared counter '{name}'")
                    if op.count.value.data != declared[name]:
                        raise ScheduleError(f"SM {sm} waits for {op.count.value.data} signals of '{name}', "
                                            f"but {declared[name]} arrive per step")
                    if counters[name] < epoch * op.count.value.data:
                        break
                elif isinstance(op, ExecOp) and on_exec is not None:
                    on_exec(op)
                elif isinstance(op, SignalOp):
                    counters[op.counter.data] += op.count.value.data
                if on_op is not None:
                    on_op(sm, op)
                pcs[sm] += 1
                progress = True
        if all(pc == len(p) for pc, p in zip(pcs, programs)):
            break
        if not progress:
            blocked = [f"SM {sm} at '{programs[sm][pc].counter.data}' ({counters[programs[sm][pc].counter.data]}"
                       f"/{epoch * programs[sm][pc].count.value.data})"
                       for sm, pc in enumerate(pcs) if pc < len(programs[sm])]
            raise ScheduleError("schedule deadlocks: " + ", ".join(blocked[:8]) +
                                (f" and {len(blocked) - 8} more" if len(blocked) > 8 else ""))
    for name, per_step in declared.items():
        if counters[name] != epoch * per_step:
            raise ScheduleError(f"counter '{name}' ends the step at {counters[name]}, expected {epoch * per_step}")
    return counters
