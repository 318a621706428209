"""Schedule level of the `adamk` dialect: what every SM runs, in order.

`adamk.schedule` describes the persistent kernel (blocks, threads, pages in flight, shared
memory); each block's program is a `func.func @sm<i>` after it in the module: a straight line
of `adamk.poll` (the next task reads these elements of a tagged activation, and waits until
each carries this step's epoch), `adamk.exec` (run one task body), and, in the ablation's
grid-barrier variant only, `adamk.wait` (spin until a counter reaches ``epoch * count``) and
`adamk.signal` (add to a counter, with release ordering); ended by `func.return`. Tasks pass
data through tagged activations (csrc/kernels/tagged.cuh), so a write publishes itself: no
signal between tasks.
An upstream function rather than an adamk region op: upstream MLIR verifies a region's block
only with a terminator, and an IRDL-defined op can be neither a terminator nor exempt from one
(adamk/dialects/irdl.py). Counters are declared by `adamk.counter`; they only grow, and the
launch's epoch makes every wait target fresh, so nothing resets them between steps.

A whole model's program runs the layer loop's body tasks once per layer: they stand between
`adamk.loop_begin` (with the trip count) and `adamk.loop_end`, markers in the straight line
rather than a region, for the same reason. `Program.expanded()` is the line as it runs.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from xdsl.dialects.builtin import FunctionType, IntegerAttr, StringAttr, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Block, Region
from xdsl.irdl import IRDLOperation, irdl_op_definition, opt_prop_def, prop_def
from xdsl.utils.exceptions import VerifyException

from .. import smem

from .task import TaskBody


@irdl_op_definition
class CounterOp(IRDLOperation):
    """A dependency counter in global memory; `per_step` signals arrive each step."""
    name = "adamk.counter"
    sym_name = prop_def(StringAttr)
    index = prop_def(IntegerAttr)
    per_step = prop_def(IntegerAttr)

    def __init__(self, sym_name: str, index: int, per_step: int):
        super().__init__(properties={"sym_name": StringAttr(sym_name), "index": IntegerAttr(index, i64),
                                     "per_step": IntegerAttr(per_step, i64)})

    def verify_(self):
        if self.per_step.value.data <= 0:
            raise VerifyException(f"adamk.counter @{self.sym_name.data}: per_step must be positive")


@irdl_op_definition
class PollOp(IRDLOperation):
    """The next `adamk.exec` reads elements [begin, end) of the tagged activation `buffer` (flat)
    and starts on them only once every one carries this step's epoch. Its task's kind says what it
    reads (adamk/kinds `reads`); the kernel's loads of those elements are the wait."""
    name = "adamk.poll"
    buffer = prop_def(StringAttr)
    begin = prop_def(IntegerAttr)
    end = prop_def(IntegerAttr)
    slot = opt_prop_def(IntegerAttr)     # a layer-indexed buffer: slot (layer +) c, as its task's (task.py)

    def __init__(self, buffer: str, begin: int, end: int, slot: int | None = None):
        props = {"buffer": StringAttr(buffer), "begin": IntegerAttr(begin, i64), "end": IntegerAttr(end, i64)}
        if slot is not None:
            props["slot"] = IntegerAttr(slot, i64)
        super().__init__(properties=props)

    @property
    def range(self) -> tuple[int, int]:
        return self.begin.value.data, self.end.value.data

    def slot_at(self, layer: int) -> int:
        """Its slot at layer `layer` (layer 0 outside the loop)."""
        return (self.slot.value.data + layer) if self.slot is not None else 0

    def verify_(self):
        begin, end = self.range
        if not 0 <= begin < end:
            raise VerifyException(f"adamk.poll on @{self.buffer.data}: [{begin}, {end}) is not a non-empty range")


@irdl_op_definition
class WaitOp(IRDLOperation):
    """Block until `counter` >= epoch * `count` (acquire)."""
    name = "adamk.wait"
    counter = prop_def(StringAttr)
    count = prop_def(IntegerAttr)

    def __init__(self, counter: str, count: int):
        super().__init__(properties={"counter": StringAttr(counter), "count": IntegerAttr(count, i64)})

    def verify_(self):
        if self.count.value.data <= 0:
            raise VerifyException(f"adamk.wait on @{self.counter.data}: count must be positive")


@irdl_op_definition
class SignalOp(IRDLOperation):
    """Add `count` to `counter` once every thread of the block finished the tasks before it
    (release); one signal may publish a run of tasks of the same op."""
    name = "adamk.signal"
    counter = prop_def(StringAttr)
    count = prop_def(IntegerAttr)

    def __init__(self, counter: str, count: int = 1):
        super().__init__(properties={"counter": StringAttr(counter), "count": IntegerAttr(count, i64)})

    def verify_(self):
        if self.count.value.data <= 0:
            raise VerifyException(f"adamk.signal on @{self.counter.data}: count must be positive")


@irdl_op_definition
class ExecOp(TaskBody):
    """Run one task body; `task_id` is its index in schedule order (for diagnostics)."""
    name = "adamk.exec"
    task_id = prop_def(IntegerAttr)

    def __init__(self, task_id: int, properties):
        super().__init__(properties={**properties, "task_id": IntegerAttr(task_id, i64)})


@irdl_op_definition
class LoopBeginOp(IRDLOperation):
    """The ops up to `adamk.loop_end` run `layers` times, at layer 0, 1, ...: the layer loop."""
    name = "adamk.loop_begin"
    layers = prop_def(IntegerAttr)

    def __init__(self, layers: int):
        super().__init__(properties={"layers": IntegerAttr(layers, i64)})

    def verify_(self):
        if self.layers.value.data < 1:
            raise VerifyException(f"adamk.loop_begin: layers {self.layers.value.data} must be at least 1")


@irdl_op_definition
class LoopEndOp(IRDLOperation):
    """Ends the layer loop's body."""
    name = "adamk.loop_end"

    def __init__(self):
        super().__init__()


class Program(NamedTuple):
    """One block's program: `func.func @sm<index>`, its ops without the closing `func.return`."""
    index: int
    ops: list
    func: FuncOp

    def expanded(self) -> list[tuple[object, int]]:
        """(op, layer) in the order the block runs them: the loop's body once per layer (layer 0
        outside the loop), without the markers."""
        out, body, layers = [], None, 0
        for op in self.ops:
            if isinstance(op, LoopBeginOp):
                body, layers = [], op.layers.value.data
            elif isinstance(op, LoopEndOp):
                out += [(o, layer) for layer in range(layers) for o in body]
                body = None
            elif body is not None:
                body.append(op)
            else:
                out.append((op, 0))
        return out


_SM_NAME = re.compile(r"sm(0|[1-9][0-9]*)")


def sm_program(index: int, ops=()) -> FuncOp:
    """`func.func @sm<index>() { ops; func.return }`: the straight-line program of block `index`."""
    return FuncOp(f"sm{index}", FunctionType.from_lists([], []), Region(Block([*ops, ReturnOp()])))


def _program(fn: FuncOp) -> Program | None:
    match = _SM_NAME.fullmatch(fn.sym_name.data)
    if match is None:
        return None
    return Program(int(match.group(1)), [o for o in fn.body.block.ops if not isinstance(o, ReturnOp)], fn)


def _plan(programs, stages: int) -> smem.SmPlan:
    return smem.sm_plan((o.footprint for sm in programs for o in sm.ops if isinstance(o, ExecOp)), stages)


@irdl_op_definition
class ScheduleOp(IRDLOperation):
    """The persistent kernel: `num_sms` blocks of `block_threads`, `smem_bytes` of dynamic
    shared memory each: its plan with `stages` weight pages in its ring, of which at most
    `in_flight` are being copied at once (smem.py, ring.cuh). The blocks' programs are the
    `func.func @sm<i>` that follow it in the module, i in order."""
    name = "adamk.schedule"
    num_sms = prop_def(IntegerAttr)
    block_threads = prop_def(IntegerAttr)
    stages = prop_def(IntegerAttr)
    in_flight = prop_def(IntegerAttr)
    smem_bytes = prop_def(IntegerAttr)

    def __init__(self, num_sms: int, block_threads: int, stages: int, in_flight: int, programs):
        """`programs`: the `sm_program`s the caller puts after it, to size its shared memory."""
        peak = _plan([_program(p) for p in programs], stages).peak
        super().__init__(properties={"num_sms": IntegerAttr(num_sms, i64),
                                     "block_threads": IntegerAttr(block_threads, i64),
                                     "stages": IntegerAttr(stages, i64), "in_flight": IntegerAttr(in_flight, i64),
                                     "smem_bytes": IntegerAttr(peak, i64)})

    @property
    def sms(self) -> list[Program]:
        """The programs of the module's `func.func @sm<i>`, in module order."""
        block = self.parent_block()
        if block is None:
            return []
        return [p for p in (_program(o) for o in block.ops if isinstance(o, FuncOp)) if p is not None]

    def plan(self) -> smem.SmPlan:
        """The shared-memory layout of every SM: ring slots as large as the largest page of any
        task, the largest work area, so one function per op serves every SM."""
        return _plan(self.sms, self.stages.value.data)

    def verify_(self):
        sms = self.sms
        if [s.index for s in sms] != list(range(self.num_sms.value.data)):
            raise VerifyException(f"adamk.schedule: expected func.func @sm0..@sm{self.num_sms.value.data - 1} in "
                                  f"order, got {['@sm%d' % s.index for s in sms]}")
        for s in sms:
            in_loop = False
            for op in s.ops:
                if not isinstance(op, (PollOp, WaitOp, ExecOp, SignalOp, LoopBeginOp, LoopEndOp)):
                    raise VerifyException(f"@sm{s.index}: '{op.name}' is not an adamk.poll, wait, exec, signal or "
                                          "loop marker")
                if isinstance(op, (LoopBeginOp, LoopEndOp)):
                    if in_loop == isinstance(op, LoopBeginOp):
                        raise VerifyException(f"@sm{s.index}: unbalanced {op.name} (one loop, not nested)")
                    in_loop = not in_loop
                elif isinstance(op, ExecOp) and op.in_loop != in_loop:
                    raise VerifyException(f"@sm{s.index}: task {op.sym_name.data} is "
                                          f"{'a loop body task outside' if op.in_loop else 'not a loop body task but in'}"
                                          " the layer loop")
            if in_loop:
                raise VerifyException(f"@sm{s.index}: adamk.loop_begin without adamk.loop_end")
            if not isinstance(s.func.body.block.last_op, ReturnOp) or s.func.function_type.inputs.data:
                raise VerifyException(f"@sm{s.index}: a program takes no arguments and ends with func.return")
        if self.stages.value.data < 1:
            raise VerifyException(f"adamk.schedule: stages {self.stages.value.data} must be at least 1")
        if not 1 <= self.in_flight.value.data <= self.stages.value.data:
            raise VerifyException(f"adamk.schedule: in_flight {self.in_flight.value.data} must be in 1..stages "
                                  f"({self.stages.value.data})")
        need = self.plan().peak
        if self.smem_bytes.value.data < need:
            raise VerifyException(f"adamk.schedule: smem_bytes {self.smem_bytes.value.data} < {need} B, "
                                  "what its shared-memory plan needs")


SCHEDULE_OPS = [CounterOp, PollOp, WaitOp, SignalOp, ExecOp, ScheduleOp, LoopBeginOp, LoopEndOp]
