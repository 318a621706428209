"""Cost model: the predicted time of every task of a schedule, and the per-SM clock the DAG
search places tasks with.

Each SM runs its program in order. A linear task's weights stream into its shared-memory
stage, issued when the linear task `stages - 1` places earlier on the same SM starts (the
ring of smem.py): the SM's copies queue behind each other at the bandwidth one SM gets
when every SM pulls at once (`sm_bytes_per_us`) and land `dram_latency_us` later. A task
starts when the previous one has ended and its waits are satisfied (`sync_latency_us`
after the last signal it needs), pays `task_overhead_us` (call, barriers, signals), plus
`fresh_input_us` if it waited (its inputs are new, so they come from L2, not L1), then
computes: a linear reads its inputs through its prologue (`input_us_per_k` per element
read: its K-chunk, twice for silu_mul, plus the whole row for rmsnorm's sum of squares;
norm weights are not counted) and, once its weights have landed, reads its stage at
`smem_bytes_per_us`; an attention part streams its KV rows at `kv_bytes_per_us`; a
combine reads its partials at `sm_bytes_per_us`. A step costs its makespan plus
`launch_us`.

Defaults come from the spec table (`CostModel.for_gpu`); `adamk calibrate` measures them
on a GPU from profiling builds and writes a profile (`CostModel.load`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import deque

from xdsl.dialects.builtin import ModuleOp

from ..dialects.schedule import ExecOp, SignalOp, WaitOp
from ..dialects.task import TaskBody
from ..errors import AdamkError
from ..kinds import kind as task_kind
from ..targets import GPU
from .validate import schedule_of, walk



@dataclasses.dataclass(frozen=True)
class CostModel:
    gpu: str
    sm_bytes_per_us: float            # DRAM bytes one SM pulls per us while all SMs pull
    dram_latency_us: float = 1.0      # a copy's issue to its bytes in shared memory, unloaded
    sync_latency_us: float = 1.0      # a release signal to the waiter seeing it
    task_overhead_us: float = 0.5     # per task: the call, barriers, signals
    input_us_per_k: float = 0.0       # a linear task staging one input element (prologue applied)
    fresh_input_us: float = 0.0       # a task right after a wait: its inputs come from L2
    smem_bytes_per_us: float = 150e3  # a block reading its weight stage (8 warps, 16 B per lane)
    kv_bytes_per_us: float = 10e3     # an attention part streaming its KV rows
    launch_us: float = 3.0            # launch to first instruction, and the grid's exit
    source: str = "spec table"

    @classmethod
    def for_gpu(cls, gpu: GPU) -> "CostModel":
        share = gpu.dram_gbps * 1e3 / gpu.num_sms            # bytes per us per SM at the datasheet rate
        return cls(gpu=gpu.name, sm_bytes_per_us=0.85 * share, kv_bytes_per_us=0.4 * share)

    @classmethod
    def load(cls, path, gpu: GPU) -> "CostModel":
        try:
            if os.path.getsize(path) > 1 << 20:
                raise ValueError("over 1 MB")
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            model = cls(**{k: data[k] for k in data if k in {f.name for f in dataclasses.fields(cls)}})
        except (OSError, ValueError, TypeError, RecursionError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e if not isinstance(e, RecursionError) \
                else "nested too deeply"
            raise AdamkError(f"{path}: not a cost profile written by `adamk calibrate` ({reason})") from None
        model.check(path)
        if model.gpu != gpu.name:
            raise AdamkError(f"{path} was calibrated on {model.gpu}; the target is {gpu.name}")
        return dataclasses.replace(model, source=str(path))

    def check(self, where):
        """Every figure a finite number; rates positive, times not negative."""
        if not isinstance(self.gpu, str):
            raise AdamkError(f"{where}: 'gpu' must be a GPU name")
        for f in dataclasses.fields(self):
            if f.name in ("gpu", "source"):
                continue
            v = getattr(self, f.name)
            rate = f.name.endswith("per_us")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (rate and v == 0):
                raise AdamkError(f"{where}: '{f.name}' is {v!r}; it must be a finite number, "
                                 f"{'positive' if rate else 'not negative'}")

    def save(self, path):
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)
            f.write("\n")


@dataclasses.dataclass(frozen=True)
class TaskCost:
    """What the model needs to know of one task."""
    kind: str
    stage_bytes: int = 0     # weights staged through the ring (linear)
    read_bytes: int = 0      # KV rows (attention) or partial sums (combines) it reads
    inputs: int = 0          # input elements a linear's prologue reads (see `of`)

    @classmethod
    def of(cls, kind: str, tile, k_split: int, pos: int, k_len: int = 0, k: int = 0, prologue: str = "none",
           head_dim: int = 0, parts: int = 1) -> "TaskCost":
        return cls(kind, **task_kind(kind).cost(tile, k_split, pos, k_len, k, prologue, head_dim, parts))

    @classmethod
    def of_exec(cls, op: TaskBody, pos: int) -> "TaskCost":
        """The cost of a task op (adamk.task or adamk.exec)."""
        linear = op.kind.data == "linear"
        return cls.of(op.kind.data, op.tile_range, op.k_split.value.data, pos, k_len=op.k_range[1] if linear else 0,
                      k=op.param("K") or 0, prologue=op.param("prologue") or "none",
                      head_dim=op.param("head_dim") or 0, parts=op.param("parts") or 1)


class SmClock:
    """One SM's clock under the model: run tasks in order, get their (start, end)."""

    def __init__(self, model: CostModel, stages: int):
        self.model, self.stages = model, stages
        self.now = 0.0                 # the end of the last task
        self.stream_free = 0.0         # when the SM's queue of weight copies drains
        self.linear_starts: deque = deque(maxlen=max(1, stages - 1))

    def run(self, task: TaskCost, ready: float = 0.0, waited: bool = False) -> tuple[float, float]:
        m = self.model
        start = max(self.now, ready)
        fixed = m.task_overhead_us + (m.fresh_input_us if waited else 0.0)
        if task.kind == "linear":
            if self.stages == 1:
                issue = start
            else:   # issued when the linear task stages - 1 earlier started (at 0: the program's prologue)
                issue = self.linear_starts[0] if len(self.linear_starts) == self.linear_starts.maxlen else 0.0
            self.stream_free = max(issue, self.stream_free) + task.stage_bytes / m.sm_bytes_per_us
            arrival = self.stream_free + m.dram_latency_us
            self.linear_starts.append(start)
            staged = start + fixed + task.inputs * m.input_us_per_k
            end = max(staged, arrival) + task.stage_bytes / m.smem_bytes_per_us
        elif task.kind == "attention":
            end = start + fixed + task.read_bytes / m.kv_bytes_per_us
        else:
            end = start + fixed + task.read_bytes / m.sm_bytes_per_us
        self.now = end
        return start, end


def predict_timeline(schedule: ModuleOp, model: CostModel, pos: int) -> dict[int, tuple[int, float, float]]:
    """Predicted (sm, start, end) in us of every task_id for one step at position `pos`,
    replaying the schedule's waits and signals on per-SM clocks."""
    stages = schedule_of(schedule).stages.value.data
    clocks: dict[int, SmClock] = {}
    ready: dict[int, float] = {}
    waited: set[int] = set()
    signals: dict[str, list[float]] = {}
    tasks: dict[int, tuple[int, float, float]] = {}

    def on_op(sm: int, op):
        clock = clocks.setdefault(sm, SmClock(model, stages))
        if isinstance(op, WaitOp):
            times = sorted(signals[op.counter.data])
            ready[sm] = max(ready.get(sm, 0.0), times[op.count.value.data - 1] + model.sync_latency_us)
            waited.add(sm)
        elif isinstance(op, ExecOp):
            start, end = clock.run(TaskCost.of_exec(op, pos), ready.get(sm, 0.0), sm in waited)
            waited.discard(sm)
            tasks[op.task_id.value.data] = (sm, start, end)
        elif isinstance(op, SignalOp):
            signals.setdefault(op.counter.data, []).extend([clock.now] * op.count.value.data)

    walk(schedule, on_op=on_op)
    return tasks


def predict_step_us(schedule: ModuleOp, model: CostModel, pos: int) -> float:
    """Makespan of one step at position `pos`, plus the launch."""
    return model.launch_us + max((end for _, _, end in predict_timeline(schedule, model, pos).values()), default=0.0)
