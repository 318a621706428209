"""Time one decoder layer's decode step: megakernel variants vs PyTorch eager, side by side in
one run, against the weight-read floor (weights + KV bytes / measured copy BW).

    python benchmarks/bench_layer.py --preset llama-3.2-1b --pos 512 \
        --variants H100,H100:no-ksplit,L20 [--json out.json]

A variant is a target GPU, optionally with `:no-ksplit` (the plan without K-splitting),
`:stages=N` or `:schedule=search|round-robin|barrier|queue`; `--cost-model` compiles every
variant with a profile from `adamk calibrate`. The artifacts are compiled in parallel
processes before anything is timed.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile

import torch

import adamk
from adamk.models import PRESETS, DecoderLayer, compile_presets
from adamk.runtime.timing import time_launches


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy, bytes read + written per second (median)."""
    a = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    times = []
    for _ in range(reps + 3):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); b.copy_(a); e.record(); e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * nbytes / statistics.median(times[3:])


def check_numerics(step, ref, pos: int):
    """The variant computes the layer: one step on fresh random inputs against the float32
    reference, within 1e-2 relative error (a benchmark of a wrong kernel is no result).
    Leaves random KV history in the step's cache."""
    cfg = ref.cfg
    x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
    step.k_cache.normal_()
    step.v_cache.normal_()
    kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
    y = step(x, pos).float()
    with torch.no_grad():
        want = ref(x.float(), torch.tensor(pos, device="cuda"), kc, vc).float()
    err = ((y - want).norm() / want.norm()).item()
    if not err <= 1e-2:
        raise SystemExit(f"{step.manifest['config']}: relative error {err:.3g} against float32 PyTorch")


def variant_config(variant: str, cost_model: str | None = None) -> adamk.CompileConfig:
    gpu, *options = variant.split(":")
    kwargs = {"cost_model": cost_model}
    for o in options:
        if o == "no-ksplit":
            kwargs["ksplit"] = False
        elif o.startswith("stages="):
            kwargs["stages"] = int(o.split("=")[1])
        elif o.startswith("schedule="):
            kwargs["schedule"] = o.split("=")[1]
        else:
            raise SystemExit(f"unknown variant option '{o}'")
    return adamk.CompileConfig(gpu=gpu, **kwargs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pos", type=int, default=512)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--variants", default="H100,L20")
    ap.add_argument("--cost-model", help="a profile from `adamk calibrate` for every variant")
    ap.add_argument("--json")
    args = ap.parse_args()
    run(args.preset, args.pos, args.iters, args.variants.split(","), args.cost_model, args.json)


def run(preset: str, pos: int, iters: int, variants: list[str], cost_model: str | None, json_path: str | None):
    """Compile the variants, then time them, eager PyTorch and the floor in one process.
    Returns (floor_us, rows of (name, median us, back-to-back us, predicted us))."""
    cfg = PRESETS[preset]
    layer = DecoderLayer(cfg, seed=0)
    with torch.no_grad():      # weights exactly representable in bf16, so the reference is the kernel's layer
        for p in layer.parameters():
            p.copy_(p.bfloat16().float())
    bw = copy_bandwidth()
    weight_bytes = 2 * sum(p.numel() for p in layer.parameters())
    kv_bytes = 2 * 2 * (pos + 1) * cfg.num_kv_heads * cfg.head_dim
    floor_us = (weight_bytes + kv_bytes) / bw * 1e6
    rows = []
    x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
    ref = copy.deepcopy(layer).to(device="cuda")          # float32, for the numerics check
    with tempfile.TemporaryDirectory() as tmp:
        paths = compile_presets([(preset, variant_config(v, cost_model)) for v in variants], tmp)
        for variant, path in zip(variants, paths):
            step = adamk.load(path, layer)
            check_numerics(step, ref, pos)               # a wrong kernel is not timed; leaves random KV
            step.buffers["x"].copy_(x)
            med, b2b = time_launches(lambda: step.launch(pos), iters)
            step.check()
            m = step.manifest
            rows.append((f"megakernel {variant} ({step.grid} blocks, {step.loaded_from}, "
                         f"{m['smem_peak_bytes']} B smem)", med, b2b, m["predicted_step_us"]))
    del ref
    eager = layer.to(device="cuda", dtype=torch.bfloat16)
    kc, vc = eager.new_kv_cache(device="cuda")
    kc.normal_(); vc.normal_()
    pos_t = torch.tensor(pos, device="cuda")
    with torch.no_grad():
        med, b2b = time_launches(lambda: eager(x, pos_t, kc, vc), iters)
    rows.append(("PyTorch eager (bf16)", med, b2b, None))

    print(f"\n{preset} layer, pos {pos}, {torch.cuda.get_device_name()}")
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; weights {weight_bytes / 1e6:.1f} MB + KV {kv_bytes / 1e6:.2f} MB "
          f"-> floor {floor_us:.1f} us")
    print(f"{'variant':66s} {'median us':>10s} {'b2b us':>9s} {'floor/b2b':>9s} {'predicted':>9s}")
    for name, med, b2b, pred in rows:
        print(f"{name:66s} {med:10.1f} {b2b:9.1f} {floor_us / b2b:9.1%} {pred if pred is not None else '':>9}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"preset": preset, "pos": pos, "copy_bw": bw, "floor_us": floor_us,
                       "rows": [{"name": n, "median_us": m, "b2b_us": b, "predicted_us": p} for n, m, b, p in rows]},
                      f, indent=2)
    return floor_us, rows


if __name__ == "__main__":
    main()
