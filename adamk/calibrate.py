"""`adamk calibrate`: measure the cost model's parameters on a GPU.

It compiles profiling builds of the bundled decoder layer (every task stamps %globaltimer
when it is reached, when its inputs are in (its polls and staging done), when its data is in
(its first ring page landed: a linear's weights, an attention's cached rows) and at its end),
runs them, and fits the parameters of search/cost.py to what their steps did:

- first, each from the stamps that show it: `launch_us` (back-to-back time per launch less
  the traced makespan); the staging line `stage_us` + `input_us_per_k` x inputs (inputs in
  less reached, for tasks that stage inputs written long before); `poll_latency_us` (inputs
  in less the last write they read, less their staging); `smem_bytes_per_us` (a linear
  task's bytes over its end less data-in, its fastest decile: pages already landed);
- then all of them together by coordinate descent on the model's own replay of the traced
  schedules (search/cost.py predict_timeline): each parameter scaled up or down while the
  squared error of every task's predicted end against its measured end drops. The page
  stream's rate and latency are fitted only there: no single stamp isolates them.

One schedule shows only the tilings it uses, and the search goes where the model is wrong,
so calibration runs in rounds: the first traces the searched schedule under the shipped
model and the round-robin schedule; each later round also traces the schedule the search
picks with the model so far, and refits on all traces. A build whose schedule was traced
already is not run again; a round that adds nothing ends the calibration. The result is a
JSON profile for `CompileConfig(cost_model=...)` / `adamk compile --cost-model`.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from .config import CompileConfig
from .dialects import parse_module
import numpy as np

from .dialects.schedule import ExecOp, PollOp
from .errors import AdamkError
from .models import PRESETS, compile_presets
from .names import quoted
from .runtime.timing import time_launches
from .kinds import kind as task_kind
from .kinds.base import restages
from .kinds.linear import paged_input
from .search.cost import CostModel, TaskCost, predict_step_us, predict_timeline
from .search.validate import schedule_of, tagged_sizes
from .targets import get_gpu


@dataclasses.dataclass
class Trace:
    """One measured step of a profiling build."""
    label: str
    schedule: ModuleOp
    rows: list[tuple]       # per task_id: (name, reached, inputs in, end, data in), ns (DecodeStep.trace)
    b2b_us: float           # back-to-back time per launch of this build


def _median(values, default: float) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else default


def _line(points: list[tuple[float, float, int]], default: tuple[float, float],
          min_intercept: float) -> tuple[float, float]:
    """(intercept >= min_intercept, slope >= 0) of the weighted least-squares line through
    (x, y, weight); `default` if there are no points."""
    w = sum(n for _, _, n in points)
    if not w:
        return default
    mx, my = sum(x * n for x, _, n in points) / w, sum(y * n for _, y, n in points) / w
    sxx = sum(n * (x - mx) ** 2 for x, _, n in points)
    slope = max(0.0, sum(n * (x - mx) * (y - my) for x, y, n in points) / sxx) if sxx else 0.0
    intercept = my - slope * mx
    if intercept < min_intercept:      # refit the slope through the floored intercept
        sx2 = sum(n * x * x for x, _, n in points)
        intercept = min_intercept
        slope = max(0.0, sum(n * x * (y - intercept) for x, y, n in points) / sx2) if sx2 else 0.0
    return intercept, slope


@dataclasses.dataclass(frozen=True)
class Stamped:
    """One traced task, in us from the step's first stamp."""
    kind: str
    cost: TaskCost
    reached: float
    inputs_in: float
    end: float
    data_in: float
    ready: float          # when the last task whose writes it polls ended (0: it polls nothing)
    stages: bool          # it staged inputs (a linear starting a run, an attention, a combine)
    paged: bool = False   # a linear that stages its input page by page: "inputs in" is page 0's


def stamped(trace: Trace, pos: int) -> list[Stamped]:
    """The trace's tasks with what each waited for (its polls' last writer)."""
    start = min(r[1] for r in trace.rows)
    us = {tid: [(t - start) / 1e3 for t in r[1:5]] for tid, r in enumerate(trace.rows)}
    written = {name: np.zeros(n) for name, n in tagged_sizes(trace.schedule).items()}
    programs = schedule_of(trace.schedule).sms
    for sm in programs:
        for op in sm.ops:
            if isinstance(op, ExecOp):
                for buffer, b, e in task_kind(op.kind.data).writes(op):
                    if buffer in written:
                        written[buffer][b:e] = us[op.task_id.value.data][2]
    out = []
    for sm in programs:
        ready, staged = 0.0, None
        for op in sm.ops:
            if isinstance(op, PollOp):
                b, e = op.range
                ready = max(ready, float(written[op.buffer.data][b:e].max()))
            elif isinstance(op, ExecOp):
                reached, inputs_in, end, data_in = us[op.task_id.value.data]
                key = task_kind(op.kind.data).staged(op)
                paged = op.kind.data == "linear" and paged_input(op, written)
                out.append(Stamped(op.kind.data, TaskCost.of_exec(op, pos), reached, inputs_in, end, data_in, ready,
                                   restages(key, staged), paged))
                ready, staged = 0.0, key
    return out


def _initial(tasks: list[Stamped], launch: list[float], base: CostModel) -> CostModel:
    """Each parameter from the stamps that show it alone (the module docstring)."""
    # a staging that polled: its last writer's end -> inputs in = poll + stage + inputs x per_k
    # (not a paged staging: its "inputs in" is its first page's columns, and its pages wait for the rest)
    tasks = [t for t in tasks if not t.paged]
    polled = [(t.cost.inputs, t.inputs_in - t.ready, 1) for t in tasks if t.stages and t.ready > t.reached + 0.1]
    fixed, per_k = _line(polled, (base.poll_latency_us + base.stage_us, base.input_us_per_k), min_intercept=0.15)
    per_k = max(per_k, 1e-6)          # the descent scales it: never from zero
    # a staging of inputs written long before: reached -> inputs in = overhead + stage + inputs x per_k
    fixed_staging = _median([t.inputs_in - t.reached - t.cost.inputs * per_k for t in tasks
                             if t.stages and t.kind == "linear" and t.ready < t.reached - 0.5],
                            base.task_overhead_us + base.stage_us)
    stage_us = max(0.1, fixed_staging - base.task_overhead_us)
    rates = sorted(t.cost.stage_bytes / (t.end - t.data_in) for t in tasks
                   if t.kind == "linear" and t.end > t.data_in)
    return dataclasses.replace(
        base, stage_us=stage_us, input_us_per_k=per_k, poll_latency_us=max(0.05, fixed - fixed_staging),
        smem_bytes_per_us=rates[int(0.9 * (len(rates) - 1))] if rates else base.smem_bytes_per_us,
        launch_us=max(0.0, _median(launch, base.launch_us)))


FITTED = ("sm_bytes_per_us", "dram_latency_us", "poll_latency_us", "stage_us", "input_us_per_k",
          "smem_bytes_per_us", "task_overhead_us", "attention_us", "empty_page_us",
          "kv_share", "l2_share")
SCALES = (0.5, 0.7, 0.85, 0.95, 1.05, 1.2, 1.4, 2.0)


def _error(model: CostModel, traces: list[Trace], measured: list[dict], pos: int) -> float:
    """Squared error of every task's predicted end against its measured end, over all traces."""
    total = 0.0
    for trace, ends in zip(traces, measured):
        predicted = predict_timeline(trace.schedule, model, pos)
        total += sum((predicted[tid][2] - end) ** 2 for tid, end in ends.items())
    return total


def fit(traces: list[Trace], pos: int, base: CostModel, sweeps: int = 3) -> CostModel:
    """Fit the model to traced steps (all at position `pos`)."""
    tasks = [t for trace in traces for t in stamped(trace, pos)]
    launch = [trace.b2b_us - (max(r[3] for r in trace.rows) - min(r[1] for r in trace.rows)) / 1e3
              for trace in traces]
    model = _initial(tasks, launch, base)
    measured = []
    for trace in traces:
        start = min(r[1] for r in trace.rows)
        measured.append({tid: (r[3] - start) / 1e3 for tid, r in enumerate(trace.rows)})
    best = _error(model, traces, measured, pos)
    for _ in range(sweeps):
        improved = False
        for name in FITTED:
            for scale in SCALES:
                value = getattr(model, name) * scale
                if name == "task_overhead_us" and value == 0:
                    continue
                trial = dataclasses.replace(model, **{name: value})
                err = _error(trial, traces, measured, pos)
                if err < best * (1 - 1e-4):
                    model, best, improved = trial, err, True
        if not improved:
            break
    return dataclasses.replace(model, source="adamk calibrate")


def measure(path, preset: str, pos: int, label: str, launches: int = 50) -> Trace:
    """Run a profiling build: back-to-back time per launch (median), and the stamps of the last step."""
    from . import load
    from .models import DecoderLayer
    step = load(path, DecoderLayer(PRESETS[preset], seed=0))
    step.k_cache.normal_()
    step.v_cache.normal_()
    step.buffers["x"].normal_()
    b2b_us = time_launches(lambda: step.launch(pos), launches)[1]     # the last step's stamps stay
    step.check()
    return Trace(label, parse_module((Path(path) / "schedule.mlir").read_text()), step.trace(), b2b_us)


def _require_gpu():
    import torch
    if not torch.cuda.is_available():
        raise AdamkError("adamk calibrate measures a GPU: torch.cuda.is_available() is False on this machine")


def calibrate(gpu: str, preset: str = "llama-3.2-1b", pos: int = 512, rounds: int = 2, progress=None):
    """(fitted model, [(trace label, measured b2b us, predicted us with the fitted model)])."""
    if rounds < 1:
        raise AdamkError(f"calibration needs at least one round, got {rounds}")
    target = get_gpu(gpu)
    if preset not in PRESETS:
        raise AdamkError(f"unknown preset {quoted(preset)}; known presets: {', '.join(PRESETS)}")
    if not 0 <= pos < PRESETS[preset].max_seq_len:
        raise AdamkError(f"position {pos} is outside the {preset} layer's KV cache (0..{PRESETS[preset].max_seq_len - 1})")
    _require_gpu()
    step_ctx = progress or (lambda name: __import__("contextlib").nullcontext())
    model = CostModel.spec(target)
    traces: list[Trace] = []
    traced_schedules: set[str] = set()          # schedule.mlir texts (the compiler prints them deterministically)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, rounds + 1):
            profile = Path(tmp) / f"round{r}.json"
            model.save(profile)
            builds = {f"searched ({model.source})": CompileConfig(gpu=target.name, profile=True,
                                                                  cost_model=str(profile))}
            if r == 1:
                builds["round-robin"] = CompileConfig(gpu=target.name, profile=True, schedule="round-robin")
            with step_ctx(f"round {r}/{rounds}: compile {len(builds)} profiling build(s) of the {preset} layer "
                          f"for {target.name}"):
                paths = compile_presets([(preset, c) for c in builds.values()], Path(tmp) / f"round{r}")
            new = {}
            for label, path in zip(builds, paths):
                schedule = (Path(path) / "schedule.mlir").read_text()
                if schedule not in traced_schedules:    # a schedule traced already adds nothing
                    new[label] = path
                    traced_schedules.add(schedule)
            if not new:
                break           # the search picked a schedule already traced: the fit stands
            with step_ctx(f"round {r}/{rounds}: run {len(new)} build(s) at position {pos} and fit"):
                traces += [measure(path, preset, pos, label) for label, path in new.items()]
                model = dataclasses.replace(fit(traces, pos, CostModel.spec(target)), source=f"round {r} fit")
    model = dataclasses.replace(model, source="adamk calibrate")
    return model, [(t.label, t.b2b_us, predict_step_us(t.schedule, model, pos)) for t in traces]
