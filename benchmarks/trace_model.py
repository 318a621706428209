"""Where a whole model's step goes: run a profiling build of it (CompileConfig(profile=True) of
`adamk.models.LlamaModel`, compiled beforehand on any machine) and print, per layer, when each op
of the layer loop started and ended and how long its tasks waited on their inputs; then the
epilogue's (final norm, LM head, argmax). Writes the raw stamps with each task's SM and op to
`--out`/stamps.json and a Chrome/Perfetto trace to `--out`/trace.json.

    python benchmarks/trace_model.py --artifact out/model-1b-profile [--layers 16] [--pos 512] --out trace/

The stamps are those of the last of `--steps` steps launched back to back (the token and the
position on the device, from `pos`). Per task: reached (before its waits), inputs in, end.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import torch

import adamk
from adamk.runtime.timing import time_launches
from bench_model import model_arguments, preset_of, random_model

_TASK = re.compile(r'task_id = (\d+) : i64, sym_name = "[^"]*", kind = "\w+", source = "([^"]*)"')


def task_map(schedule_text: str) -> dict[int, tuple[int, str, str]]:
    """task id -> (SM, op, where: 'loop', 'prologue' or 'epilogue') from the artifact's
    schedule.mlir (each SM one `func.func @smN`, its layer loop between adamk.loop_begin and
    adamk.loop_end)."""
    out, sm, where = {}, -1, "prologue"
    for line in schedule_text.splitlines():
        if line.lstrip().startswith("func.func @sm"):
            sm, where = int(line.split("@sm")[1].split("(")[0]), "prologue"
        elif '"adamk.loop_begin"' in line:
            where = "loop"
        elif '"adamk.loop_end"' in line:
            where = "epilogue"
        elif (m := _TASK.search(line)):
            out[int(m.group(1))] = (sm, m.group(2).removesuffix(".partial"), where)
    return out


def main():
    ap = model_arguments(argparse.ArgumentParser())
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="trace-model")
    args = ap.parse_args()
    cfg = preset_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.artifact)
    if not json.loads((path / "manifest.json").read_text())["kernel"].get("profile"):
        raise SystemExit(f"{path}: not a profiling build (compile it with CompileConfig(profile=True))")
    step = adamk.load(path, random_model(cfg))
    step.k_cache.normal_()
    step.v_cache.normal_()
    ids = torch.randint(0, cfg.vocab_size, (step.batch,)).tolist()      # a batch: every sequence at pos
    step.start(ids[0], args.pos) if step.batch == 1 else step.start(ids, [args.pos] * step.batch)
    b2b = time_launches(step.launch, args.steps)[1]
    tasks = task_map((path / "schedule.mlir").read_text())
    layers = [step.trace(layer) for layer in range(step.trace_layers)]
    t0 = min(r[1] for rows in layers for r in rows if r[1])
    print(f"{path}: {step.trace_layers} layer(s), batch {step.batch}, pos {args.pos}+, {b2b:.1f} us per step back to back (profiling build)")

    events, raw = [], []
    per = defaultdict(lambda: defaultdict(list))       # (layer or 'epilogue', op) -> field -> values
    for layer, rows in enumerate(layers):
        for tid, (name, reached, inputs_in, end, data_in, *_) in enumerate(rows):
            if not reached:
                continue
            sm, op, where = tasks[tid]
            if where == "loop":
                where = layer
            elif layer:
                continue                  # a task outside the loop stamps layer 0's slice only
            raw.append([layer, tid, sm, op, reached - t0, inputs_in - t0, end - t0, data_in - t0 if data_in else None])
            events.append({"name": f"L{layer} {name}" if isinstance(where, int) else name, "ph": "X", "pid": 0,
                           "tid": sm, "ts": (inputs_in - t0) / 1e3, "dur": (end - inputs_in) / 1e3, "cat": op})
            if inputs_in > reached:
                events.append({"name": "wait", "ph": "X", "pid": 0, "tid": sm, "ts": (reached - t0) / 1e3,
                               "dur": (inputs_in - reached) / 1e3, "cat": "wait"})
            d = per[(where, op)]
            d["start"].append((inputs_in - t0) / 1e3)
            d["end"].append((end - t0) / 1e3)
            d["wait"].append((inputs_in - reached) / 1e3)
            d["work"].append((end - inputs_in) / 1e3)
    (out / "stamps.json").write_text(json.dumps({"b2b_us": b2b, "pos": args.pos,
                                                 "columns": ["layer", "task", "sm", "op", "reached_ns",
                                                             "inputs_in_ns", "end_ns", "data_in_ns"], "rows": raw}))
    (out / "trace.json").write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns"}))

    print(f"\n{'where':>8s} {'op':28s} {'tasks':>5s} {'first in':>9s} {'last end':>9s} {'wait med':>9s} "
          f"{'work med':>9s} {'work max':>9s}")
    ends = {}
    for (where, op), d in sorted(per.items(), key=lambda kv: min(kv[1]["start"])):
        print(f"{str(where):>8s} {op[:28]:28s} {len(d['end']):5d} {min(d['start']):9.2f} {max(d['end']):9.2f} "
              f"{statistics.median(d['wait']):9.2f} {statistics.median(d['work']):9.2f} {max(d['work']):9.2f}")
        ends[where] = max(ends.get(where, 0.0), max(d["end"]))
    spans = [ends[lay] - ends.get(lay - 1, ends.get("prologue", 0.0)) for lay in range(step.trace_layers) if lay in ends]
    if spans:
        print(f"\nper layer (last end to last end): median {statistics.median(spans):.2f} us, "
              f"min {min(spans):.2f}, max {max(spans):.2f}; epilogue ends at {ends.get('epilogue', 0):.2f} us")
    print(f"wrote {out}/stamps.json and {out}/trace.json")


if __name__ == "__main__":
    main()
