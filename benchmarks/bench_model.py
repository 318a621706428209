"""The whole decode step of a model (embedding, every layer, final norm, LM head, greedy argmax)
on the megakernel against what a PyTorch user has, in one process, with the weight-read floor.

    python benchmarks/bench_model.py --artifact out/model-1b [--preset llama-3.2-1b] [--layers N] [--pos 512]

The artifact is compiled beforehand (on any machine) from `adamk.models.LlamaModel` of the
preset. One random bf16 model serves every variant. The megakernel is checked first: its
logits against the float32 reference at `pos`, within 1e-2 relative error. It is then timed as
steps launched back to back, with the token and the position on the device. Its position
therefore advances from `pos` over the timed steps (the KV rows read per step grow with it;
the floor counts them at `pos`). The floor is the bytes a step must read (every weight once, one row of the embedding table,
the KV rows at `pos`) at the measured copy bandwidth. The baselines run at `pos`:
- eager: the tuned step (baselines.TunedStep) per layer, then the LM head and argmax, each layer's
  KV cache its own tensor (as serving stacks keep them: one [L, ...] tensor written through views
  makes torch.compile's functionalised graph slower: measured in docs/perf.md v25);
- the same captured in a CUDA graph;
- torch.compile(max-autotune-no-cudagraphs) of it, captured the same way.
Medians of CUDA-event times.
"""
from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn.functional as F

import adamk
from adamk.models import PRESETS, LlamaModel
from adamk.runtime.timing import copy_bandwidth, launch_count, time_launches
from baselines import TunedStep, graphed


def megakernel_tolerance(base_err: float) -> float:
    """The relative error the megakernel's logits may have against float32: 1e-2, or 1.5x bf16
    PyTorch's own where that is off by more (bf16 weights and caches set a noise floor)."""
    return max(1e-2, 1.5 * base_err)


class TunedModel(torch.nn.Module):
    """The whole step as a careful PyTorch user writes it: TunedStep per layer, greedy argmax."""

    def __init__(self, model: LlamaModel, device="cuda", dtype=torch.bfloat16):
        super().__init__()
        self.cfg = model.cfg
        self.embed = model.embed_tokens.weight.detach().to(device, dtype)
        self.layers = [TunedStep(layer, device, dtype) for layer in model.layers]
        self.norm = model.norm.weight.detach().to(device, dtype)
        self.head = model.lm_head.weight.detach().to(device, dtype)

    def forward(self, token, pos: int, k_caches: list, v_caches: list, logits: bool = False):
        """`token` [batch] the ids at `pos`; `k_caches[i]`, `v_caches[i]`: layer i's [batch, kv_heads,
        max_seq_len, head_dim] caches."""
        x = F.embedding(token, self.embed)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, k_caches[i], v_caches[i])
        x = self.norm * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps).to(x.dtype))
        out = F.linear(x, self.head)
        return out if logits else out.argmax(-1)


def random_model(cfg) -> LlamaModel:
    """A bf16-exact random model (weights with a trained model's spread), built on the GPU."""
    with torch.device("cuda"):
        model = LlamaModel(cfg, seed=None)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, device="cuda", generator=g))
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, device="cuda", generator=g))
            else:
                p.copy_(torch.randn(p.shape, device="cuda", generator=g) / math.sqrt(p.shape[1]))
            p.copy_(p.bfloat16().float())
    return model


def model_arguments(ap: argparse.ArgumentParser, artifact: bool = True) -> argparse.ArgumentParser:
    """The arguments naming a whole-model artifact and the model it was compiled from (this script's
    and trace_model.py's; bench_batch.py's name artifacts per batch): `preset_of(args)` is that model's config."""
    if artifact:
        ap.add_argument("--artifact", required=True)
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--layers", type=int, help="the preset with this many decoder layers (as compiled)")
    ap.add_argument("--pos", type=int, default=512)
    return ap


def preset_of(args):
    cfg = PRESETS[args.preset]
    return dataclasses.replace(cfg, num_layers=args.layers) if args.layers else cfg


def main():
    ap = model_arguments(argparse.ArgumentParser())
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()
    cfg, pos = preset_of(args), args.pos
    model = random_model(cfg)
    step = adamk.load(args.artifact, model)
    c = cfg
    shape = (c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim)
    kc = torch.randn(shape, device="cuda").bfloat16()
    vc = torch.randn_like(kc)
    token = int(torch.randint(0, c.vocab_size, (1,)))

    # correctness first: the megakernel's logits at pos against float32
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    logits, nxt = step(token, pos)
    with torch.no_grad():
        ref = model(torch.tensor([token], device="cuda"), torch.tensor(pos, device="cuda"),
                    kc.float().clone(), vc.float().clone()).reshape(-1)
    err = ((logits - ref).norm() / ref.norm()).item()
    with torch.no_grad():       # what bf16 PyTorch itself gives: the noise floor of bf16 weights and caches
        base = TunedModel(model)(torch.tensor([token], device="cuda"), pos, [t.clone() for t in kc.unbind(0)],
                                 [t.clone() for t in vc.unbind(0)], logits=True)
    base_err = ((base.float().reshape(-1) - ref).norm() / ref.norm()).item()
    print(f"logits vs float32 at pos {pos}: megakernel rel error {err:.2e} (token {nxt}), bf16 PyTorch "
          f"{base_err:.2e} (token {int(base.argmax())}); float32 token {int(ref.argmax())}")
    if err > megakernel_tolerance(base_err):
        raise SystemExit("the megakernel's logits are wrong; not timing it")

    read = step.read_bytes(pos)        # every weight but the embedding table, of which one row; the KV rows
    bw = copy_bandwidth()
    floor = read / bw * 1e6
    print(f"floor {floor:.1f} us: {read / 1e9:.2f} GB (weights and KV rows at {pos}) at {bw / 1e12:.2f} TB/s copy")
    rows = []
    step.k_cache.copy_(kc)
    step.v_cache.copy_(vc)
    step.start(token, pos)
    single, b2b = time_launches(step.launch, args.iters)
    step.check()
    rows.append((f"adamk megakernel (pos {pos}..{pos + launch_count(args.iters) - 1})", b2b, single))
    if not args.no_baselines:
        tuned = TunedModel(model)
        tok = torch.tensor([token], device="cuda")
        with torch.no_grad():
            kcc, vcc = [t.clone() for t in kc.unbind(0)], [t.clone() for t in vc.unbind(0)]
            eager_single, eager = time_launches(lambda: tuned(tok, pos, kcc, vcc), 20, block=10)
            rows.append(("PyTorch eager (tuned step)", eager, eager_single))
            g = graphed(lambda: tuned(tok, pos, kcc, vcc))
            rows.append(("tuned step, CUDA graph", *reversed(time_launches(g, args.iters))))
            compiled = torch.compile(tuned, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False)
            g = graphed(lambda: compiled(tok, pos, kcc, vcc))
            rows.append(("torch.compile(max-autotune-no-cudagraphs), CUDA graph", *reversed(time_launches(g, args.iters))))
    print(f"\n{'variant':60s} {'b2b ms':>8s} {'single ms':>10s} {'floor/time':>10s}")
    for name, t, single in rows:
        print(f"{name:60s} {t / 1e3:8.3f} {single / 1e3:10.3f} {floor / t:10.1%}")
    compiled_row = [t for name, t, _ in rows if name.startswith("torch.compile")]
    if compiled_row:
        print(f"\nmegakernel vs torch.compile in a CUDA graph: {compiled_row[0] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
