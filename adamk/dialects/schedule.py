"""Schedule level of the `adamk` dialect: what every SM runs, in order.

`adamk.schedule` holds one `adamk.sm` region per block of the persistent kernel. Each
region is a straight line of `adamk.wait` (spin until a counter reaches
``epoch * count``), `adamk.exec` (run one task body) and `adamk.signal` (add one to a
counter, with release ordering). Counters are declared by `adamk.counter`; they only
grow, and the launch's epoch makes every wait target fresh, so nothing resets them
between steps.
"""
from __future__ import annotations

from xdsl.dialects.builtin import IntegerAttr, StringAttr, i64
from xdsl.ir import Block, Region
from xdsl.irdl import IRDLOperation, irdl_op_definition, prop_def, region_def, traits_def
from xdsl.traits import NoTerminator
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
class SmOp(IRDLOperation):
    """The straight-line program of one block (one SM)."""
    name = "adamk.sm"
    traits = traits_def(NoTerminator())
    index = prop_def(IntegerAttr)
    body = region_def("single_block")

    def __init__(self, index: int, ops=()):
        super().__init__(properties={"index": IntegerAttr(index, i64)}, regions=[Region(Block(ops))])

    def verify_(self):
        for op in self.body.block.ops:
            if not isinstance(op, (WaitOp, ExecOp, SignalOp)):
                raise VerifyException(f"adamk.sm {self.index.value.data}: '{op.name}' is not a wait, exec or signal")


@irdl_op_definition
class ScheduleOp(IRDLOperation):
    """The persistent kernel: `num_sms` blocks of `block_threads`, `smem_bytes` of dynamic
    shared memory each: its plan with `stages` weight pages in flight (smem.py)."""
    name = "adamk.schedule"
    traits = traits_def(NoTerminator())
    num_sms = prop_def(IntegerAttr)
    block_threads = prop_def(IntegerAttr)
    stages = prop_def(IntegerAttr)
    smem_bytes = prop_def(IntegerAttr)
    body = region_def("single_block")

    def __init__(self, num_sms: int, block_threads: int, stages: int, sms):
        super().__init__(properties={"num_sms": IntegerAttr(num_sms, i64),
                                     "block_threads": IntegerAttr(block_threads, i64),
                                     "stages": IntegerAttr(stages, i64), "smem_bytes": IntegerAttr(0, i64)},
                         regions=[Region(Block(sms))])
        self.properties["smem_bytes"] = IntegerAttr(self.plan().peak, i64)

    @property
    def sms(self) -> list[SmOp]:
        return list(self.body.block.ops)

    def plan(self) -> smem.SmPlan:
        """The shared-memory layout of every SM: ring slots as large as the largest page of any
        task, the largest work area, so one function per op serves every SM."""
        return smem.sm_plan((o.footprint for sm in self.sms for o in sm.body.block.ops if isinstance(o, ExecOp)),
                            self.stages.value.data)

    def verify_(self):
        sms = self.sms
        if not all(isinstance(s, SmOp) for s in sms):
            raise VerifyException("adamk.schedule: its body may only hold adamk.sm regions")
        if [s.index.value.data for s in sms] != list(range(self.num_sms.value.data)):
            raise VerifyException(f"adamk.schedule: expected adamk.sm 0..{self.num_sms.value.data - 1} in order, "
                                  f"got {[s.index.value.data for s in sms]}")
        if self.stages.value.data < 1:
            raise VerifyException(f"adamk.schedule: stages {self.stages.value.data} must be at least 1")
        need = self.plan().peak
        if self.smem_bytes.value.data < need:
            raise VerifyException(f"adamk.schedule: smem_bytes {self.smem_bytes.value.data} < {need} B, "
                                  "what its shared-memory plan needs")


SCHEDULE_OPS = [CounterOp, WaitOp, SignalOp, ExecOp, SmOp, ScheduleOp]
