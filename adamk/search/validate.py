"""Schedule validator: replays a schedule's counters to prove every wait is satisfied.

`walk` interleaves the SMs' straight-line programs the way the GPU may: each SM runs
until a wait whose counter is short, then the next SM gets a turn. If a full round makes
no progress while programs remain, the schedule deadlocks and the error names every
blocked SM, the counter it waits on and the value it needs, and the cycle of SMs each
waiting for a signal the next one would send. The CPU simulator drives the
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


def _deadlock(programs, pcs, counters, epoch) -> str:
    """Name the cycle: SM a waits on a counter that only SM b (still blocked) will signal, ..."""
    waiting = {sm: programs[sm][pc] for sm, pc in enumerate(pcs) if pc < len(programs[sm])}
    signallers = {sm: [other for other, pc in enumerate(pcs) if any(
        isinstance(o, SignalOp) and o.counter == wait.counter for o in programs[other][pc:])]
        for sm, wait in waiting.items()}
    blocked = ", ".join(f"SM {sm} at '{w.counter.data}' ({counters[w.counter.data]}/{epoch * w.count.value.data})"
                        for sm, w in list(waiting.items())[:8])
    blocked += f" and {len(waiting) - 8} more" if len(waiting) > 8 else ""
    for first in waiting:                       # follow "waits for a signal from" until an SM repeats
        path, sm = [], first
        while sm not in path and signallers[sm]:
            path.append(sm)
            sm = signallers[sm][0]
        if sm in path:
            cycle = path[path.index(sm):] + [sm]
            steps = " -> ".join(f"SM {a} waits on '{waiting[a].counter.data}', signalled later by SM {b}"
                                for a, b in zip(cycle, cycle[1:]))
            return f"schedule deadlocks: cycle {steps}; blocked: {blocked}"
    starved = next(sm for sm in waiting if not signallers[sm])
    return (f"schedule deadlocks: SM {starved} waits on '{waiting[starved].counter.data}', which no SM will "
            f"signal again; blocked: {blocked}")


def validate(module: ModuleOp, num_sms: int, smem_per_block: int):
    """Every check a schedule must pass before codegen: all blocks co-resident (one block
    per SM: no more blocks than SMs, shared memory within the per-block budget), and two
    consecutive steps replay without a deadlock with every counter at exactly its
    per-step count times the epoch after each (so monotonic counters need no reset
    between steps)."""
    sched = schedule_of(module)
    if sched.num_sms.value.data > num_sms:
        raise ScheduleError(f"the schedule has {sched.num_sms.value.data} blocks; only {num_sms} SMs can hold "
                            "them at once")
    if sched.smem_bytes.value.data > smem_per_block:
        raise ScheduleError(f"the schedule needs {sched.smem_bytes.value.data} B of shared memory per block; "
                            f"the budget is {smem_per_block} B")
    walk(module, epoch=2, counters=walk(module, epoch=1))


def walk(module: ModuleOp, on_exec=None, epoch: int = 1, counters: dict | None = None, on_op=None) -> dict:
    """Run one step; returns the counters. `counters` carries state across steps.
    `on_exec(op)` runs each task; `on_op(sm, op)` sees every op as its SM passes it."""
    declared = {c.sym_name.data: c.per_step.value.data for c in module.ops if isinstance(c, CounterOp)}
    counters = counters if counters is not None else {name: 0 for name in declared}
    programs = [list(sm.ops) for sm in schedule_of(module).sms]
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
            raise ScheduleError(_deadlock(programs, pcs, counters, epoch))
    for name, per_step in declared.items():
        if counters[name] != epoch * per_step:
            raise ScheduleError(f"counter '{name}' ends the step at {counters[name]}, expected {epoch * per_step}")
    return counters
