"""b2b of one artifact's layer at position 512 with its KV cache zero (as adamk.load leaves it) and
filled with random values, alternating: v73's lead-launch run (zero cache) timed main at 47.0 us where
compare_artifacts (random cache, from its numerics check) timed it at 49.4 in the same call
(docs/perf.md v74).

    python3 docs/experiments/v74-kv-fill.py ARTIFACT     (benchmarks/ on PYTHONPATH)
"""
import sys

import torch

import adamk
from adamk.models import PRESETS
from adamk.runtime.timing import time_launches
from bench_layer import bf16_exact_layer

cfg = PRESETS["llama-3.2-1b"]
step = adamk.load(sys.argv[1], bf16_exact_layer(cfg))
step.buffers["x"].copy_(torch.randn(1, cfg.hidden_size, device="cuda").bfloat16())
fn = lambda: step.launch(512)
for r in range(3):
    row = []
    for fill in ("zero", "random"):
        for c in (step.k_cache, step.v_cache):
            c.zero_() if fill == "zero" else c.normal_()
        row.append(f"{fill} KV {time_launches(fn, 200)[1]:.2f} us")
    print(f"round {r}: " + "   ".join(row), flush=True)
step.check()
