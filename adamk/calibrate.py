"""`adamk calibrate`: measure the cost model's parameters on a GPU.

It compiles profiling builds of the bundled decoder layer (every task stamps
%globaltimer before its waits, after them, and at its end), runs them, and fits the
parameters of search/cost.py to what their steps did:

- sync_latency_us: from the signal that completed a counter to the waiter passing its wait;
- task_overhead_us, input_us_per_k: the interval between back-to-back linear tasks of one
  op on an SM is overhead + inputs x input_us_per_k + compute (their weights were staged
  long before); a line through each op's median gives both terms;
- fresh_input_us: what a linear task right after a wait takes beyond that (its inputs come
  from L2);
- kv_bytes_per_us: the KV bytes of an attention part over its time after those;
- dram_latency_us: each SM's first task, where it is a linear task that waits on nothing
  (its copy issued at the start, queued behind nothing);
- launch_us: back-to-back time per launch less the traced makespan.

Each is a median over the tasks (of every trace) that show it. One schedule shows only
the tilings it uses, and the search goes where the model is wrong, so calibration runs in
rounds: the first traces the searched schedule under the spec-table model and the
round-robin schedule; each later round also traces the schedule the search picks with the
model so far, and refits on all traces. A build whose schedule was traced already is not
run again; a round that adds nothing ends the calibration. The result is a JSON profile for
`CompileConfig(cost_model=...)` / `adamk compile --cost-model`.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import warnings
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp

from .config import CompileConfig
from .dialects import parse_module
from .dialects.schedule import ExecOp, SignalOp, WaitOp
from .errors import AdamkError
from .models import compile_presets
from .runtime.timing import time_launches
from .search.cost import CostModel, TaskCost, predict_step_us
from .search.validate import schedule_of
from .targets import get_gpu


@dataclasses.dataclass
class Trace:
    """One measured step of a profiling build."""
    label: str
    schedule: ModuleOp
    rows: list[tuple]       # per task_id: (name, before waits, after waits, end), ns (DecodeStep.trace)
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


def _observe(trace: Trace, pos: int, intervals: list, waited_tasks: list, syncs: list, first: list):
    """Append what one trace shows: back-to-back linear intervals within an op, tasks after
    a wait (time from the completing signal to their end), sync latencies, and each SM's
    first task if it is a linear task that waits on nothing."""
    start = min(r[1] for r in trace.rows)
    us = {tid: tuple((t - start) / 1e3 for t in r[1:]) for tid, r in enumerate(trace.rows)}
    signal_times: dict[str, list[float]] = {}
    programs = []
    for sm in schedule_of(trace.schedule).sms:
        program, last_end = [], 0.0
        for op in sm.ops:
            if isinstance(op, ExecOp):
                last_end = us[op.task_id.value.data][2]
            elif isinstance(op, SignalOp):
                signal_times.setdefault(op.counter.data, []).extend([last_end] * op.count.value.data)
            program.append(op)
        programs.append(program)
    for times in signal_times.values():
        times.sort()

    for program in programs:
        waits, prev_end, prev_source = [], None, None
        for op in program:
            if isinstance(op, WaitOp):
                waits.append(op)
                continue
            if not isinstance(op, ExecOp):
                continue
            before, after, end = us[op.task_id.value.data]
            cost = TaskCost.of_exec(op, pos)
            if waits:
                done = max(signal_times[w.counter.data][w.count.value.data - 1] for w in waits)
                waited_tasks.append((op.kind.data, end - done, cost))
                if after - before > 0.2 and after >= done:      # it did wait: signal -> waiter passing
                    syncs.append(after - done)
            elif op.kind.data == "linear" and op.source.data == prev_source:    # steady state within an op
                intervals.append((op.source.data, end - prev_end, cost))
            if prev_end is None and not waits and op.kind.data == "linear":   # the SM's first task, unblocked
                first.append((end, cost))
            waits, prev_end, prev_source = [], end, op.source.data


def fit(traces: list[Trace], pos: int, base: CostModel) -> CostModel:
    """Fit the model to traced steps (all at position `pos`)."""
    intervals, waited_tasks, syncs, first, launch = [], [], [], [], []
    for trace in traces:
        _observe(trace, pos, intervals, waited_tasks, syncs, first)
        start = min(r[1] for r in trace.rows)
        launch.append(trace.b2b_us - (max(r[3] for r in trace.rows) - start) / 1e3)
    compute = lambda c: c.stage_bytes / base.smem_bytes_per_us                 # noqa: E731
    sync = max(0.05, _median(syncs, base.sync_latency_us))
    # back-to-back linear tasks of one op (weights staged long before): interval = overhead +
    # inputs x input_us_per_k + compute; a least-squares line through each op's median,
    # weighted by how many tasks show it
    by_op: dict[tuple, list[float]] = {}
    for source, t, c in intervals:
        by_op.setdefault((source, c.inputs), []).append(t - compute(c))
    if not by_op:
        warnings.warn("calibration: the traces show no back-to-back linear tasks of one op; task_overhead_us "
                      "and input_us_per_k keep their defaults", stacklevel=2)
    overhead, per_k = _line([(k, statistics.median(v), len(v)) for (_, k), v in sorted(by_op.items())],
                            (base.task_overhead_us, base.input_us_per_k), min_intercept=0.05)
    # a linear task after a wait (weights long since staged): done -> sync -> fixed costs -> end
    fresh = max(0.0, _median([t - sync - overhead - c.inputs * per_k - compute(c) for k, t, c in waited_tasks
                              if k == "linear"], 0.0))
    after_wait = sync + overhead + fresh
    kv_rate = _median([c.read_bytes / (t - after_wait) for k, t, c in waited_tasks
                       if k == "attention" and t > after_wait], base.kv_bytes_per_us)
    bw = base.sm_bytes_per_us
    # each SM's first task, if linear and unblocked: its copy issued at the start, queued behind nothing
    latency = max(0.1, _median([e - c.stage_bytes / bw - compute(c) for e, c in first], base.dram_latency_us))
    return CostModel(gpu=base.gpu, sm_bytes_per_us=bw, dram_latency_us=latency, sync_latency_us=sync,
                     task_overhead_us=overhead, input_us_per_k=per_k, fresh_input_us=fresh,
                     smem_bytes_per_us=base.smem_bytes_per_us, kv_bytes_per_us=kv_rate,
                     launch_us=max(0.0, _median(launch, base.launch_us)), source="adamk calibrate")


def measure(path, preset: str, pos: int, label: str, launches: int = 50) -> Trace:
    """Run a profiling build: back-to-back time per launch (median), and the stamps of the last step."""
    from . import load
    from .models import PRESETS, DecoderLayer
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
    _require_gpu()
    step_ctx = progress or (lambda name: __import__("contextlib").nullcontext())
    target = get_gpu(gpu)
    model = CostModel.for_gpu(target)
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
                model = dataclasses.replace(fit(traces, pos, CostModel.for_gpu(target)), source=f"round {r} fit")
    model = dataclasses.replace(model, source="adamk calibrate")
    return model, [(t.label, t.b2b_us, predict_step_us(t.schedule, model, pos)) for t in traces]
