"""The schedule ablation on one GPU, in one run: the searched schedule against round-robin
placement, one grid-wide barrier between ops, and a dynamic work queue (blocks take tasks
from an atomic counter), for the llama-3.2-1b layer; medians side by side with eager
PyTorch and the weight-read floor, and the searched schedule's predicted time against its
measured one.

    python benchmarks/ablation.py --gpu H100 --out ablation/

It first calibrates the cost model on this GPU (`adamk calibrate`, written to
out/profile.json) and compiles every variant with it, so the predictions are the
calibrated model's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import bench_layer

from adamk.calibrate import calibrate

SCHEDULES = ("search", "round-robin", "barrier", "queue")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", default="ablation")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, calib_b2b, calib_pred = calibrate(args.gpu, args.preset, args.pos)
    model.save(out / "profile.json")
    print(f"calibrated {args.gpu}: {json.dumps(model.__dict__)}")
    print(f"calibration build (profiling, default schedule): measured {calib_b2b:.1f} us, refit predicts "
          f"{calib_pred:.1f} us")
    variants = [f"{args.gpu}:schedule={s}" for s in SCHEDULES]
    floor_us, rows = bench_layer.run(args.preset, args.pos, args.iters, variants, str(out / "profile.json"),
                                     str(out / "ablation.json"))
    name, _, b2b, predicted = rows[0]
    print(f"\nsearched schedule: predicted {predicted:.1f} us, measured {b2b:.1f} us back to back: "
          f"error {(predicted - b2b) / b2b:+.1%}")


if __name__ == "__main__":
    main()
