"""What a PyTorch user already has for one decode step, for benchmarks to compare against.

`TunedStep` is the layer written the way a careful PyTorch user writes decode: q/k/v and
gate/up fused into one weight each, RMSNorm and RoPE in bf16, and
`F.scaled_dot_product_attention(..., enable_gqa=True)` over exactly the pos + 1 cached rows, for a
batch of sequences at one position (x [batch, hidden], caches [batch, ...]).
`graphed(fn)` captures a step in a CUDA graph (the position is fixed at capture, as in a
serving loop that re-captures per bucket); `compiled(step)` is torch.compile of it with
mode="max-autotune-no-cudagraphs", then captured the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from adamk.models import DecoderLayer


class TunedStep(torch.nn.Module):
    def __init__(self, layer: DecoderLayer, device="cuda", dtype=torch.bfloat16):
        super().__init__()
        c = layer.cfg
        self.cfg = c
        bf = lambda t: t.detach().to(device=device, dtype=dtype)      # noqa: E731
        self.qkv = bf(torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]))
        self.gate_up = bf(torch.cat([layer.gate_proj.weight, layer.up_proj.weight]))
        self.o, self.down = bf(layer.o_proj.weight), bf(layer.down_proj.weight)
        self.norm1, self.norm2 = bf(layer.input_layernorm.weight), bf(layer.post_attention_layernorm.weight)
        self.inv_freq = layer.inv_freq.to(device)

    def rms(self, x, w):
        return w * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.cfg.rms_eps).to(x.dtype))

    def forward(self, x, pos: int, k_cache, v_cache):
        c, batch = self.cfg, x.shape[0]
        nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        qkv = F.linear(self.rms(x, self.norm1), self.qkv)
        q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        freqs = pos * self.inv_freq
        emb = torch.cat((freqs, freqs))
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        rot = lambda t: torch.cat((-t[..., hd // 2:], t[..., :hd // 2]), dim=-1)      # noqa: E731
        q = q.view(batch, nh, 1, hd)
        k = k.view(batch, nkv, 1, hd)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k_cache[:, :, pos:pos + 1] = k
        v_cache[:, :, pos:pos + 1] = v.view(batch, nkv, 1, hd)
        attn = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1], enable_gqa=True)
        x = x + F.linear(attn.reshape(batch, nh * hd), self.o)
        gate, up = F.linear(self.rms(x, self.norm2), self.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, self.down)


def graphed(fn, warmup: int = 3):
    """`fn()` captured in a CUDA graph; returns the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def compiled(step: TunedStep):
    return torch.compile(step, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False)
