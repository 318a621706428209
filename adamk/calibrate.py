"""`adamk calibrate`: measure the cost model's parameters on a GPU.

It compiles the bundled decoder layer as a profiling build (every task stamps
%globaltimer before its waits, after them, and at its end), runs it, and fits the
parameters of search/cost.py to what one step did:

- task_overhead_us: the time of a combine task (it moves a few KB);
- sm_bytes_per_us: weight bytes over the interval between consecutive linear tasks of an
  SM that did not wait, where that interval exceeds the task's overhead and compute (the
  SM's weight stream is then what paces it);
- sync_latency_us: from the signal that completed a counter to the end of a linear task
  that waited for it, less its overhead and compute (so it includes fetching the fresh
  inputs, which only a task after a wait pays);
- kv_bytes_per_us: the KV bytes of an attention part over its time after the sync;
- dram_latency_us: the first linear task of each SM (its copy issued at the start);
- launch_us: back-to-back time per launch less the traced makespan.

Each is a median over the tasks that show it. The result is a JSON profile for
`CompileConfig(cost_model=...)` / `adamk compile --cost-model`.
"""
from __future__ import annotations

import statistics
import tempfile

from .config import CompileConfig
from .dialects import parse_module
from .dialects.schedule import ExecOp, SignalOp, WaitOp
from .errors import AdamkError
from .search.cost import CostModel, TaskCost, predict_step_us
from .search.validate import schedule_of
from .targets import get_gpu


def _median(values, default: float) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else default


def fit(schedule, stamps: list[tuple], pos: int, base: CostModel, b2b_us: float) -> CostModel:
    """Fit the model to one traced step: `stamps[task_id] = (before waits, after waits, end)` in ns."""
    start = min(s[0] for s in stamps)
    us = {tid: tuple((t - start) / 1e3 for t in s) for tid, s in enumerate(stamps)}
    signal_times: dict[str, list[float]] = {}
    programs = []
    for sm in schedule_of(schedule).sms:
        program, last_end = [], 0.0
        for op in sm.body.block.ops:
            if isinstance(op, ExecOp):
                last_end = us[op.task_id.value.data][2]
            elif isinstance(op, SignalOp):
                signal_times.setdefault(op.counter.data, []).extend([last_end] * op.count.value.data)
            program.append(op)
        programs.append(program)
    for times in signal_times.values():
        times.sort()

    combines, intervals, waited_tasks, first = [], [], [], []
    for program in programs:
        waits, prev_end, seen_linear = [], None, False
        for op in program:
            if isinstance(op, WaitOp):
                waits.append(op)
                continue
            if not isinstance(op, ExecOp):
                continue
            before, after, end = us[op.task_id.value.data]
            cost = TaskCost.of_exec(op, pos)
            if waits and after - before > 0.2:     # it did wait: from its counter's completion to its end
                done = max(signal_times[w.counter.data][w.count.value.data - 1] for w in waits)
                waited_tasks.append((op.kind.data, end - done, cost))
            elif op.kind.data == "linear" and prev_end is not None and not waits:
                intervals.append((end - prev_end, cost.stage_bytes))
            if op.kind.data.endswith("combine"):
                combines.append((end - after, cost.read_bytes))
            if op.kind.data == "linear" and not seen_linear:
                first.append((end, cost.stage_bytes))
                seen_linear = True
            waits, prev_end = [], end

    # a combine moves a few KB: its time less that is the per-task overhead (with the spec
    # bandwidth first, then again with the fitted one)
    compute = lambda b: b / base.smem_bytes_per_us                           # noqa: E731
    bw = base.sm_bytes_per_us
    for _ in range(2):
        overhead = max(0.05, _median([t - r / bw for t, r in combines], base.task_overhead_us))
        # linear tasks back to back on an SM: an interval longer than overhead + compute is the
        # weight stream's; shorter ones say only that the stream keeps up, so the spec figure stands
        bw = _median([b / t for t, b in intervals if t > 1.1 * (overhead + compute(b))], base.sm_bytes_per_us)
    # a linear task that waited (its weights long since staged): done -> sync -> overhead -> compute
    sync = max(0.05, _median([t - overhead - compute(c.stage_bytes) for k, t, c in waited_tasks if k == "linear"],
                             base.sync_latency_us))
    kv_rate = _median([c.read_bytes / (t - sync - overhead) for k, t, c in waited_tasks
                       if k == "attention" and t > sync + overhead], base.kv_bytes_per_us)
    # each SM's first linear task: its copy queued behind nothing, issued at the start
    latency = max(0.1, _median([e - b / bw - overhead - compute(b) for e, b in first], base.dram_latency_us))
    makespan = max(e for _, _, e in us.values())
    return CostModel(gpu=base.gpu, sm_bytes_per_us=bw, dram_latency_us=latency, sync_latency_us=sync,
                     task_overhead_us=overhead, smem_bytes_per_us=base.smem_bytes_per_us, kv_bytes_per_us=kv_rate,
                     launch_us=max(0.0, b2b_us - makespan), source="adamk calibrate")


def calibrate(gpu: str, preset: str = "llama-3.2-1b", pos: int = 512, launches: int = 50, progress=None):
    """(fitted model, measured b2b us, predicted us for the traced schedule with the fitted model)."""
    import torch

    from . import compile as compile_model
    from . import load
    from .models import PRESETS, DecoderLayer
    if not torch.cuda.is_available():
        raise AdamkError("adamk calibrate measures a GPU: torch.cuda.is_available() is False on this machine")
    step_ctx = progress or (lambda name: __import__("contextlib").nullcontext())
    target = get_gpu(gpu)
    layer = DecoderLayer(PRESETS[preset], seed=0)
    with step_ctx(f"compile a profiling build of the {preset} layer for {target.name}"):
        path = compile_model(layer, CompileConfig(gpu=target.name, profile=True)).save(tempfile.mkdtemp() + "/a")
    with step_ctx(f"run {launches} steps at position {pos} and fit"):
        step = load(path, layer)
        step.k_cache.normal_()
        step.v_cache.normal_()
        step.buffers["x"].normal_()
        for _ in range(10):
            step.launch(pos)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(launches):
            step.launch(pos)
        end.record()
        end.synchronize()
        b2b_us = start.elapsed_time(end) * 1e3 / launches
        stamps = [row[1:] for row in step.trace()]
        schedule = parse_module((path / "schedule.mlir").read_text())
        model = fit(schedule, stamps, pos, CostModel.for_gpu(target), b2b_us)
    return model, b2b_us, predict_step_us(schedule, model, pos)
