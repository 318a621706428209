"""Time prebuilt artifacts of the bundled 1B layer side by side in one process: each is checked
against the float32 reference first, then timed (back-to-back median), with the weight-read floor.
For device-code experiments: compile each variant (e.g. from a checkout of a branch, in parallel
processes), then compare them in one run. A variant that computes the layer wrongly, or whose
launch records an error, gets a line that says so and is dropped; the others are still timed, and
the script then exits with status 1.

    python benchmarks/compare_artifacts.py --pos 512,4095 base=/tmp/a new=/tmp/b [--baselines]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

import torch

import adamk
from adamk.errors import KernelError
from adamk.models import PRESETS
from adamk.runtime.timing import time_launches
from adamk.runtime.timing import copy_bandwidth
from bench_layer import (BASELINE_TOLERANCE, bf16_exact_layer, check, check_numerics, read_bytes,
                         reference, rel_error)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("artifacts", nargs="+", help="NAME=DIR")
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pos", default="512")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--baselines", action="store_true", help="also torch.compile of the tuned step in a CUDA graph")
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    layer = bf16_exact_layer(cfg)
    ref = copy.deepcopy(layer).to(device="cuda")
    bw = copy_bandwidth()
    steps = {}
    for a in args.artifacts:
        name, _, path = a.partition("=")
        if not path:
            raise SystemExit(f"'{a}': expected NAME=DIR")
        steps[name] = adamk.load(path, layer)
    refs = {name: reference_for(ref, step.max_seq_len) for name, step in steps.items()}
    loaded = len(steps)
    for pos in (int(p) for p in args.pos.split(",")):
        floor = sum(read_bytes(layer, cfg, pos)) / bw * 1e6
        print(f"pos {pos}: floor {floor:.1f} us (copy {bw / 1e12:.2f} TB/s)")
        x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
        for name, step in list(steps.items()):
            try:            # an A/B goes on past a wrong variant (its line says why)
                check_numerics(step, refs[name], pos)
                step.buffers["x"].copy_(x)
                med, b2b = time_launches(lambda: step.launch(pos), args.iters)
                step.check()
            except (SystemExit, adamk.AdamkError, KernelError) as e:   # a context broken by a fault drops the rest too
                print(f"  {name}: dropped: {e}", flush=True)
                del steps[name]
                continue
            print(f"  {name:40s} b2b {b2b:7.1f} us  single {med:7.1f} us  {floor / b2b:6.1%} of floor", flush=True)
        if args.baselines:
            from baselines import TunedStep, compiled, graphed
            kc = torch.randn(1, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim, device="cuda").bfloat16()
            vc = torch.randn_like(kc)
            want = reference(ref, x, pos, kc, vc)
            fn = compiled(TunedStep(layer))
            with torch.no_grad():
                check("torch.compile", rel_error(fn(x, pos, kc, vc), want), BASELINE_TOLERANCE)
                med, b2b = time_launches(graphed(lambda: fn(x, pos, kc, vc)), args.iters)
            print(f"  {'torch.compile, CUDA graph':40s} b2b {b2b:7.1f} us  single {med:7.1f} us  {floor / b2b:6.1%} of floor")
    if len(steps) < loaded:                  # some variant was dropped
        raise SystemExit(1)


def reference_for(ref, max_seq_len: int):
    """`ref` with the KV cache length of an artifact compiled for another max_seq_len: a shallow
    copy, sharing its weights (only its forward's causal mask reads the length)."""
    if max_seq_len == ref.cfg.max_seq_len:
        return ref
    other = copy.copy(ref)
    other.cfg = dataclasses.replace(ref.cfg, max_seq_len=max_seq_len)
    return other


if __name__ == "__main__":
    main()
