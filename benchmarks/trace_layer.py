"""Profile one decode step: compile with CompileConfig(profile=True), run, and write what each SM
did as a Chrome/Perfetto trace (JSON) and a Gantt chart (PNG) of measured against predicted,
plus a per-op summary (time waiting on inputs, time computing), and the raw stamps with the
schedule (stamps.json, schedule.mlir: what `adamk.calibrate.fit` reads, on any machine).

    python benchmarks/trace_layer.py --preset llama-3.2-1b --gpu H100 --pos 512 --out trace/
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import adamk
from adamk.calibrate import measure
from adamk.models import compile_preset
from adamk.search.cost import CostModel, predict_timeline
from adamk.targets import get_gpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--out", default="trace")
    ap.add_argument("--cost-model", help="a profile from `adamk calibrate` (compile and predict with it)")
    ap.add_argument("--schedule", default="search", choices=("search", "round-robin", "barrier", "queue"))
    ap.add_argument("--artifact", help="a profiling build compiled elsewhere (CompileConfig(profile=True) of the "
                                       "preset for --gpu, --schedule): traced instead of compiling one here")
    args = ap.parse_args()
    run(args.preset, args.gpu, args.pos, Path(args.out), args.cost_model, args.schedule, args.artifact)


def run(preset: str, gpu_name: str, pos: int, out: Path, cost_model: str | None = None, schedule: str = "search",
        artifact: str | None = None):
    """Trace one step of a profiling build (compiled here, or `artifact`); write trace.json, summary.json and
    gantt.png to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = artifact or compile_preset(preset, adamk.CompileConfig(gpu=gpu_name, profile=True,
                                                                      cost_model=cost_model, schedule=schedule),
                                          f"{tmp}/a")
        if not json.loads((Path(path) / "manifest.json").read_text())["config"].get("profile"):
            raise SystemExit(f"{path}: not a profiling build (compile it with CompileConfig(profile=True))")
        trace = measure(path, preset, pos, "traced")
        (out / "schedule.mlir").write_text((Path(path) / "schedule.mlir").read_text())
    (out / "stamps.json").write_text(json.dumps({"preset": preset, "gpu": gpu_name, "pos": pos,
                                                 "b2b_us": trace.b2b_us, "rows": trace.rows}))
    rows, schedule = trace.rows, trace.schedule
    t0 = min(r[1] for r in rows)
    gpu = get_gpu(gpu_name)
    model = CostModel.load(cost_model, gpu) if cost_model else CostModel.for_gpu(gpu)
    predicted = predict_timeline(schedule, model, pos)
    sm_of = {tid: sm for tid, (sm, _, _) in predicted.items()}

    events, per_op = [], defaultdict(lambda: {"wait": [], "work": [], "start": [], "end": []})
    for tid, (name, before, after, end, *_) in enumerate(rows):
        sm, op = sm_of[tid], name.split(".")[0]
        if after > before:
            events.append({"name": f"wait {name}", "ph": "X", "pid": 0, "tid": sm, "ts": (before - t0) / 1e3,
                           "dur": (after - before) / 1e3, "cat": "wait"})
        events.append({"name": name, "ph": "X", "pid": 0, "tid": sm, "ts": (after - t0) / 1e3,
                       "dur": (end - after) / 1e3, "cat": op})
        per_op[op]["wait"].append((after - before) / 1e3)
        per_op[op]["work"].append((end - after) / 1e3)
        per_op[op]["start"].append((after - t0) / 1e3)
        per_op[op]["end"].append((end - t0) / 1e3)
    (out / "trace.json").write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns"}))
    measured = (max(r[3] for r in rows) - t0) / 1e3
    pred = max(e for _, _, e in predicted.values())
    summary = {"measured_us": measured, "predicted_us": pred, "b2b_us": trace.b2b_us,
               "ops": {op: {"tasks": len(v["work"]), "work_median_us": statistics.median(v["work"]),
                            "wait_median_us": statistics.median(v["wait"]), "work_max_us": max(v["work"]),
                            "first_start_us": min(v["start"]), "last_end_us": max(v["end"])}
                       for op, v in per_op.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{preset} on {gpu_name} target, pos {pos}: measured {measured:.1f} us, predicted {pred:.1f} us")
    print(f"{'op':14s} {'tasks':>5s} {'work med':>9s} {'work max':>9s} {'wait med':>9s} {'first start':>11s} "
          f"{'last end':>9s}")
    for op, v in summary["ops"].items():
        print(f"{op:14s} {v['tasks']:5d} {v['work_median_us']:9.2f} {v['work_max_us']:9.2f} {v['wait_median_us']:9.2f} "
              f"{v['first_start_us']:11.2f} {v['last_end_us']:9.2f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return summary
    ops = sorted(per_op)
    colors = {op: plt.cm.tab10(i % 10) for i, op in enumerate(ops)}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 10), sharex=True)
    for tid, (name, before, after, end, *_) in enumerate(rows):
        op = name.split(".")[0]
        ax1.barh(sm_of[tid], (after - before) / 1e3, left=(before - t0) / 1e3, color="0.85", height=0.8)
        ax1.barh(sm_of[tid], (end - after) / 1e3, left=(after - t0) / 1e3, color=colors[op], height=0.8)
    for tid, (sm, s, e) in predicted.items():
        ax2.barh(sm, e - s, left=s, color=colors[rows[tid][0].split(".")[0]], height=0.8)
    ax1.set_title(f"measured ({measured:.1f} us; grey = waiting)")
    ax2.set_title(f"predicted ({pred:.1f} us)")
    for ax in (ax1, ax2):
        ax.set_ylabel("SM")
    ax2.set_xlabel("us")
    ax1.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[o]) for o in ops], labels=ops, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "gantt.png", dpi=80)
    print(f"wrote {out}/trace.json, {out}/gantt.png, {out}/summary.json")
    return summary


if __name__ == "__main__":
    main()
