"""Schedule validator: replays a schedule's polls and counters to prove every wait is satisfied.

`walk` interleaves the SMs' straight-line programs the way the GPU may: each SM runs until a
poll of elements not yet written this step (or, in the barrier variant, a wait whose counter is
short), then the next SM gets a turn. Every element of a tagged activation is written exactly
once per step. If a full round makes no progress while programs remain, the schedule deadlocks
and the error names every blocked SM, what it waits for, and the cycle of SMs each waiting for a
write (or signal) the next one would make. The CPU simulator drives the same walk with
`on_exec` running the task bodies; the cost model with `on_op` timing them.
"""
from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from ..dialects.schedule import CounterOp, ExecOp, PollOp, ScheduleOp, SignalOp, WaitOp
from ..dialects.task import BufferOp, slot_index
from ..errors import ScheduleError
from ..kinds import kind as task_kind
from ..kinds.base import TAGGED_DTYPES


def schedule_of(module: ModuleOp) -> ScheduleOp:
    for op in module.ops:
        if isinstance(op, ScheduleOp):
            return op
    raise ScheduleError("module has no adamk.schedule")


def tagged_sizes(module: ModuleOp) -> dict[str, int]:
    """Elements of one slot of every tagged activation buffer (one layer's; task.py)."""
    return {b.sym_name.data: int(np.prod(b.shape.get_values())) for b in module.ops
            if isinstance(b, BufferOp) and b.dtype.data in TAGGED_DTYPES}


def tagged_slots(module: ModuleOp) -> dict[str, int]:
    """Slots of every tagged activation buffer (1 unless layer-indexed)."""
    return {b.sym_name.data: b.copies for b in module.ops if isinstance(b, BufferOp) and b.dtype.data in TAGGED_DTYPES}


def located(op, layer: int, sizes: dict[str, int]):
    """(buffer, begin, end) of what ExecOp or PollOp `op` reads / writes at layer `layer`, as flat
    ranges of the whole buffer (every slot): the writes of an exec, the range of a poll."""
    if isinstance(op, PollOp):
        b, e = op.range
        at = op.slot_at(layer) * sizes.get(op.buffer.data, 0)
        return [(op.buffer.data, at + b, at + e)]
    out = []
    for buffer, b, e in task_kind(op.kind.data).writes(op):
        if buffer in sizes:
            at = slot_index(op, buffer, layer) * sizes[buffer]
            out.append((buffer, at + b, at + e))
    return out


def _what(at, counters, epoch, written) -> str:
    op, layer, where = at
    if isinstance(op, PollOp):
        (_, b, e), = where
        done = int(written[op.buffer.data][b:e].sum())
        where = f" of layer {layer}" if op.slot is not None else ""
        return f"'{op.buffer.data}'[{op.range[0]}:{op.range[1]}]{where} ({done}/{e - b} written)"
    return f"'{op.counter.data}' ({counters[op.counter.data]}/{epoch * op.count.value.data})"


def _unblocks(wait, at) -> bool:
    """Would `at` (an op, its layer and its located ranges), run later by another SM, make progress
    on `wait`?"""
    (wop, _, wwhere), (op, _, where) = wait, at
    if isinstance(wop, PollOp):
        (buffer, b, e), = wwhere
        return isinstance(op, ExecOp) and any(buf == buffer and wb < e and b < we for buf, wb, we in where)
    return isinstance(op, SignalOp) and op.counter == wop.counter


def _deadlock(programs, pcs, counters, epoch, written) -> str:
    """Name the cycle: SM a waits for what only SM b (still blocked) will write or signal, ...
    (`programs`: `located_programs`)."""
    waiting = {sm: programs[sm][pc] for sm, pc in enumerate(pcs) if pc < len(programs[sm])}
    releasers = {sm: [other for other, pc in enumerate(pcs) if other != sm and any(
        _unblocks(wait, o) for o in programs[other][pc:])] for sm, wait in waiting.items()}
    _what_ = lambda at: _what(at, counters, epoch, written)
    blocked = ", ".join(f"SM {sm} at {_what_(w)}" for sm, w in list(waiting.items())[:8])
    blocked += f" and {len(waiting) - 8} more" if len(waiting) > 8 else ""
    for first in waiting:                       # follow "waits for a write or signal from" until an SM repeats
        path, sm = [], first
        while sm not in path and releasers[sm]:
            path.append(sm)
            sm = releasers[sm][0]
        if sm in path:
            cycle = path[path.index(sm):] + [sm]
            steps = " -> ".join(f"SM {a} waits on {_what_(waiting[a])}, which SM {b} "
                                "would supply later" for a, b in zip(cycle, cycle[1:]))
            return f"schedule deadlocks: cycle {steps}; blocked: {blocked}"
    starved = next(sm for sm in waiting if not releasers[sm])
    return (f"schedule deadlocks: SM {starved} waits on {_what_(waiting[starved])}, "
            f"which no SM will supply; blocked: {blocked}")


def check_polls(module: ModuleOp):
    """Each task is preceded by exactly the polls of what its kind reads of the tagged activations
    (the kernel's staging waits for those elements, so the IR must say the same)."""
    tagged = tagged_sizes(module)
    for sm in schedule_of(module).sms:
        pending = []
        for op in sm.ops:
            if isinstance(op, PollOp):
                b, e = op.range
                if op.buffer.data not in tagged or e > tagged[op.buffer.data]:
                    raise ScheduleError(f"@sm{sm.index}: adamk.poll of '{op.buffer.data}'[{b}:{e}] is not within a "
                                        "tagged activation")
                slot = () if op.slot is None else (op.slot.value.data,)      # c of a layer-indexed buffer
                pending.append((op.buffer.data, b, e, *slot))
            elif isinstance(op, ExecOp):
                want = [(*r, *(() if op.slot(r[0]) is None else (op.slot(r[0]),)))
                        for r in task_kind(op.kind.data).reads(op) if r[0] in tagged]
                if pending != want:
                    raise ScheduleError(f"@sm{sm.index}: task {op.sym_name.data} reads {want} of tagged activations "
                                        f"but is preceded by polls of {pending}")
                pending = []


def validate(module: ModuleOp, num_sms: int, smem_per_block: int):
    """Every check a schedule must pass before codegen: all blocks co-resident (one block
    per SM: no more blocks than SMs, shared memory within the per-block budget), the polls
    before every task are what it reads, and two consecutive steps replay without a deadlock,
    with every tagged element written exactly once per step and every counter at exactly its
    per-step count times the epoch after each (so monotonic counters need no reset between
    steps, and a word of the last step never passes for this one's)."""
    sched = schedule_of(module)
    if sched.num_sms.value.data > num_sms:
        raise ScheduleError(f"the schedule has {sched.num_sms.value.data} blocks; only {num_sms} SMs can hold "
                            "them at once")
    if sched.smem_bytes.value.data > smem_per_block:
        raise ScheduleError(f"the schedule needs {sched.smem_bytes.value.data} B of shared memory per block; "
                            f"the budget is {smem_per_block} B")
    check_polls(module)
    programs = located_programs(module)
    walk(module, epoch=2, counters=walk(module, epoch=1, programs=programs), programs=programs)


def located_programs(module: ModuleOp) -> list[list[tuple[object, int, list]]]:
    """Every SM's (op, layer, located(op, layer)) in the order it runs them (located: [] for a wait
    or a signal): what a walk reads, found once for both of validate's steps (the 1B model's
    validate 1.7 -> 1.0-1.5 s)."""
    sizes = tagged_sizes(module)
    return [[(op, layer, located(op, layer, sizes) if isinstance(op, (PollOp, ExecOp)) else [])
             for op, layer in sm.expanded()] for sm in schedule_of(module).sms]


def walk(module: ModuleOp, on_exec=None, epoch: int = 1, counters: dict | None = None, on_op=None,
         programs: list | None = None) -> dict:
    """Run one step; returns the counters. `counters` carries state across steps, `programs`
    (`located_programs` of the module) the SMs' ops across walks.
    `on_exec(op, layer)` runs each task; `on_op(sm, op, layer, where)` sees every op as its SM
    passes it (layer: the layer loop's iteration, 0 outside it; where: what `located` gives)."""
    declared = {c.sym_name.data: c.per_step.value.data for c in module.ops if isinstance(c, CounterOp)}
    counters = counters if counters is not None else {name: 0 for name in declared}
    sizes, slots = tagged_sizes(module), tagged_slots(module)
    written = {name: np.zeros(n * slots[name], bool) for name, n in sizes.items()}
    programs = programs if programs is not None else located_programs(module)
    pcs = [0] * len(programs)
    while True:
        progress = False
        for sm, prog in enumerate(programs):
            while pcs[sm] < len(prog):
                op, layer, where = prog[pcs[sm]]
                if isinstance(op, PollOp):
                    (buffer, b, e), = where
                    if buffer not in written or e > len(written[buffer]) or op.range[1] > sizes[buffer]:
                        raise ScheduleError(f"SM {sm} polls '{buffer}'[{op.range[0]}:{op.range[1]}] at layer "
                                            f"{layer}, which is not within a tagged activation")
                    if not written[buffer][b:e].all():
                        break
                elif isinstance(op, WaitOp):
                    name = op.counter.data
                    if name not in declared:
                        raise ScheduleError(f"SM {sm} waits on undeclared counter '{name}'")
                    if op.count.value.data != declared[name]:
                        raise ScheduleError(f"SM {sm} waits for {op.count.value.data} signals of '{name}', "
                                            f"but {declared[name]} arrive per step")
                    if counters[name] < epoch * op.count.value.data:
                        break
                elif isinstance(op, ExecOp):
                    for buffer, b, e in where:
                        if written[buffer][b:e].any():
                            in_layer = f" (layer {layer})" if op.in_loop else ""
                            raise ScheduleError(f"task {op.sym_name.data} on SM {sm} writes '{buffer}'[{b}:{e}]{in_layer}, "
                                                "part of which another task wrote this step")
                        written[buffer][b:e] = True
                    if on_exec is not None:
                        on_exec(op, layer)
                elif isinstance(op, SignalOp):
                    counters[op.counter.data] += op.count.value.data
                if on_op is not None:
                    on_op(sm, op, layer, where)
                pcs[sm] += 1
                progress = True
        if all(pc == len(p) for pc, p in zip(pcs, programs)):
            break
        if not progress:
            raise ScheduleError(_deadlock(programs, pcs, counters, epoch, written))
    for name, per_step in declared.items():
        if counters[name] != epoch * per_step:
            raise ScheduleError(f"counter '{name}' ends the step at {counters[name]}, expected {epoch * per_step}")
    for name, done in written.items():
        if not done.all():
            i = int(np.argmin(done))
            where = f" of slot {i // sizes[name]}" if slots[name] > 1 else ""
            raise ScheduleError(f"no task writes '{name}'[{i % sizes[name]}]{where} this step, yet it is an activation")
    return counters
