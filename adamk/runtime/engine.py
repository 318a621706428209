"""`adamk.Engine(artifact_dir, weights)`: prefill on a high-throughput PyTorch path, decode on
the megakernel (the paper's hybrid).

The prompt's tokens but the last go through PyTorch in one batched pass per layer (cuBLAS
matmuls, SDPA with a causal mask), which writes their keys and values straight into the
megakernel's KV caches (`[layers, batch, kv_heads, max_seq_len, head_dim]`, bf16; a batch's
prompts each into its sequence's rows). The last prompt token is then the first decode step's
input, so every new token comes from the megakernel, whose steps run back to back with the token
and the position on the device (a batch: each sequence's, decoded together). What the prefill computes
comes from the artifact's manifest (`model.prefill`: each weight's role, the epsilons, the RoPE
frequencies, the attention scale), so it serves any model the compiler folded, under its own
weight names.
"""
from __future__ import annotations

import dataclasses
import time

from ..artifact import read_manifest
from ..errors import AdamkError
from .model import ModelStep


@dataclasses.dataclass
class Generation:
    tokens: list                   # the new tokens (a batch's artifact: a list per prompt)
    prefill_s: float               # the PyTorch prefill of the prompt
    step_s: list[float]            # per decode step (CUDA events), the first included

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second of decode steps, every sequence's of a batch counted."""
        sequences = len(self.tokens) if self.tokens and isinstance(self.tokens[0], list) else 1
        return sequences * len(self.step_s) / sum(self.step_s) if self.step_s else 0.0


class Engine:
    def __init__(self, path, weights, device=None, timeout_s: float = 2.0, weights_prefix: str = "",
                 names_prefix: str = ""):
        model = read_manifest(path)["model"]
        if not model.get("whole_model"):
            raise AdamkError("adamk.Engine runs a whole model; this artifact is one decoder layer (adamk.load it)")
        self.plan = model.get("prefill")
        if self.plan is None:
            raise AdamkError("this artifact's model has no PyTorch prefill (its layer is not the Llama/Qwen2/Qwen3 "
                             "structure the engine knows); decode it with adamk.load instead")
        # the weights are read and checked once, by the step, which keeps them for the prefill's copies
        self.step = ModelStep(path, weights, device=device, timeout_s=timeout_s, weights_prefix=weights_prefix,
                              names_prefix=names_prefix, keep_weights=True)
        checked, self.step.weights = self.step.weights, None
        torch = self.torch = self.step.torch
        bf = lambda name: checked[name].detach().to(self.step.device, torch.bfloat16)       # noqa: E731
        self.w = {role: ([bf(n) for n in names] if isinstance(names, list) else bf(names))
                  for role, names in self.plan.items() if isinstance(names, (list, str)) and role in _WEIGHTS}
        self.inv_freq = torch.tensor(self.plan["rope_inv_freq"], dtype=torch.float32, device=self.step.device)
        m = self.step.manifest["model"]
        self.heads, self.kv_heads, self.head_dim = m["num_heads"], m["num_kv_heads"], m["head_dim"]

    @property
    def max_seq_len(self) -> int:
        return self.step.max_seq_len

    def prefill(self, ids, seq: int = 0):
        """Keys and values of positions 0..len(ids)-1 into the megakernel's caches (sequence `seq`'s
        rows of a batch's)."""
        torch, F = self.torch, self.torch.nn.functional
        n, w, p = len(ids), self.w, self.plan
        if n == 0:                  # a one-token prompt: its token is the first step's input
            return
        ids_t = torch.tensor(ids, device=self.step.device)
        x = F.embedding(ids_t, w["embed"]).float()                                    # [n, hidden]
        angle = torch.arange(n, device=self.step.device, dtype=torch.float32)[:, None] * self.inv_freq
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)  # [n, head_dim]
        half = self.head_dim // 2

        def rms(t, weight, eps):
            return weight.float() * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))

        def rope(t):                    # [heads, n, head_dim]
            return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

        def proj(t, role, layer):
            bias = w[f"{role}_bias"][layer] if f"{role}_bias" in w else None
            return F.linear(t.bfloat16(), w[role][layer], bias).float()

        for layer in range(len(w["q"])):
            h = rms(x, w["input_norm"][layer], p["eps"])
            q = proj(h, "q", layer).view(n, self.heads, self.head_dim).transpose(0, 1)
            k = proj(h, "k", layer).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
            v = proj(h, "v", layer).view(n, self.kv_heads, self.head_dim).transpose(0, 1)
            if "q_norm" in w:       # Qwen3: each head's RMSNorm before RoPE
                q, k = rms(q, w["q_norm"][layer], p["qk_eps"]), rms(k, w["k_norm"][layer], p["qk_eps"])
            q, k = rope(q), rope(k)
            self.step.k_cache[layer, seq, :, :n] = k.bfloat16()
            self.step.v_cache[layer, seq, :, :n] = v.bfloat16()
            attn = F.scaled_dot_product_attention(q[None].bfloat16(), k[None].bfloat16(), v[None].bfloat16(),
                                                  is_causal=True, scale=p["scale"], enable_gqa=True)
            x = x + F.linear(attn[0].transpose(0, 1).reshape(n, -1), w["o"][layer]).float()
            h = rms(x, w["post_norm"][layer], p["post_eps"])
            gate, up = proj(h, "gate", layer), proj(h, "up", layer)
            x = x + F.linear((F.silu(gate) * up).bfloat16(), w["down"][layer]).float()

    def generate(self, input_ids, max_new_tokens: int, on_token=None) -> Generation:
        """Greedy: the prompt prefilled, then `max_new_tokens` megakernel steps. `on_token(id)` sees
        each new token as it comes (the steps then wait for the GPU one by one; without it they
        run back to back and the tokens are read at the end). An artifact of a batch of B takes B
        prompts (a list of id lists, of any lengths): each is prefilled into its sequence's rows,
        then the B sequences decode together, each at its own position, for `max_new_tokens` steps
        (a sequence keeps its slot to the end); `tokens` is then a list per prompt and `on_token`
        sees a list of B ids per step."""
        batch = self.step.batch
        prompts = [input_ids] if batch == 1 else list(input_ids)
        if len(prompts) != batch:
            raise AdamkError(f"{len(prompts)} prompts for an artifact that decodes a batch of {batch}")
        prompts = [[int(t) for t in ids] for ids in prompts]
        if any(not ids for ids in prompts) or max_new_tokens < 1:
            raise AdamkError("generate needs a prompt of at least one token and max_new_tokens >= 1")
        for ids in prompts:
            if len(ids) + max_new_tokens > self.max_seq_len:
                raise AdamkError(f"the prompt's {len(ids)} tokens and {max_new_tokens} new ones exceed the "
                                 f"artifact's max_seq_len {self.max_seq_len}")
        vocab = self.step.vocab_size
        bad = next((t for ids in prompts for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise AdamkError(f"prompt token id {bad} outside the vocabulary 0..{vocab - 1}")
        torch = self.torch
        start = time.perf_counter()
        with torch.no_grad():
            for seq, ids in enumerate(prompts):
                self.prefill(ids[:-1], seq)
        torch.cuda.synchronize(self.step.device)
        prefill_s = time.perf_counter() - start
        last, pos = [ids[-1] for ids in prompts], [len(ids) - 1 for ids in prompts]
        if batch == 1:
            last, pos = last[0], pos[0]
        self.step.start(last, pos)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(max_new_tokens + 1)]
        events[0].record()
        for i in range(max_new_tokens):
            self.step.launch()
            events[i + 1].record()
            if on_token is not None:
                so_far = self.step.generated(pos, i + 1)
                on_token(so_far[-1] if batch == 1 else [t[-1] for t in so_far])
        tokens = self.step.generated(pos, max_new_tokens)
        step_s = [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(max_new_tokens)]
        return Generation(tokens, prefill_s, step_s)


_WEIGHTS = ("embed", "lm_head", "final_norm", "input_norm", "q", "k", "v", "q_bias", "k_bias", "v_bias", "q_norm",
            "k_norm", "o", "post_norm", "gate", "up", "down")
