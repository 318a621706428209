"""The offline DAG search: the tiling of every op, the SM and order of every task, and so
where each task's weights stream, minimising the cost model's predicted makespans (below).

Objective: the predicted makespan at the compile's position (512, or the last one of a shorter
cache) and, with the same placement, at the longest (`long_pos`, max_seq_len - 1), averaged:
the schedule serves every position, and a split of the attention that is fastest at 512 may
be the slowest at 4095 (docs/perf.md v32-v33).

Placement (`place`): ops in topological order; a task becomes ready one poll latency after the
last task whose writes it reads ends (the tile-exact DAG: kinds' `reads` and `writes`); longest
task first, each goes to the SM whose consumers (cost.SmClock, which also models the SM's
page stream) free up first, lowest index on ties. Each SM's program stays in topological
order, so no poll can deadlock. Round-robin placement is the other candidate: a tiling's value
is the better of the two (`best_placement`), and the descent starts from the ksplit pass's
tiling (what `--schedule round-robin` builds), so the search never settles for a plan it
predicts slower than round-robin.

Tiling (`DagSearch.run`): starting from the ksplit pass's tiling, coordinate descent over
the ops: for each op, every candidate tiling within the shared-memory model (linears: 8,
16 or 32 rows per task, whole or split over K in 2 or 4 parts; attention:
1, 2, 4, 8, 16 or the ksplit default's sequence parts; only unsplit ones with `ksplit=False`) is tiled (the tile pass's TaskBuilder,
without building IR) and placed, and kept if the objective drops. Deterministic
(fixed candidate order, strict improvement, stable sorts), bounded by `budget_s`: a
search that hits its budget stops early, and only then can the result depend on the
machine's speed (the compiler warns).

`SearchSchedulePass` then places the chosen task IR the same way and emits the schedule.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, replace

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, i64
from xdsl.passes import ModulePass

from .. import smem
from ..config import ATTENTION_PARTS, MAX_TILE_ROWS, SEARCH_BUDGET_S
from ..dialects.graph import AttentionOp, LinearOp, shape_of
from ..dialects.task import JoinOp, TaskOp
from ..passes.ksplit import attention_parts
from ..passes.tile import TaskBuilder, merge_weights
from ..kinds import kind as task_kind
from .cost import CostModel, SmClock, TaskCost, replay
from .program import emit_schedule
from .round_robin import round_robin


MAX_OP_TASKS = 8192     # tasks of one op a candidate tiling may have (bounds the search's and the IR's size)


@dataclass(frozen=True)
class PlacedTask:
    source: str
    deps: tuple               # indices of the earlier tasks whose writes it reads
    cost: TaskCost
    staged: object            # its kind's `staged` key (a linear reusing the work area stages nothing)


def place(tasks: list[PlacedTask], num_sms: int, model: CostModel, depth: int,
          in_flight: int) -> tuple[list[list[int]], float, list[int]]:
    """(task indices per SM in order, predicted makespan without the launch, the order it placed
    the tasks in: `replay` of that order on the same SMs gives the same times)."""
    clocks = [SmClock(model, depth, in_flight) for _ in range(num_sms)]
    programs: list[list[int]] = [[] for _ in range(num_sms)]
    free = [(0.0, sm) for sm in range(num_sms)]
    end = [0.0] * len(tasks)
    order: list[int] = []
    by_op: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_op.setdefault(t.source, []).append(i)
    latest: dict[int, float] = {}      # id of a deps tuple -> when its last task ends (tasks share them)
    for members in by_op.values():
        for i in sorted(members, key=lambda i: (-(tasks[i].cost.stage_bytes + tasks[i].cost.read_bytes), i)):
            _, sm = heapq.heappop(free)
            deps = tasks[i].deps
            if id(deps) not in latest:           # every dep is placed already: its end is final
                latest[id(deps)] = max((end[d] for d in deps), default=-model.poll_latency_us)
            ready = latest[id(deps)] + model.poll_latency_us
            end[i] = clocks[sm].run(tasks[i].cost, ready, tasks[i].staged)[1]
            programs[sm].append(i)
            order.append(i)
            heapq.heappush(free, (clocks[sm].now, sm))
    # each SM's program is in the order its clock ran them: op by op (topological), and the tasks
    # of one op never depend on each other
    return programs, max(end, default=0.0), order


def makespan(tasks: list[PlacedTask], sm_of: list[int], order, num_sms: int, model: CostModel, depth: int,
             in_flight: int) -> float:
    """The predicted makespan (without the launch) of task i on SM sm_of[i], run in `order`."""
    times = replay([t.cost for t in tasks], [t.deps for t in tasks], [t.staged for t in tasks], sm_of, num_sms,
                   model, depth, in_flight, order)
    return max((e for _, e in times), default=0.0)


def best_placement(tasks: list[PlacedTask], num_sms: int, model: CostModel, depth: int,
                   in_flight: int, long_tasks: list[PlacedTask] | None = None) -> tuple[list[list[int]], float]:
    """`place`'s programs or round-robin's, whichever the model predicts faster (round-robin on a
    tie), with its predicted time: the makespan of `tasks`, or with `long_tasks` (the same tasks
    costed at the longest position) the mean of both makespans under the one placement."""
    rr_sm = [i % num_sms for i in range(len(tasks))]
    rr_time = makespan(tasks, rr_sm, range(len(tasks)), num_sms, model, depth, in_flight)
    programs, time, order = place(tasks, num_sms, model, depth, in_flight)
    if long_tasks is not None:
        sm_of = [0] * len(tasks)
        for sm, program in enumerate(programs):
            for i in program:
                sm_of[i] = sm
        rr_time = (rr_time + makespan(long_tasks, rr_sm, range(len(tasks)), num_sms, model, depth, in_flight)) / 2
        time = (time + makespan(long_tasks, sm_of, order, num_sms, model, depth, in_flight)) / 2
    return (programs, time) if time < rr_time - 1e-6 else (round_robin(len(tasks), num_sms), rr_time)


def _placed(records, pos: int) -> list[PlacedTask]:
    """PlacedTasks of tile.TaskRecords or adamk.task ops (with their dep indices); tasks with the
    same deps share one tuple, so the placement finds their readiness once."""
    shared: dict[tuple, tuple] = {}
    return [PlacedTask(r.source_name, shared.setdefault(tuple(deps), tuple(deps)),
                       TaskCost.of_exec(r, pos), task_kind(r.kind_name).staged(r)) for r, deps in records]


def _costed(records, pos: int, long_pos: int | None) -> tuple[list[PlacedTask], list[PlacedTask] | None]:
    """`_placed` at `pos`, and at `long_pos` (None where there is none, or it is `pos`): what
    `best_placement` takes."""
    return _placed(records, pos), _placed(records, long_pos) if long_pos not in (None, pos) else None


@dataclass
class SearchResult:
    predicted_us: float
    evaluations: int
    seconds: float
    tiling: dict          # op label -> (tile_rows, k_split)
    complete: bool        # False: the time budget ended it early (the result may depend on machine speed)


class DagSearch:
    def __init__(self, model: CostModel, num_sms: int, stages: int, in_flight: int, stage_bytes: int,
                 smem_budget: int, tile_rows: int, dtype: str, pos: int, budget_s: float = SEARCH_BUDGET_S,
                 progress=None, ksplit: bool = True, attention_parts: int | None = None, long_pos: int | None = None):
        self.model, self.num_sms, self.stages, self.stage_bytes = model, num_sms, stages, stage_bytes
        self.in_flight = in_flight
        self.smem_budget, self.tile_rows, self.dtype, self.pos = smem_budget, tile_rows, dtype, pos
        self.budget_s, self.progress = budget_s, progress or (lambda done, total, best: None)
        self.ksplit = ksplit     # False: only tilings without K-splitting
        self.attention_parts = attention_parts    # fixed by the config: the search keeps it
        self.long_pos = long_pos     # costed too (module doc)

    def tasks(self, fn, part: str = "all") -> tuple[list[PlacedTask], list[PlacedTask] | None]:
        """The tasks of the current tiling: all, or of a whole model only the prologue and one layer
        ("body") or only the LM head and argmax ("epilogue", which then start at once); costed at
        `pos`, and at `long_pos` (None without one)."""
        builder = TaskBuilder(self.tile_rows, self.dtype, self.stage_bytes)
        builder.build(fn, stop_after_loop=part == "body")
        self.peak = smem.sm_plan((r.footprint for r in builder.tasks if r.footprint), self.stages).peak
        records = [(r, r.deps) for r in builder.tasks]
        if part == "epilogue":
            first = max((i for i, r in enumerate(builder.tasks) if r.loop), default=-1) + 1
            records = [(r, [d - first for d in deps if d >= first]) for r, deps in records[first:]]
        return _costed(records, self.pos, self.long_pos)

    def evaluate(self, fn, part: str = "all") -> float:
        """The objective (module doc) of the ops' current tiling, placed the better way (`best_placement`);
        infinite for a tiling whose tasks do not fit the shared-memory budget (a linear's work area
        depends on the tiling of the attention whose parts it merges; program.check_smem checks the whole
        plan again)."""
        tasks, long_tasks = self.tasks(fn, part)
        if self.peak > self.smem_budget:
            return math.inf
        # an epilogue's tasks (the LM head) follow the layer loop: their pages never come from L2
        # (kinds.NextStepL2Pages), so its fresh clocks price them all at one share
        model = replace(self.model, l2_share=1.0) if part == "epilogue" else self.model
        return best_placement(tasks, self.num_sms, model, self.stages, self.in_flight, long_tasks)[1]

    def candidates(self, op) -> list[tuple]:
        if isinstance(op, AttentionOp):
            parts = ({self.attention_parts} if self.attention_parts else
                     {*ATTENTION_PARTS, attention_parts(op, self.num_sms)} if self.ksplit else {1})
            return [(None, s) for s in sorted(parts) if s <= op.max_seq_len]
        (n, k), gated = shape_of(op.weight), op.weight2 is not None
        # splitting K buys parallelism; an op with 8 tiles of 32 rows per SM (an LM head) has plenty,
        # and its split would only add a combine level
        split = self.ksplit and not gated and -(-n // 32) < 8 * self.num_sms      # a gated linear: never split
        out, batch, coef = [], shape_of(op.input)[0], merge_weights(op)
        for rows in (8, 16, 32):
            page_rows = smem.linear_page_rows(rows, gated)
            if page_rows > MAX_TILE_ROWS:          # a gated task's pages hold its rows of both weights
                continue
            # a batch's inputs may need more parts than 4 to fit: then the fewest that do too
            fewest = smem.fewest_k_parts(k, page_rows, self.stage_bytes, self.stages, self.smem_budget, batch, coef)
            more = {fewest} if fewest > 4 and self.ksplit and not gated else set()
            for parts in sorted(({1, 2, 4} if split else {1}) | more):
                if -(-n // rows) * parts > MAX_OP_TASKS:          # an LM head's finest tilings: not worth placing
                    continue
                chunk = smem.k_chunk(k, parts)
                if smem.linear_footprint(page_rows, chunk, self.stage_bytes, coef, batch).alone(self.stages, self.stage_bytes) \
                        <= self.smem_budget:
                    out.append((rows, len(smem.k_parts(k, parts))))
        return list(dict.fromkeys(out))

    def run(self, module: ModuleOp) -> SearchResult:
        start = time.perf_counter()
        fn = next(o for o in module.ops if isinstance(o, func.FuncOp))
        ops = [o for o in fn.body.block.ops if isinstance(o, (LinearOp, AttentionOp))]
        choices = [self.candidates(o) for o in ops]
        # A whole model's layer ops are costed on the prologue and one layer, its LM head on the
        # epilogue alone (the parts follow each other, so each one's makespan is its own to minimise,
        # and no evaluation places every task of a 128K-row LM head with the layer's).
        parts = _parts(fn, ops)
        best = {part: self.evaluate(fn, part) for part in dict.fromkeys(parts)}
        evaluations, complete = len(best), True
        total = len(best) + 2 * sum(len(c) for c in choices)
        self.progress(evaluations, total, sum(best.values()))
        for _ in range(2):                                   # two sweeps of coordinate descent
            improved = False
            for op, part, cands in zip(ops, parts, choices):
                current = _tiling_of(op)
                for cand in cands:
                    if cand == current:
                        continue
                    if time.perf_counter() - start > self.budget_s:
                        complete = False
                        break
                    _set_tiling(op, cand)
                    t = self.evaluate(fn, part)
                    evaluations += 1
                    self.progress(evaluations, total, sum(best.values()) - best[part] + min(best[part], t))
                    if t < best[part] - 1e-6:
                        best[part], current, improved = t, cand, True
                    else:
                        _set_tiling(op, current)
            if not improved:
                break
        best = sum(best.values())
        self.progress(total, total, best)
        tiling = {_label(o): _tiling_of(o) for o in ops}
        return SearchResult(best, evaluations, time.perf_counter() - start, tiling, complete)


def _parts(fn, ops) -> list[str]:
    """Per op, the part of the step the search costs it on (DagSearch.tasks): "all" for a layer;
    "body" for a whole model's layer ops, "epilogue" for its LM head."""
    from ..dialects.graph import LayerInputOp, LayerOutputOp
    block = list(fn.body.block.ops)
    loop = [i for i, o in enumerate(block) if isinstance(o, (LayerInputOp, LayerOutputOp))]
    if not loop:
        return ["all"] * len(ops)
    index = {o: i for i, o in enumerate(block)}
    return ["epilogue" if index[o] > loop[-1] else "body" for o in ops]


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
    """schedule-search: task-level IR -> schedule-level IR placed by `best_placement`."""
    name = "schedule-search"
    model: CostModel = None
    num_sms: int = 1
    block_threads: int = 256
    smem_budget: int = 99 * 1024
    stages: int = 2
    in_flight: int = 2
    pos: int = 0
    long_pos: int | None = None     # costed too, as DagSearch does

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        tasks = [o for o in op.ops if isinstance(o, TaskOp)]
        index = {t: i for i, t in enumerate(tasks)}

        def producers(token):
            owner = token.owner
            return [index[p.owner] for p in owner.parts] if isinstance(owner, JoinOp) else [index[owner]]

        placed, long_tasks = _costed([(t, sorted({i for d in t.deps for i in producers(d)})) for t in tasks],
                                     self.pos, self.long_pos)
        programs, _ = best_placement(placed, self.num_sms, self.model, self.stages, self.in_flight, long_tasks)
        emit_schedule(op, programs, self.block_threads, self.stages, self.in_flight, self.smem_budget)
