"""How long after its attention parts end does o_proj's merged input land (docs/perf.md v34)?

    python docs/experiments/v34-merge-latency.py STAMPS SCHEDULE [--layer 1]

STAMPS: the stamps a profiling build's trace wrote (`benchmarks/trace_model.py --out DIR`: DIR/stamps.json,
or a .json.gz copy in docs/measurements); SCHEDULE: that artifact's schedule.mlir (the task names).
Per K-part of o_proj: when the last attention part of its heads ended, and the earliest and median
time its tasks had their input in, in us from the step's start. v33's H100 trace (8 parts, layer 1):
parts end 76.8, inputs in 80.9 first, 82.9 median for K-part 0.
"""
import argparse
import gzip
import json
import re
import statistics
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stamps")
    ap.add_argument("schedule")
    ap.add_argument("--layer", type=int, default=1)
    args = ap.parse_args()
    opener = gzip.open if args.stamps.endswith(".gz") else open
    with opener(args.stamps, "rt") as f:
        stamps = json.load(f)
    with open(args.schedule) as f:
        text = f.read()
    names = {int(m[1]): m[2] for m in re.finditer(r'task_id = (\d+) : i64, sym_name = "([^"]+)"', text)}
    chunk = re.search(r'sym_name = "[^"]*o_proj[^"]*\.k0".*?k_chunk = (\d+)', text)
    head_dim = re.search(r"head_dim = (\d+)", text)
    if not chunk or not head_dim:
        raise SystemExit("the schedule has no o_proj split over K (nothing to measure)")
    heads_per_part = int(chunk[1]) // int(head_dim[1])
    col = {c: i for i, c in enumerate(stamps["columns"])}
    parts_end = defaultdict(float)       # K-part of o_proj -> when the last attention part it reads ends
    inputs = defaultdict(list)           # K-part -> its tasks' inputs-in times
    for row in stamps["rows"]:
        if row[col["layer"]] != args.layer:
            continue
        name = names.get(row[col["task"]], "")
        if name.startswith("attention"):
            head = int(re.search(r"\.h(\d+)", name)[1])      # the task's first query head
            k = head // heads_per_part
            parts_end[k] = max(parts_end[k], row[col["end_ns"]] / 1e3)
        elif "o_proj" in name and (m := re.search(r"\.k(\d+)$", name)):
            inputs[int(m[1])].append(row[col["inputs_in_ns"]] / 1e3)
    print(f"layer {args.layer}: o_proj K-part, its parts' last end, inputs in (first, median), us")
    for k in sorted(inputs):
        first, median = min(inputs[k]), statistics.median(inputs[k])
        print(f"  k{k}: parts end {parts_end[k]:7.2f}  in {first:7.2f} (+{first - parts_end[k]:.2f})  "
              f"median {median:7.2f} (+{median - parts_end[k]:.2f})")


if __name__ == "__main__":
    main()
