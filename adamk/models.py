"""Reference PyTorch decoder: what the tests compare against, and a valid compiler input.

`DecoderLayer.forward(x, pos, k_cache, v_cache) -> y` runs ONE decode step of ONE
Llama-family layer for batch 1:

- ``x``: ``[1, hidden_size]``, the hidden state of the new token;
- ``pos``: an int64 scalar tensor, the new token's position (0-based);
- ``k_cache``, ``v_cache``: ``[1, num_kv_heads, max_seq_len, head_dim]``; positions
  ``< pos`` hold earlier keys/values (post-RoPE keys). The layer writes the new key and
  value at ``pos`` in place and attends over positions ``0..pos``;
- returns ``y``: ``[1, hidden_size]``.

Everything is written out the way Hugging Face writes it (RMSNorm as
pow/mean/rsqrt/mul, RoPE as slice/neg/cat, SwiGLU, GQA by repeating K/V heads), so the
frontends see the decomposed patterns real models export.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import math
import multiprocessing
import os
from pathlib import Path

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    rms_eps: float = 1e-5
    rope_theta: float = 500000.0
    qkv_bias: bool = False
    max_seq_len: int = 4096

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")


PRESETS: dict[str, LlamaConfig] = {
    # Deliberately odd: nothing is a power of two, GQA group of 3, K not a multiple of 256,
    # row counts that leave partial tiles.
    "tiny": LlamaConfig(hidden_size=136, num_heads=6, num_kv_heads=2, head_dim=24,
                        intermediate_size=344, num_layers=2, vocab_size=331,
                        rms_eps=1e-5, rope_theta=10000.0, qkv_bias=False, max_seq_len=80),
    "llama-3.2-1b": LlamaConfig(hidden_size=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                                intermediate_size=8192, num_layers=16, vocab_size=128256,
                                rms_eps=1e-5, rope_theta=500000.0, qkv_bias=False,
                                max_seq_len=4096),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderLayer(nn.Module):
    """One Llama decoder layer, decode step, batch 1 (see the module docstring)."""

    def __init__(self, cfg: LlamaConfig, seed: int | None = 0, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        H, hd = cfg.hidden_size, cfg.head_dim
        self.input_layernorm = RMSNorm(H, cfg.rms_eps)
        self.q_proj = nn.Linear(H, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(H, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(H, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, H, bias=False)
        self.post_attention_layernorm = RMSNorm(H, cfg.rms_eps)
        self.gate_proj = nn.Linear(H, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(H, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, H, bias=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        if seed is not None:
            self.init_random(seed)
        self.to(dtype)

    @torch.no_grad()
    def init_random(self, seed: int):
        """Weights with the spread of a trained model: linear ~ N(0, 1/fan_in), norms ~ 1."""
        g = torch.Generator().manual_seed(seed)
        for name, p in sorted(self.named_parameters()):
            if "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))

    def new_kv_cache(self, dtype=None, device=None):
        c = self.cfg
        shape = (1, c.num_kv_heads, c.max_seq_len, c.head_dim)
        dtype = dtype or self.q_proj.weight.dtype
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)

    def forward(self, x, pos, k_cache, v_cache):
        c = self.cfg
        nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        residual = x
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(1, nh, 1, hd)
        k = self.k_proj(h).view(1, nkv, 1, hd)
        v = self.v_proj(h).view(1, nkv, 1, hd)

        freqs = pos.float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin

        k_cache.index_copy_(2, pos.view(1), k)
        v_cache.index_copy_(2, pos.view(1), v)

        group = nh // nkv
        keys = k_cache.repeat_interleave(group, dim=1)      # [1, nh, S, hd]
        values = v_cache.repeat_interleave(group, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) / math.sqrt(hd)   # [1, nh, 1, S]
        future = torch.arange(c.max_seq_len, device=x.device) > pos
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        attn = torch.matmul(probs, values).reshape(1, nh * hd)
        x = residual + self.o_proj(attn)

        residual = x
        h = self.post_attention_layernorm(x)
        x = residual + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))
        return x

    def example_inputs(self, pos: int = 0, seed: int = 0, device=None):
        """Random inputs for one step: (x, pos, k_cache, v_cache) with random history."""
        g = torch.Generator().manual_seed(seed)
        dtype = self.q_proj.weight.dtype
        x = torch.randn(1, self.cfg.hidden_size, generator=g).to(dtype)
        k_cache, v_cache = self.new_kv_cache(dtype)
        k_cache.copy_(torch.randn(k_cache.shape, generator=g))
        v_cache.copy_(torch.randn(v_cache.shape, generator=g))
        t = lambda a: a.to(device) if device is not None else a
        return t(x), t(torch.tensor(pos, dtype=torch.int64)), t(k_cache), t(v_cache)


def _position_cache(k_cache, v_cache, pos, layers: int, stacked: bool = False):
    """A `transformers.cache_utils.Cache` of `layers` layers over adamk's static caches, whose
    layers write the new key/value at `pos` (the decode step's position) and return their whole
    cache. The caches are one layer's (every layer index uses them), or `stacked` per layer
    (`[layers, ...]`: layer i uses `k_cache[i]`, taken when it is written; torch.export refuses
    an in-place write into a view taken before an earlier layer wrote into the stack).

    Built on transformers' own `Cache` / `CacheLayerMixin` so that the call convention
    (`update(k, v, layer_idx, cache_kwargs)` up to 5.2x, `update(k, v, layer_idx, kwargs=...)`
    since) is the library's, not a copy of one release's signature.
    """
    from transformers.cache_utils import Cache, CacheLayerMixin

    class PositionLayer(CacheLayerMixin):
        def __init__(self, index):
            super().__init__()
            self.index, self.is_initialized = index, True

        def _caches(self):
            if stacked:
                return k_cache[self.index], v_cache[self.index]
            return k_cache, v_cache

        def lazy_initialization(self, key_states, value_states, *args, **kwargs):
            pass                                    # the caches exist before the step

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys, self.values = self._caches()
            self.keys.index_copy_(2, pos.view(1), key_states)
            self.values.index_copy_(2, pos.view(1), value_states)
            return self.keys, self.values

        def get_mask_sizes(self, *args, **kwargs):
            return k_cache.shape[-2], 0             # the mask spans the whole static cache

        def get_seq_length(self, *args, **kwargs):
            return pos + 1

        def get_max_length(self):
            return k_cache.shape[-2]

    return Cache(layers=[PositionLayer(i) for i in range(layers)])


def _causal_bias(pos, max_seq_len: int, like):
    """HF's additive causal mask [1, 1, 1, max_seq_len] over a static cache: 0 up to `pos`, -inf after."""
    span = torch.arange(max_seq_len, device=like.device)
    mask = torch.zeros(max_seq_len, device=like.device, dtype=like.dtype).masked_fill(span > pos, float("-inf"))
    return mask.view(1, 1, 1, -1)


def _eager_attention(layer: nn.Module) -> str:
    """Switch an HF decoder layer's attention to the eager implementation (the decomposed form the
    frontends recognise); returns the name of the layer's cache argument (transformers 5.2x renamed
    `past_key_values` to `cache`)."""
    layer.self_attn.config._attn_implementation = "eager"
    return "cache" if "cache" in inspect.signature(layer.forward).parameters else "past_key_values"


class HFDecodeStep(nn.Module):
    """A Hugging Face decoder layer (Llama, Qwen2, ...) behind adamk's decode-step signature
    `forward(x, pos, k_cache, v_cache) -> y` (see the module docstring).

    `layer` is e.g. `LlamaDecoderLayer`, `rotary_emb` the model's rotary embedding. The
    layer's attention is switched to the eager implementation (the decomposed form the
    frontends recognise); the causal mask is additive, as HF builds it.
    """

    def __init__(self, layer: nn.Module, rotary_emb: nn.Module, max_seq_len: int):
        super().__init__()
        self.layer, self.rotary_emb, self.max_seq_len = layer, rotary_emb, max_seq_len
        self._cache_kwarg = _eager_attention(layer)
        attn = layer.self_attn
        self.num_kv_heads = attn.config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.layer_idx = attn.layer_idx or 0

    def forward(self, x, pos, k_cache, v_cache):
        hidden = x.view(1, 1, -1)
        position_ids = pos.view(1, 1)
        cos, sin = self.rotary_emb(hidden, position_ids)
        cache = _position_cache(k_cache, v_cache, pos, self.layer_idx + 1)
        y = self.layer(hidden, attention_mask=_causal_bias(pos, self.max_seq_len, x), position_ids=position_ids,
                       **{self._cache_kwarg: cache}, position_embeddings=(cos, sin))
        return y.view(1, -1)

    def example_inputs(self, pos: int = 0, seed: int = 0, device=None):
        g = torch.Generator().manual_seed(seed)
        dtype = next(self.parameters()).dtype
        x = torch.randn(1, self.layer.hidden_size if hasattr(self.layer, "hidden_size") else
                        self.layer.input_layernorm.weight.shape[0], generator=g).to(dtype)
        shape = (1, self.num_kv_heads, self.max_seq_len, self.head_dim)
        k = torch.randn(shape, generator=g).to(dtype)
        v = torch.randn(shape, generator=g).to(dtype)
        return x, torch.tensor(pos, dtype=torch.int64), k, v


class HFDecodeModel(nn.Module):
    """A Hugging Face causal LM (`LlamaForCausalLM`, `Qwen2ForCausalLM`, ...) behind adamk's
    whole-model signature `forward(token, pos, k_caches, v_caches) -> logits [1, vocab]` (see
    `LlamaModel`), for a static KV cache of `max_seq_len` positions.

    It runs the model's own modules (the embedding, each decoder layer with eager attention,
    the final norm and the LM head) and holds them as `model` and `lm_head`, as the causal LM
    does, so the parameters keep the checkpoint's names (`model.layers.0.self_attn.q_proj.weight`,
    `lm_head.weight`) and the causal LM's state_dict binds as it is. With tied embeddings
    `lm_head.weight` is `model.embed_tokens.weight`; the torch frontend gives the LM head its
    own name, since the device stores the two differently (rows; pages). (A checkpoint that
    `save_pretrained` wrote holds that tensor once, as `model.embed_tokens.weight`.)
    """

    def __init__(self, causal_lm: nn.Module, max_seq_len: int):
        super().__init__()
        self.model, self.lm_head, self.max_seq_len = causal_lm.model, causal_lm.lm_head, max_seq_len
        self.layers = list(self.model.layers[:causal_lm.config.num_hidden_layers])   # not registered twice
        for layer in self.layers:
            self._cache_kwarg = _eager_attention(layer)
        attn = self.layers[0].self_attn
        self.num_kv_heads, self.head_dim = attn.config.num_key_value_heads, attn.head_dim
        self.vocab_size = self.model.embed_tokens.weight.shape[0]

    def forward(self, token, pos, k_caches, v_caches):
        hidden = self.model.embed_tokens(token.view(1, 1))          # [1, 1, hidden]
        position_ids = pos.view(1, 1)
        cos, sin = self.model.rotary_emb(hidden, position_ids)
        mask = _causal_bias(pos, self.max_seq_len, hidden)
        cache = _position_cache(k_caches, v_caches, pos, len(self.layers), stacked=True)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, **{self._cache_kwarg: cache},
                           position_embeddings=(cos, sin))
        return self.lm_head(self.model.norm(hidden)).view(1, -1)

    def example_inputs(self, pos: int = 0, seed: int = 0, device=None):
        """Random inputs for one step: (token, pos, k_caches, v_caches) with random history."""
        g = torch.Generator().manual_seed(seed)
        dtype = self.lm_head.weight.dtype
        shape = (len(self.layers), 1, self.num_kv_heads, self.max_seq_len, self.head_dim)
        k = torch.randn(shape, generator=g).to(dtype)
        v = torch.randn(shape, generator=g).to(dtype)
        token = torch.randint(0, self.vocab_size, (1,), generator=g)
        t = lambda a: a.to(device) if device is not None else a
        return t(token), t(torch.tensor(pos, dtype=torch.int64)), t(k), t(v)


class LlamaModel(nn.Module):
    """A whole decoder for one decode step: embedding, `num_layers` DecoderLayers, final
    RMSNorm and LM head. `forward(token, pos, k_caches, v_caches) -> logits [1, vocab]`,
    with `token` an int64 [1] tensor and the caches stacked per layer
    (`[num_layers, 1, num_kv_heads, max_seq_len, head_dim]`).

    A reference, an export source (examples/export_onnx.py --whole-model) and a compiler
    input: both frontends import it as one kernel's graph, its layers folded into one loop.
    """

    def __init__(self, cfg: LlamaConfig, seed: int | None = 0, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, seed=None) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.embed_tokens.weight.copy_(torch.randn(self.embed_tokens.weight.shape, generator=g))
                for i, layer in enumerate(self.layers):
                    layer.init_random(seed + 1 + i)
                self.lm_head.weight.copy_(torch.randn(self.lm_head.weight.shape, generator=g) / math.sqrt(cfg.hidden_size))
        self.to(dtype)

    def forward(self, token, pos, k_caches, v_caches):
        x = self.embed_tokens(token)                       # [1, hidden]
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, k_caches[i], v_caches[i])
        return self.lm_head(self.norm(x))

    def example_inputs(self, pos: int = 0, seed: int = 0, device=None):
        c = self.cfg
        g = torch.Generator().manual_seed(seed)
        dtype = self.lm_head.weight.dtype
        shape = (c.num_layers, 1, c.num_kv_heads, c.max_seq_len, c.head_dim)
        k = torch.randn(shape, generator=g).to(dtype)
        v = torch.randn(shape, generator=g).to(dtype)
        token = torch.randint(0, c.vocab_size, (1,), generator=g)
        t = lambda a: a.to(device) if device is not None else a
        return t(token), t(torch.tensor(pos, dtype=torch.int64)), t(k), t(v)


def compile_preset(preset: str, config, out) -> str:
    """Compile the bundled `preset` layer (seed 0) with `config` into the directory `out`."""
    from . import compile as compile_model
    return str(compile_model(DecoderLayer(PRESETS[preset], seed=0), config).save(out))


def compile_presets(jobs: list[tuple[str, object]], out_dir) -> list[str]:
    """compile_preset for each (preset, CompileConfig), into out_dir/0, out_dir/1, ...; in
    parallel processes, since NVRTC runs on one core."""
    outs = [str(Path(out_dir) / str(i)) for i in range(len(jobs))]
    if len(jobs) <= 1:
        return [compile_preset(preset, config, out) for (preset, config), out in zip(jobs, outs)]
    workers = min(len(jobs), os.cpu_count() or 1)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        return list(ex.map(compile_preset, *zip(*jobs), outs))
