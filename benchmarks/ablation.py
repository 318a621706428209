"""The schedule ablation on one GPU, in one run: the searched schedule against round-robin
placement, one grid-wide barrier between ops, and a dynamic work queue (blocks take tasks
from an atomic counter), for the llama-3.2-1b layer; medians side by side with eager
PyTorch and the weight-read floor, and every schedule's predicted time against its
measured one.

    python benchmarks/ablation.py --gpu H100 --out ablation/

It first calibrates the cost model on this GPU (`adamk calibrate`, written to
out/profile.json) and compiles every variant with it, so the predictions are the
calibrated model's; every variant is checked against the float32 reference before its
time counts. Last, it traces a profiling build of the searched schedule (out/trace/:
Perfetto JSON and a Gantt chart of measured against predicted).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench_layer
import trace_layer

from adamk.calibrate import calibrate
from adamk.cli import _progress

SCHEDULES = ("search", "round-robin", "barrier", "queue")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2, help="calibration rounds (adamk calibrate --rounds)")
    ap.add_argument("--out", default="ablation")
    ap.add_argument("--no-trace", action="store_true", help="skip tracing the searched schedule")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, traces = calibrate(args.gpu, args.preset, args.pos, args.rounds, progress=_progress)
    model.save(out / "profile.json")
    print(f"calibrated {args.gpu}: {json.dumps(model.__dict__)}")
    for label, measured, predicted in traces:
        print(f"  traced {label} (profiling build): measured {measured:.1f} us, fit predicts {predicted:.1f} us "
              f"({(predicted - measured) / measured:+.1%})")
    variants = [f"{args.gpu}:schedule={s}" for s in SCHEDULES]
    _, floor_us, rows = bench_layer.run(args.preset, args.pos, args.iters, variants, str(out / "profile.json"))
    with open(out / "ablation.json", "w") as f:
        json.dump({"preset": args.preset, "pos": args.pos, "floor_us": floor_us,
                   "rows": [{"name": n, "median_us": m, "b2b_us": b, "predicted_us": p} for n, m, b, p in rows]},
                  f, indent=2)
    print("\npredicted (calibrated model) against measured back to back:")
    for schedule, (_, _, b2b, predicted) in zip(SCHEDULES, rows):
        print(f"  {schedule:12s} predicted {predicted:6.1f} us, measured {b2b:6.1f} us: error "
              f"{(predicted - b2b) / b2b:+.1%}")
    if args.no_trace:
        return
    summary = trace_layer.run(args.preset, args.gpu, args.pos, out / "trace", str(out / "profile.json"))
    print(f"traced searched schedule (profiling build): makespan {summary['measured_us']:.1f} us, "
          f"predicted {summary['predicted_us']:.1f} us")


if __name__ == "__main__":
    main()
