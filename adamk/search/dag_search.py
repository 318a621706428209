"""The offline DAG search: the tiling of every op, the SM and order of every task, and so
where each task's weights are staged, minimising the cost model's predicted makespan.

Placement (`place`): ops in topological order; an op's tasks become ready one sync
latency after the last task of every op they read from (counters are per op); longest
task first, each goes to the SM whose clock (cost.SmClock, which also models the SM's
weight stream, still as the per-task stages of v10: docs/search.md) frees up first, lowest
index on ties. Each SM's program stays in topological order, so no wait can deadlock.

Tiling (`DagSearch.run`): starting from the ksplit pass's tiling, coordinate descent over
the ops: for each op, every candidate tiling within the shared-memory model (linears: 8,
16 or 32 rows per task, whole or split over K in 2 or 4 parts; attention:
1, 2, 4, 8 or num_sms // heads sequence parts; only unsplit ones with `ksplit=False`) is tiled (the tile pass's TaskBuilder,
without building IR) and placed, and kept if the predicted makespan drops. Deterministic
(fixed candidate order, strict improvement, stable sorts), bounded by `budget_s`: a
search that hits its budget stops early, and only then can the result depend on the
machine's speed (the compiler warns).

`SearchSchedulePass` then places the chosen task IR with the same `place` and emits the
schedule.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, i64
from xdsl.passes import ModulePass

from .. import smem
from ..dialects.graph import AttentionOp, LinearOp, shape_of
from ..dialects.task import TaskOp, attr_value
from ..passes.tile import TaskBuilder
from .cost import CostModel, SmClock, TaskCost
from .program import emit_schedule


@dataclass(frozen=True)
class PlacedTask:
    source: str
    producers: frozenset      # source ops it reads from
    cost: TaskCost


def place(tasks: list[PlacedTask], num_sms: int, model: CostModel, stages: int) -> tuple[list[list[int]], float]:
    """(task indices per SM in order, predicted makespan without the launch)."""
    clocks = [SmClock(model, stages) for _ in range(num_sms)]
    programs: list[list[int]] = [[] for _ in range(num_sms)]
    waited_for: list[set] = [set() for _ in range(num_sms)]     # producer ops each SM has waited on
    free = [(0.0, sm) for sm in range(num_sms)]
    finish: dict[str, float] = {}
    by_op: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_op.setdefault(t.source, []).append(i)
    for source, members in by_op.items():
        producers = frozenset().union(*(tasks[i].producers for i in members))
        ready = max((finish[p] for p in producers), default=-model.sync_latency_us) + model.sync_latency_us
        members = sorted(members, key=lambda i: (-(tasks[i].cost.stage_bytes + tasks[i].cost.read_bytes), i))
        end_of_op = 0.0
        for i in members:
            _, sm = heapq.heappop(free)
            waits = bool(producers - waited_for[sm])             # program.py waits once per SM and producer
            waited_for[sm] |= producers
            _, end = clocks[sm].run(tasks[i].cost, ready, waits)
            programs[sm].append(i)
            heapq.heappush(free, (end, sm))
            end_of_op = max(end_of_op, end)
        finish[source] = end_of_op
    return programs, max(finish.values(), default=0.0)


def _placed_from_records(records, pos: int) -> list[PlacedTask]:
    out = []
    for r in records:
        param = {key: attr_value(a) for key, a in r.params.items()
                 if key in ("K", "k_chunk", "prologue", "head_dim", "parts")}
        k_len = smem.k_range(param["K"], param["k_chunk"], r.k_index)[1] if r.kind == "linear" else 0
        cost = TaskCost.of(r.kind, r.tile, r.k_split, pos, k_len=k_len, k=param.get("K", 0),
                           prologue=param.get("prologue", "none"), head_dim=param.get("head_dim", 0),
                           parts=param.get("parts", 1))
        out.append(PlacedTask(r.source, frozenset(records[d].source for d in r.deps), cost))
    return out


@dataclass
class SearchResult:
    predicted_us: float
    evaluations: int
    seconds: float
    tiling: dict          # op label -> (tile_rows, k_split)
    complete: bool        # False: the time budget ended it early (the result may depend on machine speed)


class DagSearch:
    def __init__(self, model: CostModel, num_sms: int, stages: int, stage_bytes: int, smem_budget: int,
                 tile_rows: int, dtype: str, pos: int, budget_s: float = 25.0, progress=None, ksplit: bool = True):
        self.model, self.num_sms, self.stages, self.stage_bytes = model, num_sms, stages, stage_bytes
        self.smem_budget, self.tile_rows, self.dtype, self.pos = smem_budget, tile_rows, dtype, pos
        self.budget_s, self.progress = budget_s, progress or (lambda done, total, best: None)
        self.ksplit = ksplit     # False: only tilings without K-splitting

    def evaluate(self, fn) -> float:
        builder = TaskBuilder(self.tile_rows, self.dtype, self.stage_bytes)
        builder.build(fn)
        return place(_placed_from_records(builder.tasks, self.pos), self.num_sms, self.model, self.stages)[1]

    def candidates(self, op) -> list[tuple]:
        if isinstance(op, AttentionOp):
            heads, max_seq = op.num_heads.value.data, shape_of(op.k_cache)[2]
            parts = {1, 2, 4, 8, max(1, self.num_sms // heads)} if self.ksplit else {1}
            return [(None, s) for s in sorted(parts) if s <= max_seq]
        k = shape_of(op.weight)[1]
        out = []
        for rows in (8, 16, 32):
            for parts in (1, 2, 4) if self.ksplit else (1,):
                chunk = smem.k_chunk(k, parts)
                if smem.linear_footprint(rows, chunk, self.stage_bytes).alone(self.stages) <= self.smem_budget:
                    out.append((rows, len(smem.k_parts(k, parts))))
        return list(dict.fromkeys(out))

    def run(self, module: ModuleOp) -> SearchResult:
        start = time.perf_counter()
        fn = next(o for o in module.ops if isinstance(o, func.FuncOp))
        ops = [o for o in fn.body.block.ops if isinstance(o, (LinearOp, AttentionOp))]
        choices = [self.candidates(o) for o in ops]
        best, evaluations, complete = self.evaluate(fn), 1, True
        total = 1 + 2 * sum(len(c) for c in choices)
        self.progress(evaluations, total, best)
        for _ in range(2):                                   # two sweeps of coordinate descent
            improved = False
            for op, cands in zip(ops, choices):
                current = _tiling_of(op)
                for cand in cands:
                    if cand == current:
                        continue
                    if time.perf_counter() - start > self.budget_s:
                        complete = False
                        break
                    _set_tiling(op, cand)
                    t = self.evaluate(fn)
                    evaluations += 1
                    self.progress(evaluations, total, min(best, t))
                    if t < best - 1e-6:
                        best, current, improved = t, cand, True
                    else:
                        _set_tiling(op, current)
            if not improved:
                break
        self.progress(total, total, best)
        tiling = {_label(o): _tiling_of(o) for o in ops}
        return SearchResult(best, evaluations, time.perf_counter() - start, tiling, complete)


def _label(op) -> str:
    return f"linear {op.weight.owner.weight_name.data}" if isinstance(op, LinearOp) else "attention"


def _tiling_of(op) -> tuple:
    rows = op.tile_rows.value.data if isinstance(op, LinearOp) else None
    return rows, op.k_split.value.data


def _set_tiling(op, tiling: tuple):
    rows, parts = tiling
    if rows is not None:
        op.properties["tile_rows"] = IntegerAttr(rows, i64)
    op.properties["k_split"] = IntegerAttr(parts, i64)


@dataclass(frozen=True)
class SearchSchedulePass(ModulePass):
    """schedule-search: task-level IR -> schedule-level IR placed by `place`."""
    name = "schedule-search"
    model: CostModel = None
    num_sms: int = 1
    block_threads: int = 256
    smem_budget: int = 99 * 1024
    stages: int = 2
    pos: int = 0

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        tasks = [o for o in op.ops if isinstance(o, TaskOp)]
        placed = [PlacedTask(t.source.data, frozenset(d.owner.source.data for d in t.deps), TaskCost.of_exec(t, self.pos))
                  for t in tasks]
        programs, _ = place(placed, self.num_sms, self.model, self.stages)
        emit_schedule(op, programs, self.block_threads, self.stages, self.smem_budget)
