"""What calling the megakernel through its PyTorch custom op costs, against launching it directly,
for both launchers (the Python runtime's cuda-bindings launches and the C++ runtime's Session), in
one process: eager calls back to back, and replays of a CUDA graph that holds one call.

    python benchmarks/bench_op.py [--preset tiny] [--gpu H200] [--pos 7] [--iters 2000]

The layer is compiled here (the tiny preset takes seconds) and checked against float32 first.
Medians of CUDA-event times over blocks of back-to-back calls (adamk.runtime.timing); the op's
overhead is its time less the direct launch's.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

import adamk
from adamk.models import PRESETS, DecoderLayer
from adamk.runtime import op
from adamk.runtime.timing import time_launches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--gpu", default="H200")
    ap.add_argument("--pos", type=int, default=7)
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    cfg = PRESETS[args.preset]
    layer = DecoderLayer(cfg, seed=0)
    path = adamk.compile(layer, adamk.CompileConfig(gpu=args.gpu)).save(tempfile.mkdtemp() + "/layer")
    x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
    rows = []
    for launcher in ("cuda-bindings", "cpp"):
        step = adamk.load(path, layer, launcher=launcher)
        kc = torch.randn(1, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim, device="cuda").bfloat16()
        step.k_cache.copy_(kc)
        step.v_cache.copy_(torch.randn_like(kc))
        with torch.no_grad():
            ref = layer.cuda()(x.float(), torch.tensor(args.pos, device="cuda"), step.k_cache.float(),
                               step.v_cache.float())
        y = op.call(step, x, args.pos)
        err = ((y.float() - ref).norm() / ref.norm()).item()
        if err > 1e-2:
            raise SystemExit(f"{launcher}: the op's output is wrong (relative error {err:.2e}); not timing it")
        step.buffers["x"].copy_(x)
        direct = time_launches(lambda: step.launch(args.pos), args.iters)[1]
        eager = time_launches(lambda: op.call(step, x, args.pos), args.iters)[1]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            op.call(step, x, args.pos)
        replayed = time_launches(graph.replay, args.iters)[1]
        own = step.graph(args.pos)
        own_replay = time_launches(own, args.iters)[1]
        step.check()
        rows += [(f"{launcher}: step.launch (direct)", direct, 0.0),
                 (f"{launcher}: op, eager", eager, eager - direct),
                 (f"{launcher}: step.graph replay", own_replay, own_replay - direct),
                 (f"{launcher}: op in a CUDA graph, replay", replayed, replayed - direct)]
    print(f"\n{args.preset} layer for {args.gpu} at pos {args.pos}, {torch.cuda.get_device_name()}")
    print(f"{'call':48s} {'us per call':>12s} {'overhead us':>12s}")
    for name, t, extra in rows:
        print(f"{name:48s} {t:12.2f} {extra:12.2f}")


if __name__ == "__main__":
    main()
