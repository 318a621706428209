"""`adamk calibrate`: measure the cost model's parameters on a GPU.

It compiles the bundled decoder layer as a profiling build (every task stamps
%globaltimer before its waits, after them, and at its end), runs it, and fits the
parameters of search/cost.py to what one step did:

- sync_latency_us: from the signal that completed a counter to the waiter passing its wait;
- task_overhead_us, input_us_per_k: the interval between back-to-back linear tasks of an
  SM is overhead + k_chunk x input_us_per_k + compute (their weights were staged long
  before); the two most common K-chunks give both terms;
- fresh_input_us: what a linear task right after a wait takes beyond that (its inputs come
  from L2);
- kv_bytes_per_us: the KV bytes of an attention part over its time after those;
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

    intervals, waited_tasks, syncs, first = [], [], [], []
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
            if waits:
                done = max(signal_times[w.counter.data][w.count.value.data - 1] for w in waits)
                waited_tasks.append((op.kind.data, end - done, cost))
                if after - before > 0.2 and after >= done:      # it did wait: signal -> waiter passing
                    syncs.append(after - done)
            elif op.kind.data == "linear" and prev_end is not None:
                intervals.append((end - prev_end, cost))
            if op.kind.data == "linear" and not seen_linear:
                first.append((end, cost))
                seen_linear = True
            waits, prev_end = [], end

    compute = lambda c: c.stage_bytes / base.smem_bytes_per_us                 # noqa: E731
    sync = max(0.05, _median(syncs, base.sync_latency_us))
    # back-to-back linear tasks: interval = overhead + inputs x input_us_per_k + compute (the
    # weights were staged long before); the two most common K-chunks give both terms
    by_chunk: dict[int, list[float]] = {}
    for t, c in intervals:
        by_chunk.setdefault(c.inputs, []).append(t - compute(c))
    groups = sorted(by_chunk, key=lambda k: (-len(by_chunk[k]), k))[:2]
    per_k = 0.0
    if len(groups) == 2 and groups[0] != groups[1]:
        per_k = max(0.0, (_median(by_chunk[groups[1]], 0) - _median(by_chunk[groups[0]], 0)) / (groups[1] - groups[0]))
    overhead = max(0.05, _median([t - c.inputs * per_k - compute(c) for t, c in intervals], base.task_overhead_us))
    # a linear task after a wait (weights long since staged): done -> sync -> fixed costs -> end
    fresh = max(0.0, _median([t - sync - overhead - c.inputs * per_k - compute(c) for k, t, c in waited_tasks
                              if k == "linear"], 0.0))
    after_wait = sync + overhead + fresh
    kv_rate = _median([c.read_bytes / (t - after_wait) for k, t, c in waited_tasks
                       if k == "attention" and t > after_wait], base.kv_bytes_per_us)
    bw = base.sm_bytes_per_us
    # each SM's first linear task: its copy queued behind nothing, issued at the start
    latency = max(0.1, _median([e - c.stage_bytes / bw - compute(c) for e, c in first], base.dram_latency_us))
    makespan = max(e for _, _, e in us.values())
    return CostModel(gpu=base.gpu, sm_bytes_per_us=bw, dram_latency_us=latency, sync_latency_us=sync,
                     task_overhead_us=overhead, input_us_per_k=per_k, fresh_input_us=fresh,
                     smem_bytes_per_us=base.smem_bytes_per_us, kv_bytes_per_us=kv_rate,
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
