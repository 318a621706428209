"""Run the tiny preset's kernels under compute-sanitizer: every schedule variant of the layer, two
steps each, the whole tiny model (searched and round-robin), three steps each, and a batch of
BATCH sequences at their own positions (the layer, also with one attention part, and the whole
model), checked against the float32 reference (a run the sanitizer slows down must still be right).

    python benchmarks/sanitize.py --gpu H200 --out /tmp/san          # compile the variants
    compute-sanitizer --tool racecheck --error-exitcode 1 \\
        python benchmarks/sanitize.py --run /tmp/san                 # run them (memcheck, synccheck too)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCHEDULES = ("search", "round-robin", "barrier", "queue")
MODEL_SCHEDULES = ("search", "round-robin")    # a whole model's layer loop takes these two
BATCH = 4                                      # the batch variants' sequences


def bf16_exact(module):
    """`module` with every parameter rounded to bf16 (the kernel's weights), so float32 PyTorch of it
    is the reference."""
    import torch
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.bfloat16().float())
    return module


def tiny_model():
    from adamk.models import PRESETS, LlamaModel
    return bf16_exact(LlamaModel(PRESETS["tiny"], seed=4))


def tiny_layer():
    from adamk.models import PRESETS, DecoderLayer
    return bf16_exact(DecoderLayer(PRESETS["tiny"], seed=4))


def compile_all(gpu: str, out: Path):
    import adamk
    from adamk.models import compile_presets
    out.mkdir(parents=True, exist_ok=True)
    paths = compile_presets([("tiny", adamk.CompileConfig(gpu=gpu, schedule=s)) for s in SCHEDULES], out)
    for s in MODEL_SCHEDULES:
        paths.append(str(adamk.compile(tiny_model(), adamk.CompileConfig(gpu=gpu, schedule=s)).save(out / f"model-{s}")))
    batch = adamk.CompileConfig(gpu=gpu, batch_size=BATCH)
    paths.append(str(adamk.compile(tiny_layer(), batch).save(out / "batch-layer")))
    paths.append(str(adamk.compile(tiny_model(), batch).save(out / "batch-model")))
    # one attention part: the attention's output is o_proj's plain input, not a merge of parts
    one_part = adamk.CompileConfig(gpu=gpu, batch_size=BATCH, attention_parts=1)
    paths.append(str(adamk.compile(tiny_layer(), one_part).save(out / "batch-layer-one-part")))
    print("\n".join(paths))


def check_error(path: Path, what: str, got, want):
    """`got` against the float32 reference `want` within 1e-2 relative error, or exit: a run the
    sanitizer slows down must still be right."""
    err = ((got.float().reshape(-1) - want.reshape(-1)).norm() / want.norm()).item()
    print(f"{path.name} {what}: relative error {err:.2e}")
    if not err <= 1e-2:
        sys.exit(f"{path}: wrong result under the sanitizer")


def run_model(path: Path):
    import torch

    import adamk
    model = tiny_model()
    ref = model.cuda()
    step = adamk.load(path, model, timeout_s=60.0)
    c = model.cfg
    step.k_cache.normal_()
    step.v_cache.normal_()
    kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
    token, pos = 7, c.max_seq_len - 4
    for p in range(pos, pos + 3):
        logits, nxt = step(token, p)
        with torch.no_grad():
            want = ref(torch.tensor([token], device="cuda"), torch.tensor(p, device="cuda"), kc, vc).reshape(-1)
        check_error(path, f"whole model pos {p}", logits, want)
        token = nxt


def run_batch_layer(path: Path):
    """BATCH sequences at the cache's first, last and two middle positions, each against float32 alone."""
    import torch

    import adamk
    layer = tiny_layer()
    ref, cfg = layer.cuda(), layer.cfg
    step = adamk.load(path, layer, timeout_s=60.0)
    x = torch.randn(BATCH, cfg.hidden_size, device="cuda").bfloat16()
    step.k_cache.normal_()
    step.v_cache.normal_()
    kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
    positions = [0, cfg.max_seq_len - 1] + [cfg.max_seq_len // 2 + b for b in range(BATCH - 2)]
    y = step(x, positions).reshape(BATCH, -1)
    for b, pos in enumerate(positions):
        with torch.no_grad():
            want = ref(x[b:b + 1].float(), torch.tensor(pos, device="cuda"), kc[b:b + 1].clone(), vc[b:b + 1].clone())
        check_error(path, f"sequence {b} pos {pos}", y[b], want)


def run_batch_model(path: Path):
    """Two steps of BATCH sequences at their own positions, each sequence's logits against float32 alone."""
    import torch

    import adamk
    model = tiny_model()
    ref, c = model.cuda(), model.cfg
    step = adamk.load(path, model, timeout_s=60.0)
    step.k_cache.normal_()
    step.v_cache.normal_()
    kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
    tokens, positions = [7 + b for b in range(BATCH)], [c.max_seq_len - 4 - b for b in range(BATCH)]
    for _ in range(2):
        logits, nxt = step(tokens, positions)
        logits = logits.reshape(BATCH, -1)
        for b in range(BATCH):
            with torch.no_grad():
                want = ref(torch.tensor([tokens[b]], device="cuda"), torch.tensor(positions[b], device="cuda"),
                           kc[:, b:b + 1], vc[:, b:b + 1])
            check_error(path, f"sequence {b} pos {positions[b]}", logits[b], want)
        tokens, positions = [int(t) for t in nxt], [p + 1 for p in positions]


def run_all(out: Path):
    import torch

    import adamk
    layer = tiny_layer()
    cfg = layer.cfg
    ref = layer.cuda()
    for path in sorted(p for p in out.iterdir() if (p / "manifest.json").is_file()):
        if path.name.startswith("model-"):
            run_model(path)
            continue
        if path.name.startswith("batch-"):
            (run_batch_layer if path.name.startswith("batch-layer") else run_batch_model)(path)
            continue
        step = adamk.load(path, layer, timeout_s=60.0)        # the sanitizer slows every wait down
        for pos in (0, cfg.max_seq_len - 1):
            x = torch.randn(1, cfg.hidden_size, device="cuda").bfloat16()
            step.k_cache.normal_()
            step.v_cache.normal_()
            kc, vc = step.k_cache.float().clone(), step.v_cache.float().clone()
            y = step(x, pos)
            with torch.no_grad():
                want = ref(x.float(), torch.tensor(pos, device="cuda"), kc, vc)
            check_error(path, f"{step.manifest['config']['schedule']} pos {pos}", y, want)


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
