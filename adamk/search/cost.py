"""Cost model: predicted time of one step of a schedule.

Each SM runs its program on its own clock. A task costs its bytes (weights, KV rows,
staged inputs) over the bandwidth one SM gets when all pull at once, plus a fixed
per-task overhead; a wait ends one sync latency after the last signal it needs. The
parameters come from the spec table; calibration against measured kernels comes with the
DAG search.
"""
from __future__ import annotations

import dataclasses

from xdsl.dialects.builtin import ModuleOp

from ..dialects.schedule import ExecOp, SignalOp, WaitOp
from ..targets import GPU
from .validate import walk

BYTES = {"bf16": 2, "f32": 4}


@dataclasses.dataclass(frozen=True)
class CostModel:
    sm_bytes_per_us: float        # one SM's share of DRAM bandwidth
    task_overhead_us: float = 1.0
    sync_latency_us: float = 1.0

    @classmethod
    def for_gpu(cls, gpu: GPU) -> "CostModel":
        return cls(sm_bytes_per_us=gpu.dram_gbps * 1e3 / gpu.num_sms)

    def task_bytes(self, op: ExecOp, pos: int) -> int:
        begin, end = op.tile_range
        kind, parts = op.kind.data, op.k_split.value.data
        if kind == "linear":
            k_len = op.k_range[1]
            return (end - begin) * k_len * BYTES["bf16"] + k_len * BYTES["f32"]
        if kind == "attention":
            return 2 * -(-(pos + 1) // parts) * op.param("head_dim") * BYTES["bf16"]
        if kind == "linear_combine":
            return (end - begin) * parts * BYTES["f32"]
        if kind == "attention_combine":
            return (end - begin) * (op.param("head_dim") + 2) * parts * BYTES["f32"]
        raise ValueError(f"no cost for task kind '{kind}'")

    def task_us(self, op: ExecOp, pos: int) -> float:
        return self.task_overhead_us + self.task_bytes(op, pos) / self.sm_bytes_per_us


def predict_timeline(schedule: ModuleOp, model: CostModel, pos: int) -> dict[int, tuple[int, float, float]]:
    """Predicted (sm, start, end) in us of every task_id for one step at position `pos`,
    replaying the schedule on per-SM clocks."""
    clock: dict[int, float] = {}
    signals: dict[str, list[float]] = {}
    tasks: dict[int, tuple[int, float, float]] = {}

    def on_op(sm: int, op):
        t = clock.get(sm, 0.0)
        if isinstance(op, WaitOp):
            times = sorted(signals[op.counter.data])
            t = max(t, times[op.count.value.data - 1] + model.sync_latency_us)
        elif isinstance(op, ExecOp):
            tasks[op.task_id.value.data] = (sm, t, t + model.task_us(op, pos))
            t = tasks[op.task_id.value.data][2]
        elif isinstance(op, SignalOp):
            signals.setdefault(op.counter.data, []).extend([t] * op.count.value.data)
        clock[sm] = t

    walk(schedule, on_op=on_op)
    return tasks


def predict_step_us(schedule: ModuleOp, model: CostModel, pos: int) -> float:
    """Makespan of one step at position `pos`."""
    return max((end for _, _, end in predict_timeline(schedule, model, pos).values()), default=0.0)
