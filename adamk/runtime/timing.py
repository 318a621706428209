"""Timing launches on the GPU with device events: the medians the benchmarks and the
calibration report."""
from __future__ import annotations

import statistics


def launch_count(iters: int, warmup: int = 10, block: int = 10) -> int:
    """How many times `time_launches(fn, iters, warmup, block)` calls fn (a whole model's step
    advances its position on the device each time: `adamk bench` checks them against max_seq_len)."""
    return warmup + iters + (iters // block) * (block + 1)


def time_launches(fn, iters: int, warmup: int = 10, block: int = 10) -> tuple[float, float]:
    """(median of `iters` single-launch event times, median over iters // block blocks of
    `block` back-to-back launches of the time per launch) in microseconds.

    Each block is led by one launch it does not count: the block's start event then stamps when
    that launch ends, with the host already enqueuing the block's launches behind it, so the
    block's time is the GPU's steady state, not the host's latency to the first launch (before
    v73 a tenth of it was in every b2b figure: docs/perf.md v70, v73)."""
    import torch
    if iters < block:
        raise ValueError(f"time_launches needs iters >= block ({block}), got {iters}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    each, blocks = [], []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize()
        each.append(s.elapsed_time(e) * 1e3)
    for _ in range(iters // block):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()                                   # the lead launch: not counted
        s.record()
        for _ in range(block):
            fn()
        e.record(); e.synchronize()
        blocks.append(s.elapsed_time(e) * 1e3 / block)
    return statistics.median(each), statistics.median(blocks)


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (median): the rate the weight-read
    floors divide by."""
    import torch
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    times = []
    for _ in range(reps + 3):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); b.copy_(a); e.record(); e.synchronize()         # noqa: E702
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * nbytes / statistics.median(times[3:])
