"""Where the megakernel's warps stall, per inlined function and per instruction: Nsight Compute's
warp-state sampling of one decode step, mapped onto the functions of the SASS (each task kind's
`attention_op<n>`, `linear_op<n>`, ...: nvdisasm's labels inside the one kernel).

    python benchmarks/stalls.py --out /tmp/st                    # compile the 1B layer, H200 target
    ncu --clock-control none --cache-control none --section SourceCounters --section WarpStateStats \\
        -k regex:adamk_decode_step --launch-skip 3 --launch-count 1 --export /tmp/st/prof \\
        python benchmarks/stalls.py --run /tmp/st --pos 512        # run steps under the profiler
    ncu --import /tmp/st/prof.ncu-rep --page source --csv --print-source sass > /tmp/st/sass.csv
    python benchmarks/stalls.py --report /tmp/st                   # per function, then per instruction

(`bash benchmarks/gpu_run.sh stalls` does all four, at each of STALL_POS.) `--cache-control none`:
Nsight Compute's default flushes the caches before each replay, so every instruction fetch of the
step is cold and "no instruction" looks like the bottleneck (58% of the attention's samples with
the flush, 7% without: docs/perf.md v16). The report reads the CSV's columns by name and prints
the header it found, so a change of Nsight Compute's column names shows at once.
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PRESET, GPU = "llama-3.2-1b", "H200"


def compile_layer(out: Path):
    import adamk
    from adamk.models import compile_preset
    out.mkdir(parents=True, exist_ok=True)
    print(compile_preset(PRESET, adamk.CompileConfig(gpu=GPU), str(out / "a")))


def run_steps(out: Path, pos: int, steps: int = 6):
    import torch

    import adamk
    from adamk.models import PRESETS, DecoderLayer
    cfg = PRESETS[PRESET]
    step = adamk.load(out / "a", DecoderLayer(cfg, seed=3))
    step.k_cache.normal_()
    step.v_cache.normal_()
    for _ in range(steps):
        step(torch.randn(1, cfg.hidden_size, device="cuda").bfloat16(), pos)
    torch.cuda.synchronize()


def functions(cubin: Path) -> list[tuple[int, str]]:
    """(start offset, demangled-ish name) of every label nvdisasm prints inside the kernel's text."""
    sass = subprocess.run(["nvdisasm", "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    starts, label = [], None
    for line in sass.splitlines():
        m = re.match(r"^\$adamk_decode_step\$_ZN5adamk\d+(\w+?)E", line.strip())
        if m and line.rstrip().endswith(":"):
            label = m.group(1)
            continue
        a = re.match(r"\s*/\*([0-9a-f]{4,})\*/", line)
        if a and label is not None:
            starts.append((int(a.group(1), 16), label))
            label = None
    return [(0, "kernel entry")] + starts


def report(out: Path, top: int = 40):
    rows = list(csv.reader(open(out / "sass.csv", newline="")))
    head_at = next(i for i, r in enumerate(rows) if any("Address" in c for c in r))
    head, body = rows[head_at], rows[head_at + 1:]
    print("columns:", " | ".join(head))
    col = {name: i for i, name in enumerate(head)}
    addr = next(i for n, i in col.items() if "Address" in n)
    src = next((i for n, i in col.items() if n.strip() == "Source"), None)
    samples = next((i for n, i in col.items() if "Sampling" in n and "All" in n), None)
    if samples is None:
        samples = next(i for n, i in col.items() if "Sampling" in n)
    reasons = [(n, i) for n, i in col.items() if n.startswith("stall_") or n.lower().startswith("stall ")]

    def num(s):
        try:
            return float(s.replace(",", ""))
        except ValueError:
            return 0.0

    insns = [(int(r[addr], 16), num(r[samples]), r) for r in body if len(r) > samples and r[addr].strip()]
    base = min(a for a, _, _ in insns)
    starts = functions(out / "a" / "kernel.sm_90.cubin")
    per_fn, per_fn_reason = defaultdict(float), defaultdict(lambda: defaultdict(float))
    total = sum(s for _, s, _ in insns) or 1.0
    located = []
    for a, s, r in insns:
        off = a - base
        fn = max((st for st in starts if st[0] <= off), key=lambda st: st[0])[1]
        per_fn[fn] += s
        for n, i in reasons:
            per_fn_reason[fn][n] += num(r[i])
        located.append((s, off, fn, r[src] if src is not None else ""))
    print(f"\nsamples per function ({total:.0f} in all)")
    for fn, s in sorted(per_fn.items(), key=lambda kv: -kv[1])[:25]:
        top_reasons = sorted(per_fn_reason[fn].items(), key=lambda kv: -kv[1])[:4]
        print(f"{100 * s / total:6.2f}%  {fn:40s} " + ", ".join(f"{n} {v:.0f}" for n, v in top_reasons if v))
    print(f"\ntop {top} instructions")
    for s, off, fn, text in sorted(located, reverse=True)[:top]:
        print(f"{100 * s / total:6.2f}%  {off:#08x}  {fn:30s} {text.strip()[:90]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, help="compile the layer into OUT/a")
    ap.add_argument("--run", type=Path, help="run steps of OUT/a (under ncu)")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--report", type=Path, help="read OUT/sass.csv and OUT/a's cubin")
    args = ap.parse_args()
    if args.out:
        compile_layer(args.out)
    elif args.run:
        run_steps(args.run, args.pos)
    elif args.report:
        report(args.report)
    else:
        sys.exit("give --out, --run or --report")


if __name__ == "__main__":
    main()
