"""Where a back-to-back launch's time goes, launch by launch: a profiling build of a layer launched N
times back to back, each launch stamping into its own trace buffer, so every launch's makespan
(first task reached to last task ended, globaltimer) and the gap to the next launch's first task
are read off the stamps. One traced launch (trace_layer.py) is one sample of the makespan; this
gives its spread, and splits the b2b time into the kernels' makespans and what lies between them
(launch, the blocks' prologue and exit: benchmarks/launch_gap.py times the launch alone).

    python benchmarks/trace_spread.py ARTIFACT [ARTIFACT ...] [--pos 512] [--launches 20] [--preset llama-3.2-1b]

Prints, per artifact, the median / min / max makespan and gap, the median period (first task to the
next launch's first task) and the time per launch of the same sequence timed with events, from the
end of a launch before it (docs/perf.md v70).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import adamk
from adamk.models import PRESETS, DecoderLayer


def spread(path: str, preset: str, pos: int, launches: int) -> dict:
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    if not manifest["config"].get("profile"):
        raise SystemExit(f"{path}: not a profiling build (CompileConfig(profile=True))")
    step = adamk.load(path, DecoderLayer(PRESETS[preset], seed=0))
    if getattr(step, "_session", None):
        raise SystemExit("trace_spread drives the Python runtime's launches (the C++ runtime is loaded)")
    step.k_cache.normal_()
    step.v_cache.normal_()
    step.buffers["x"].normal_()
    own = step.trace_buffer
    buffers = [torch.zeros_like(own) for _ in range(launches)]
    args = []
    for buf in buffers:             # each launch's arguments with its own trace buffer
        step.trace_buffer, step._args = buf, {}
        args.append(step._arguments(pos))
    step.trace_buffer, step._args = own, {}
    stream = torch.cuda.current_stream().cuda_stream
    for _ in range(3):              # warm: the code, the caches, the clocks
        step.launch(pos)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    step.launch(pos)                # the events then time launches that follow one another on the GPU:
    start.record()                  # the start fires when this one ends, not at the host's first launch
    for a in args:
        step._next_epoch()
        step._launcher(stream, a, step.smem)
    stop.record()
    step.check()
    b2b = start.elapsed_time(stop) * 1e3 / launches
    spans = []
    for buf in buffers:             # the step's own reader of its stamps, pointed at each launch's buffer
        step.trace_buffer = buf
        rows = [r for r in step.trace() if r[1]]          # (task, reached, inputs in, end, data in)
        spans.append((min(r[1] for r in rows), max(r[3] for r in rows)))
    step.trace_buffer = own
    makespans = [(e - s) / 1e3 for s, e in spans]
    gaps = [(spans[i + 1][0] - spans[i][1]) / 1e3 for i in range(len(spans) - 1)]
    periods = [(spans[i + 1][0] - spans[i][0]) / 1e3 for i in range(len(spans) - 1)]
    del step
    return {"b2b": b2b, "makespan": makespans, "gap": gaps, "period": periods}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--launches", type=int, default=20)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, {args.preset} layer at {args.pos}, {args.launches} launches back to back")
    print(f"{'artifact':28s} {'b2b':>6s} | {'makespan med / min / max':>26s} | {'gap med / min / max':>22s} | period med")
    for path in args.artifacts:
        r = spread(path, args.preset, args.pos, args.launches)
        m, g = r["makespan"], r["gap"]
        print(f"{Path(path).name[:28]:28s} {r['b2b']:6.2f} | {statistics.median(m):8.2f} / {min(m):6.2f} / {max(m):6.2f} | "
              f"{statistics.median(g):6.2f} / {min(g):5.2f} / {max(g):5.2f} | {statistics.median(r['period']):6.2f}")
        print("   makespans: " + " ".join(f"{v:.1f}" for v in m))


if __name__ == "__main__":
    main()
