"""b2b of one artifact's layer at position 512, alternating: blocks of 10 launches as before v73 (the
start event recorded before the first launch) and time_launches (a lead launch per block); docs/perf.md v73.

    python3 docs/experiments/v73-lead-launch.py ARTIFACT     (benchmarks/ on PYTHONPATH)
"""
import statistics
import sys

import torch

import adamk
from adamk.models import PRESETS
from adamk.runtime.timing import time_launches
from bench_layer import bf16_exact_layer


def old_blocks(fn, iters, block=10):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    blocks = []
    for _ in range(iters // block):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(block):
            fn()
        e.record(); e.synchronize()
        blocks.append(s.elapsed_time(e) * 1e3 / block)
    return statistics.median(blocks)


cfg = PRESETS["llama-3.2-1b"]
layer = bf16_exact_layer(cfg)
step = adamk.load(sys.argv[1], layer)
step.buffers["x"].copy_(torch.randn(1, cfg.hidden_size, device="cuda").bfloat16())
fn = lambda: step.launch(512)
for r in range(4):
    print(f"round {r}: pre-v73 blocks {old_blocks(fn, 200):.2f} us   time_launches (lead launch) {time_launches(fn, 200)[1]:.2f} us", flush=True)
step.check()
