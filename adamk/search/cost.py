"""Cost model: the predicted time of every task of a schedule, and the per-SM clock the DAG
search places tasks with.

Each SM runs two lines (ring.cuh). Its producer streams the pages of its tasks (a linear's
weights, an attention part's cached rows), in program order, through a ring of `depth` slots:
page j is issued once slot j % depth is free (the consumers released page j - depth) and page j - in_flight has landed; the copies queue
behind each other at the bandwidth one SM gets when every SM pulls at once
(`sm_bytes_per_us`) and land `dram_latency_us` later. Its consumers run the tasks in order: a
task starts when the previous one has ended and its polls are satisfied (`poll_latency_us`
after the last task that wrote what it reads ended: the word's trip to L2 and back), pays
`task_overhead_us`, and then, by kind:
- a linear task that starts a run of tasks with a new input stages it (`stage_us` plus
  `input_us_per_k` per element its prologue reads: its K-chunk, twice for silu_mul, every
  part's share for a merged attention, plus the whole row for rmsnorm's sum of squares) and
  reads each page once it has landed, at `smem_bytes_per_us`;
- an attention part polls q, k and v (`stage_us`), reads its pages of cached rows the same way
  (their bytes at the step's position, spread over the pages that hold them) and pays its own
  work, `attention_us` (the new row's rotation and append, its trips, merging its lane groups,
  the stores); its pages stream at `kv_share` SM shares (they stream in the chain, while most
  SMs' rings are full); its pages past the step's rows carry nothing: they take their slot and
  their place in flight and land when issued (the kernel issues no copy), costing the consumers
  `empty_page_us` each (the wait and the release);
- a combine stages its parts like an input (`stage_us` + `input_us_per_k` per element).
On a GPU whose producers prefetch the next step's first pages into L2 (sm_90: kinds.NextStepL2Pages
says which, of the tasks before the layer loop and in its first trip), those pages stream at
`l2_share` SM shares: in back-to-back steps the previous step asked L2 for them after its last page
(one share, as DRAM pages, until a calibration fits it; they still land `dram_latency_us` after
their transfer, an L2 hit's latency not being a parameter of its own).
A step costs its makespan plus `launch_us`.

A target's default is the profile measured on it and shipped in adamk/profiles/<GPU>.json
(`CostModel.for_gpu`), else the spec table's guess (`CostModel.spec`); `adamk calibrate`
measures a profile on a GPU from profiling builds (`CostModel.load` reads it). A profile
records the `model` it was fitted for: one of an older execution design is refused.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from pathlib import Path

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from ..dialects.schedule import ExecOp, PollOp, SignalOp, WaitOp
from ..errors import AdamkError
from ..kinds import NextStepL2Pages
from ..kinds import kind as task_kind
from ..kinds.base import TAGGED, restages
from ..targets import GPU, GPUS
from .validate import schedule_of, tagged_sizes, tagged_slots, walk

MODEL = "ring+tagged v2"    # the execution design the parameters describe (v11's per-task stages had none;
                            # v1 had no attention_us and paid a DRAM latency for an empty page)
PROFILES = Path(__file__).resolve().parent.parent / "profiles"    # measured defaults, one per GPU
SPEC = "spec table"


@dataclasses.dataclass(frozen=True)
class CostModel:
    gpu: str
    sm_bytes_per_us: float            # DRAM bytes one SM pulls per us while all SMs pull
    dram_latency_us: float = 1.0      # a page's copy issue to its bytes in shared memory, beyond its transfer
    poll_latency_us: float = 1.0      # a task's last write to a reader's load seeing it
    task_overhead_us: float = 0.2     # per task: the call, the row sums, the stores
    stage_us: float = 1.0             # a staging's fixed cost: its barriers and one round trip to L2
    input_us_per_k: float = 0.0002    # a staging, per input element its prologue reads
    smem_bytes_per_us: float = 150e3  # the consumer warps reading a landed page (8 warps, 16 B per lane)
    launch_us: float = 3.0            # launch to first instruction, and the grid's exit
    attention_us: float = 1.0         # an attention part's own work beyond its pages (docs/search.md)
    empty_page_us: float = 0.05       # a ring page with no bytes: the consumers' wait and release
    kv_share: float = 1.0             # an attention part's pages stream at this many times an SM's share:
                                      # they stream in the chain, while most SMs' rings are full and idle
    l2_share: float = 1.0             # the pages the previous step prefetched into L2 (kinds.NextStepL2Pages) stream
                                      # at this many times an SM's share: as DRAM pages until a calibration
                                      # fits it (profiles before v74 lack it; docs/perf.md v74 says why)
    model: str = MODEL
    source: str = SPEC

    @classmethod
    def spec(cls, gpu: GPU) -> "CostModel":
        """The spec table's guess: a share of the datasheet bandwidth, everything else a default."""
        share = gpu.dram_gbps * 1e3 / gpu.num_sms            # bytes per us per SM at the datasheet rate
        return cls(gpu=gpu.name, sm_bytes_per_us=0.85 * share)

    @classmethod
    def for_gpu(cls, gpu: GPU) -> "CostModel":
        """The profile measured on this GPU and shipped with adamk, else the spec table's guess."""
        shipped = PROFILES / f"{gpu.name}.json"
        return cls.load(shipped, gpu) if shipped.is_file() else cls.spec(gpu)

    @property
    def calibrated(self) -> bool:
        return self.source != SPEC

    @classmethod
    def load(cls, path, gpu: GPU) -> "CostModel":
        try:
            if os.path.getsize(path) > 1 << 20:
                raise ValueError("over 1 MB")
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("model") != MODEL:
                raise ValueError(f"fitted for execution model {data.get('model', 'v11 per-task stages')!r}, not "
                                 f"{MODEL!r}: run `adamk calibrate` again")
            model = cls(**{k: data[k] for k in data if k in {f.name for f in dataclasses.fields(cls)}})
        except (OSError, ValueError, TypeError, RecursionError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e if not isinstance(e, RecursionError) \
                else "nested too deeply"
            raise AdamkError(f"{path}: not a cost profile written by `adamk calibrate` ({reason})") from None
        model.check(path)
        if model.gpu != gpu.name:
            raise AdamkError(f"{path} was calibrated on {model.gpu}; the target is {gpu.name}")
        shipped = Path(path).resolve().parent == PROFILES
        return dataclasses.replace(model, source=f"measured: adamk/profiles/{Path(path).name}" if shipped else str(path))

    def check(self, where):
        """Every figure a finite number; rates positive, times not negative."""
        if not isinstance(self.gpu, str):
            raise AdamkError(f"{where}: 'gpu' must be a GPU name")
        for f in dataclasses.fields(self):
            if f.name in ("gpu", "source", "model"):
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
    stage_bytes: int = 0     # what its ring pages carry (a linear's weights, an attention's cached rows)
    pages: int = 0           # ring pages they take
    read_bytes: int = 0      # partial sums a combine reads
    inputs: int = 0          # input elements a linear's prologue reads (see `of`)
    loaded_pages: int | None = None   # pages that carry bytes (None: all); the rest are empty
    own: str = ""            # the CostModel parameter of the kind's own work per task ("": none)
    share: str = ""          # the CostModel parameter of its pages' rate in SM shares ("": one share)

    @classmethod
    def of_exec(cls, op, pos: int) -> "TaskCost":
        """The cost of a task (adamk.task, adamk.exec or tile.TaskRecord) at position `pos`: its kind's."""
        description = task_kind(op.kind_name)
        return cls(op.kind_name, pages=description.pages(op), own=description.own_cost, share=description.page_share,
                   **description.cost(op, pos))


class SmClock:
    """One SM under the model (the module docstring): its producer's page stream and its consumers'
    clock. `run` the SM's tasks in program order and get each one's (start, end)."""

    def __init__(self, model: CostModel, depth: int, in_flight: int):
        self.model, self.depth, self.in_flight = model, depth, in_flight
        self.now = 0.0                 # the consumers' end of the last task
        self.stream_free = 0.0         # when the SM's share of DRAM bandwidth takes the next page
        self.issued = 0.0              # the producer's last issue (it issues pages in order)
        self.landed: list[float] = []
        self.released: list[float] = []
        self.staged = None             # what the work area holds (kinds' `staged`)
        gpu = GPUS.get(model.gpu)
        self.next_step_l2 = NextStepL2Pages(depth if gpu is not None and gpu.next_step_l2 else 0)

    def _page(self, nbytes: float, consumer: float, loaded: bool = True, share: float = 1.0) -> float:
        """Stream the next page; the consumers, free at `consumer`, read it: when they are done.
        A page that is not `loaded` holds a slot and a place in flight but no bytes; `share`: its
        rate in SM shares of the bandwidth."""
        m, j = self.model, len(self.landed)
        issue = max(self.issued, self.released[j - self.depth] if j >= self.depth else 0.0,
                    self.landed[j - self.in_flight] if j >= self.in_flight else 0.0)
        self.issued = issue
        if not loaded:
            self.landed.append(issue)
            self.released.append(max(consumer, issue) + m.empty_page_us)
            return self.released[-1]
        self.stream_free = max(issue, self.stream_free) + nbytes / (m.sm_bytes_per_us * share)
        self.landed.append(self.stream_free + m.dram_latency_us)
        self.released.append(max(consumer, self.landed[-1]) + nbytes / m.smem_bytes_per_us)
        return self.released[-1]

    def run(self, task: TaskCost, ready: float = 0.0, staged=None) -> tuple[float, float]:
        """`ready`: when its polls are satisfied; `staged`: its kind's `staged` key (a linear
        whose key differs from the work area's stages its input). Returns (start, end); `stamps`
        then holds what a profiling build would stamp (sync.cuh: reached, inputs in, end, data in)."""
        m = self.model
        reached = self.now
        start = max(reached, ready)
        inputs_in = start + m.task_overhead_us
        self.l2_pages = False              # whether this task's pages come from L2
        if task.pages:                   # a linear's weights or an attention part's cached rows
            if restages(staged, self.staged):   # a linear's staging (unless its run's input is held); q, k, v
                inputs_in += m.stage_us + task.inputs * m.input_us_per_k
            loaded = task.pages if task.loaded_pages is None else task.loaded_pages
            share = getattr(m, task.share) if task.share else 1.0
            self.l2_pages = self.next_step_l2.take(task.kind, task.pages)
            if self.l2_pages:                  # the previous step asked L2 for them
                share = m.l2_share
            t, data_in = inputs_in, None
            for p in range(task.pages):
                t = self._page(task.stage_bytes / max(1, loaded), t, p < loaded, share)
                data_in = data_in if data_in is not None else self.landed[-1]
            data_in = max(inputs_in, data_in if data_in is not None else inputs_in)
            t += getattr(m, task.own) if task.own else 0.0
        else:
            inputs_in += m.stage_us + task.read_bytes / TAGGED * m.input_us_per_k
            t = data_in = inputs_in
        self.staged = staged
        self.now = t
        self.stamps = (reached, inputs_in, t, data_in)
        return start, t


def replay(costs: list[TaskCost], deps: list, staged: list, sm_of: list[int], num_sms: int, model: CostModel,
           depth: int, in_flight: int, order=None) -> list[tuple[float, float]]:
    """(start, end) of every task when task i runs on SM sm_of[i], the tasks run in `order` (default:
    index order), a topological order: every task's deps and its SM's earlier tasks come before it."""
    clocks = [SmClock(model, depth, in_flight) for _ in range(num_sms)]
    times: list[tuple[float, float] | None] = [None] * len(costs)
    latest: dict[int, float] = {}      # id of a deps sequence -> when its last task ends (tasks share them)
    for i in order if order is not None else range(len(costs)):
        if id(deps[i]) not in latest:
            latest[id(deps[i])] = max((times[d][1] for d in deps[i]), default=-model.poll_latency_us)
        times[i] = clocks[sm_of[i]].run(costs[i], latest[id(deps[i])] + model.poll_latency_us, staged[i])
    return times


def predict_timeline(schedule: ModuleOp, model: CostModel, pos: int, stamps: dict | None = None,
                     from_l2: set | None = None) -> dict[int, tuple[int, float, float]]:
    """Predicted (sm, start, end) in us of every task_id for one step at position `pos`, replaying
    the schedule's polls (and the barrier variant's waits and signals) on per-SM clocks. `stamps`,
    if given, receives task_id -> (reached, inputs in, end, data in), as a profiling build stamps;
    `from_l2` the (sm, task_id) of the tasks whose pages it streams from L2 (NextStepL2Pages)."""
    sched = schedule_of(schedule)
    depth, in_flight = sched.stages.value.data, sched.in_flight.value.data
    clocks: dict[int, SmClock] = {}
    ready: dict[int, float] = {}
    sizes, slots = tagged_sizes(schedule), tagged_slots(schedule)
    written = {name: np.zeros(n * slots[name]) for name, n in sizes.items()}    # when each element is
    signals: dict[str, list[float]] = {}
    tasks: dict[int, tuple[int, float, float]] = {}
    reach = [set(NextStepL2Pages.reach(sm.ops)) for sm in sched.sms]   # the tasks it may take from L2

    def on_op(sm: int, op, layer: int, where: list):
        clock = clocks.setdefault(sm, SmClock(model, depth, in_flight))
        if isinstance(op, PollOp):
            (buffer, b, e), = where
            ready[sm] = max(ready.get(sm, 0.0), written[buffer][b:e].max() + model.poll_latency_us)
        elif isinstance(op, WaitOp):
            times = sorted(signals[op.counter.data])
            ready[sm] = max(ready.get(sm, 0.0), times[op.count.value.data - 1] + model.poll_latency_us)
        elif isinstance(op, ExecOp):
            description = task_kind(op.kind.data)
            if layer > 0 or op not in reach[sm]:      # past the layer loop's first trip: none
                clock.next_step_l2.close()
            start, end = clock.run(TaskCost.of_exec(op, pos), ready.get(sm, 0.0), description.staged(op))
            if from_l2 is not None and clock.l2_pages:
                from_l2.add((sm, op.task_id.value.data))
            for buffer, b, e in where:
                written[buffer][b:e] = end
            tasks[op.task_id.value.data] = (sm, start, end)
            if stamps is not None:
                stamps[op.task_id.value.data] = clock.stamps
        elif isinstance(op, SignalOp):
            signals.setdefault(op.counter.data, []).extend([clock.now] * op.count.value.data)

    walk(schedule, on_op=on_op)
    return tasks


def predict_step_us(schedule: ModuleOp, model: CostModel, pos: int) -> float:
    """Makespan of one step at position `pos`, plus the launch."""
    return model.launch_us + max((end for _, _, end in predict_timeline(schedule, model, pos).values()), default=0.0)
