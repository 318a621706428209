"""Time one decoder layer's decode step: megakernel variants against what a PyTorch user has
(eager, the tuned cuBLAS+SDPA step in a CUDA graph, torch.compile of it in a CUDA graph),
side by side in one process with the same weights, against the weight-read floor (weights +
KV bytes of the step / measured copy bandwidth), at one or more positions.

    python benchmarks/bench_layer.py --preset llama-3.2-1b --pos 512,4095 \
        --variants H200,H100,L20 --baselines [--json out.json]

A variant is a target GPU, optionally with `:no-ksplit` (the plan without K-splitting),
`:no-gate-up` (gate and up as two linears, silu(gate) * up staged by down),
`:stages=N`, `:in_flight=N` (pages copied at once), `:page_kb=N` (ring page size), `:tile_rows=N` or
`:schedule=search|round-robin|barrier|queue`; `--cost-model` compiles every
variant with a profile from `adamk calibrate`. The artifacts are compiled in parallel
processes before anything is timed; every variant and baseline is checked against the
float32 reference at each position before it is timed. Times are medians over blocks of
back-to-back launches (graph replays for the baselines); every variant is timed both ways, as
launches and as replays of a CUDA graph of one step.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile

import torch

import adamk
from adamk.models import PRESETS, DecoderLayer, compile_presets
from adamk.runtime.timing import copy_bandwidth, time_launches


def bf16_exact_layer(cfg, seed: int = 0):
    """The preset's layer with weights exactly representable in bf16, so the float32 reference
    computes what the kernel's bf16 weights do."""
    layer = DecoderLayer(cfg, seed=seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(p.bfloat16().float())
    return layer


def read_bytes(layer, cfg, pos: int) -> tuple[int, int]:
    """(weight bytes, KV bytes) one step must read, in bf16: every weight, the K and V rows 0..pos.
    Over the copy bandwidth, the weight-read floor."""
    return 2 * sum(p.numel() for p in layer.parameters()), 2 * 2 * (pos + 1) * cfg.num_kv_heads * cfg.head_dim


def rel_error(y, want) -> float:
    return ((y.float() - want.float()).norm() / want.float().norm()).item()


def reference(ref, x, pos: int, kc, vc):
    with torch.no_grad():
        return ref(x.float(), torch.tensor(pos, device="cuda"), kc.float().clone(), vc.float().clone()).float()


BASELINE_TOLERANCE = 3e-2   # PyTorch's bf16 steps round every activation to bf16 (eager: ~1.1e-2)


def check(name: str, err: float, tolerance: float = 1e-2):
    """A benchmark of a wrong kernel is no result: within `tolerance` of float32 PyTorch, or stop
    (1e-2 for the megakernel, whose activations stay float32)."""
    print(f"  {name}: relative error {err:.2e} against float32 PyTorch")
    if not err <= tolerance:
        raise SystemExit(f"{name}: relative error {err:.3g} against float32 PyTorch")


def check_numerics(step, ref, pos: int):
    """The variant computes the layer: one step on fresh random inputs against the float32
    reference. Leaves random KV history in the step's cache."""
    x = torch.randn(1, ref.cfg.hidden_size, device="cuda").bfloat16()
    step.k_cache.normal_()
    step.v_cache.normal_()
    want = reference(ref, x, pos, step.k_cache, step.v_cache)
    check(str(step.manifest["config"]), rel_error(step(x, pos), want))


def variant_config(variant: str, cost_model: str | None = None) -> adamk.CompileConfig:
    gpu, *options = variant.split(":")
    kwargs = {"cost_model": cost_model}
    for o in options:
        if o == "no-ksplit":
            kwargs["ksplit"] = False
        elif o == "no-gate-up":
            kwargs["gate_up"] = False
        elif o.startswith("stages="):
            kwargs["stages"] = int(o.split("=")[1])
        elif o.startswith("in_flight="):
            kwargs["pages_in_flight"] = int(o.split("=")[1])
        elif o.startswith("page_kb="):
            kwargs["stage_bytes"] = int(o.split("=")[1]) * 1024
        elif o.startswith("tile_rows="):
            kwargs["tile_rows"] = int(o.split("=")[1])
        elif o.startswith("schedule="):
            kwargs["schedule"] = o.split("=")[1]
        else:
            raise SystemExit(f"unknown variant option '{o}'")
    return adamk.CompileConfig(gpu=gpu, **kwargs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--pos", default="512", help="positions, comma-separated")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--variants", default="H200,H100,L20")
    ap.add_argument("--baselines", action="store_true",
                    help="also the tuned step in a CUDA graph and torch.compile of it (compiles for minutes)")
    ap.add_argument("--cost-model", help="a profile from `adamk calibrate` for every variant")
    ap.add_argument("--json")
    args = ap.parse_args()
    positions = [int(p) for p in args.pos.split(",")]
    results = [run(args.preset, pos, args.iters, args.variants.split(","), args.cost_model, args.baselines)
               for pos in positions]
    summary(args.preset, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"preset": args.preset, "pos": pos, "floor_us": floor,
                        "rows": [{"name": n, "median_us": m, "b2b_us": b, "predicted_us": p} for n, m, b, p in rows]}
                       for pos, floor, rows in results], f, indent=2)


_COMPILED = {}      # preset -> (artifact paths by variant, their temporary directory), across positions


def run(preset: str, pos: int, iters: int, variants: list[str], cost_model: str | None, baselines: bool = False):
    """Compile the variants (once per process), then time them, the baselines and the floor.
    Returns (pos, floor_us, rows of (name, median us, back-to-back us, predicted us))."""
    from baselines import TunedStep, compiled, graphed
    cfg = PRESETS[preset]
    layer = bf16_exact_layer(cfg)
    bw = copy_bandwidth()
    weight_bytes, kv_bytes = read_bytes(layer, cfg, pos)
    floor = (weight_bytes + kv_bytes) / bw * 1e6
    rows = []
    x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
    ref = copy.deepcopy(layer).to(device="cuda")          # float32, for the numerics checks
    key = (preset, tuple(variants), cost_model)
    if key not in _COMPILED:
        tmp = tempfile.TemporaryDirectory()
        _COMPILED[key] = (compile_presets([(preset, variant_config(v, cost_model)) for v in variants], tmp.name), tmp)
    for variant, path in zip(variants, _COMPILED[key][0]):
        step = adamk.load(path, layer)
        check_numerics(step, ref, pos)               # a wrong kernel is not timed; leaves random KV
        step.buffers["x"].copy_(x)
        med, b2b = time_launches(lambda: step.launch(pos), iters)
        step.check()
        m = step.manifest
        what = f"({step.grid} blocks, {step.loaded_from}, {m['smem_peak_bytes']} B smem)"
        rows.append((f"adamk {variant} {what}", med, b2b, m["predicted_step_us"]))
        med, b2b = time_launches(step.graph(pos), iters)     # as the baselines: replays of a CUDA graph
        step.check()
        rows.append((f"adamk {variant}, CUDA graph {what}", med, b2b, m["predicted_step_us"]))
        del step
    kc = torch.randn(1, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim, device="cuda").bfloat16()
    vc = torch.randn_like(kc)
    want = reference(ref, x, pos, kc, vc)
    eager = copy.deepcopy(layer).to(device="cuda", dtype=torch.bfloat16)
    pos_t = torch.tensor(pos, device="cuda")
    with torch.no_grad():
        check("PyTorch eager", rel_error(eager(x, pos_t, kc.clone(), vc.clone()), want), BASELINE_TOLERANCE)
        med, b2b = time_launches(lambda: eager(x, pos_t, kc, vc), iters)
    rows.append(("PyTorch eager (bf16)", med, b2b, None))
    if baselines:
        tuned = TunedStep(layer)
        for name, fn in (("tuned cuBLAS+SDPA step, CUDA graph", tuned),
                         ("torch.compile(max-autotune-no-cudagraphs), CUDA graph", compiled(tuned))):
            with torch.no_grad():
                k2, v2 = kc.clone(), vc.clone()
                check(name, rel_error(fn(x, pos, k2, v2), want), BASELINE_TOLERANCE)
                replay = graphed(lambda: fn(x, pos, k2, v2))
                med, b2b = time_launches(replay, iters)
            rows.append((name, med, b2b, None))
    del ref

    print(f"\n{preset} layer, pos {pos}, {torch.cuda.get_device_name()}")
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; weights {weight_bytes / 1e6:.1f} MB + KV {kv_bytes / 1e6:.2f} MB "
          f"-> floor {floor:.1f} us")
    print(f"{'variant':66s} {'median us':>10s} {'b2b us':>9s} {'floor/b2b':>9s} {'predicted':>9s}")
    for name, med, b2b, pred in rows:
        print(f"{name:66s} {med:10.1f} {b2b:9.1f} {floor / b2b:9.1%} {pred if pred is not None else '':>9}")
    return pos, floor, rows


def summary(preset: str, results):
    """The short table, last: per position, each row's back-to-back time, share of the floor
    and speed-up over torch.compile in a CUDA graph (where it ran)."""
    print(f"\nsummary: {preset} layer, {torch.cuda.get_device_name()}, us per step (back-to-back median)")
    for pos, floor, rows in results:
        base = next((b for n, _, b, _ in rows if n.startswith("torch.compile")), None)
        print(f"pos {pos}: floor {floor:.1f} us")
        for name, _, b2b, pred in rows:
            vs = f"  {base / b2b:.2f}x torch.compile" if base else ""
            predicted = f"  predicted {pred}" if pred is not None else ""
            print(f"  {name.split(' (')[0]:58s} {b2b:7.1f} us  {floor / b2b:6.1%} of floor{vs}{predicted}")


if __name__ == "__main__":
    main()
