"""Run the tiny preset's kernels under compute-sanitizer: every schedule variant, two steps each,
checked against the float32 reference (a run the sanitizer slows down must still be right).

    python benchmarks/sanitize.py --gpu H200 --out /tmp/san          # compile the variants
    compute-sanitizer --tool racecheck --error-exitcode 1 \\
        python benchmarks/sanitize.py --run /tmp/san                 # run them (memcheck, synccheck too)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCHEDULES = ("search", "round-robin", "barrier", "queue")


def compile_all(gpu: str, out: Path):
    import adamk
    from adamk.models import compile_presets
    out.mkdir(parents=True, exist_ok=True)
    paths = compile_presets([("tiny", adamk.CompileConfig(gpu=gpu, schedule=s)) for s in SCHEDULES], out)
    print("\n".join(paths))


def run_all(out: Path):
    import torch

    import adamk
    from adamk.models import PRESETS, DecoderLayer
    cfg = PRESETS["tiny"]
    layer = DecoderLayer(cfg, seed=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(p.bfloat16().float())
    ref = layer.cuda()
    for path in sorted(p for p in out.iterdir() if (p / "manifest.json").is_file()):
        step = adamk.load(path, layer, timeout_s=60.0)        # the sanitizer slows every wait down
        for pos in (0, cfg.max_seq_len - 1):
            x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
            step.k_cache.normal_()
            step.v_cache.normal_()
            kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
            y = step(x, pos).float()
            with torch.no_grad():
                want = ref(x.float(), torch.tensor(pos, device="cuda"), kc, vc)
            err = ((y - want).norm() / want.norm()).item()
            print(f"{path.name} {step.manifest['config']['schedule']} pos {pos}: relative error {err:.2e}")
            if not err <= 1e-2:
                sys.exit(f"{path}: wrong result under the sanitizer")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", default="H200")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--run", type=Path)
    args = ap.parse_args()
    if args.run:
        run_all(args.run)
    else:
        compile_all(args.gpu, args.out)


if __name__ == "__main__":
    main()
