"""The whole decode step of a model for batches of sequences (issue 14's table): per batch size,
torch.compile(max-autotune-no-cudagraphs) of the tuned step in a CUDA graph and, where an artifact
of that batch is given, the megakernel; every sequence at position `pos`, one process, one
random bf16 model, medians of CUDA-event times, with the weight-read floor (every weight once per
step whatever the batch, one embedding row and the KV rows at `pos` per sequence).

    python benchmarks/bench_batch.py [--preset llama-3.2-1b] [--pos 512] [--batches 1,4,8,16] \\
        [--artifact 1=out/model-1b ...]

Each baseline is checked first: its logits for every sequence against float32 PyTorch of that
sequence alone (relative error within BASELINE_TOLERANCE: its activations are bf16 through every
layer, 1.9-2.0e-2 for the 1B preset on the H200, docs/perf.md v28). Where `--artifact B=DIR`
gives a megakernel of batch B (compiled with `--batch-size B`; several for one B are each timed, an
A/B against the same baseline, named by their directories), its logits are checked the same way
first (within 1e-2, or 1.5x the baseline's error where bf16 PyTorch is off by more, as
bench_model.py checks one sequence), then it is timed. The table's ratios say what the targets
need: batch 8 at most 1.15x batch 1, every batch at least 1.5x faster than torch.compile.
`--no-baselines` times the megakernels alone (an A/B: torch.compile takes ~2 minutes a batch to
tune); the baseline is still checked, as its errors set the megakernel's tolerance.
"""
from __future__ import annotations

import argparse

import torch

import adamk
from adamk.runtime.timing import copy_bandwidth, time_launches
from baselines import graphed
from bench_model import TunedModel, megakernel_tolerance, model_arguments, preset_of, random_model

BASELINE_TOLERANCE = 5e-2


def references(model, tokens, pos, kc, vc) -> list:
    """Every sequence's float32 logits, of that sequence alone."""
    with torch.no_grad():
        return [model(tokens[b:b + 1], torch.tensor(pos, device="cuda"), kc[:, b:b + 1].float().clone(),
                      vc[:, b:b + 1].float().clone()).reshape(-1) for b in range(tokens.shape[0])]


def errors(logits, refs) -> list[float]:
    """Each sequence's relative error of `logits` [batch, vocab] against its reference."""
    return [((logits[b].float().reshape(-1) - ref).norm() / ref.norm()).item() for b, ref in enumerate(refs)]


def check(tuned, refs, tokens, pos, kc, vc) -> list[float]:
    """The baseline's bf16 logits against float32 for every sequence; its errors (the bf16 noise floor)."""
    with torch.no_grad():
        logits = tuned(tokens, pos, [t.clone() for t in kc.unbind(0)], [t.clone() for t in vc.unbind(0)], logits=True)
    errs = errors(logits, refs)
    for b, err in enumerate(errs):
        if err > BASELINE_TOLERANCE:
            raise SystemExit(f"batch {tokens.shape[0]}, sequence {b}: the baseline's logits are off by {err:.2e}")
    return errs


def compiled_step_us(tuned, tokens, pos, kc, vc, iters) -> float:
    """torch.compile(max-autotune-no-cudagraphs) of the tuned step, replayed in a CUDA graph: median us."""
    kcc, vcc = [t.clone() for t in kc.unbind(0)], [t.clone() for t in vc.unbind(0)]
    compiled = torch.compile(tuned, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False)
    with torch.no_grad():
        g = graphed(lambda: compiled(tokens, pos, kcc, vcc))
        _, base = time_launches(g, iters)
    return base


def main():
    ap = model_arguments(argparse.ArgumentParser(), artifact=False)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--artifact", action="append", default=[], help="B=DIR: the megakernel for a batch of B")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--no-baselines", action="store_true", help="time the megakernels only (an A/B)")
    args = ap.parse_args()
    cfg, pos = preset_of(args), args.pos
    batches = [int(b) for b in args.batches.split(",")]
    artifacts: dict[int, list[str]] = {}
    for b, d in (a.split("=", 1) for a in args.artifact):
        artifacts.setdefault(int(b), []).append(d)
    model = random_model(cfg)
    tuned = TunedModel(model)
    weights = sum(p.numel() * 2 for name, p in model.named_parameters() if "embed" not in name)
    bw = copy_bandwidth()
    c, rows = cfg, []
    for batch in batches:
        shape = (c.num_layers, batch, c.num_kv_heads, c.max_seq_len, c.head_dim)
        kc = torch.randn(shape, device="cuda").bfloat16()
        vc = torch.randn_like(kc)
        tokens = torch.randint(0, c.vocab_size, (batch,), device="cuda")
        refs = references(model, tokens, pos, kc, vc)
        base_errs = check(tuned, refs, tokens, pos, kc, vc)
        limits = [megakernel_tolerance(e) for e in base_errs]
        read = weights + batch * (c.hidden_size + 2 * c.num_layers * c.num_kv_heads * (pos + 1) * c.head_dim) * 2
        floor = read / bw * 1e6
        base = None if args.no_baselines else compiled_step_us(tuned, tokens, pos, kc, vc, args.iters)
        ours = []                                   # (artifact, median us) for each of this batch's
        for path in artifacts.get(batch, []):
            try:            # an A/B goes on past an artifact that does not load (its line says why)
                step = adamk.load(path, model)
            except adamk.AdamkError as e:
                print(f"batch {batch}: {path} skipped: {e}", flush=True)
                continue
            if step.manifest["config"]["batch_size"] != batch:
                raise SystemExit(f"{path} was compiled for a batch of {step.manifest['config']['batch_size']}")
            ids = tokens.tolist()
            # correctness first: every sequence's logits against float32, as bench_model.py checks one
            step.k_cache.copy_(kc)
            step.v_cache.copy_(vc)
            logits, _ = step(ids[0], pos) if batch == 1 else step(ids, [pos] * batch)
            errs = errors(logits.reshape(batch, -1), refs)
            worst = max(range(batch), key=lambda b: errs[b] / limits[b])
            print(f"batch {batch}: {path} logits vs float32: worst rel error {errs[worst]:.2e} (sequence {worst}; "
                  f"bf16 PyTorch {base_errs[worst]:.2e})", flush=True)
            if errs[worst] > limits[worst]:
                raise SystemExit(f"batch {batch}: {path}'s logits are wrong; not timing it")
            step.k_cache.copy_(kc)
            step.v_cache.copy_(vc)
            step.start(ids[0], pos) if batch == 1 else step.start(ids, [pos] * batch)
            _, t = time_launches(step.launch, args.iters)
            step.check()
            ours.append((path, t))
            del step
        rows.append((batch, floor, base, ours))
        print(f"batch {batch}: " + (f"torch.compile in a CUDA graph {base / 1e3:.3f} ms" if base else "")
              + "".join(f", megakernel {path} {t / 1e3:.3f} ms" for path, t in ours), flush=True)
    print_table(rows)


def print_table(rows: list) -> None:
    """rows: (batch, floor us, torch.compile us or None, [(artifact, us), ...]) in --batches order."""
    # the 'x batch 1' columns: against batch 1's row wherever --batches put it; an A/B's i-th artifact
    # of a batch against batch 1's i-th (the same variant where each batch lists them in one order)
    first = next((r for r in rows if r[0] == 1), None)
    base1 = first[2] if first else None
    ours1 = [t for _, t in first[3]] if first else []
    print(f"\n{'batch':>5s} {'floor ms':>9s} {'compile ms':>11s} {'x batch 1':>10s} {'adamk ms':>9s} "
          f"{'x batch 1':>10s} {'vs compile':>11s}  artifact")
    for batch, floor, base, ours in rows:
        compiled = (f"{base / 1e3:11.3f} " + (f"{base / base1:10.2f} " if base1 else f"{'-':>10s} ") if base
                    else f"{'-':>11s} {'-':>10s} ")
        head = f"{batch:5d} {floor / 1e3:9.3f} " + compiled
        if not ours:                        # a batch timed for torch.compile alone
            print(head + f"{'-':>9s} {'-':>10s} {'-':>11s}")
        for i, (path, t) in enumerate(ours):
            vs = f"{base / t:10.2f}x" if base else f"{'-':>11s}"
            t1 = ours1[i] if i < len(ours1) else ours1[0] if ours1 else None
            rel = f"{t / t1:10.2f}" if t1 else f"{'-':>10s}"
            print(head + f"{t / 1e3:9.3f} {rel} {vs}  {path}")


if __name__ == "__main__":
    main()
