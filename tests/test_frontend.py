"""torch frontend: decomposed Llama patterns become the same graph IR, unknown ops are named."""
import math
import warnings

import pytest
import torch

from adamk.compiler import import_model
from adamk.dialects.graph import (
    AddOp, ArgmaxOp, AttentionOp, EmbeddingOp, LinearOp, RMSNormOp, RopeOp, SiluMulOp, WeightOp,
)
from adamk.errors import FrontendError
from adamk.models import PRESETS, DecoderLayer, LlamaModel
from helpers import graph_of, random_layer


def body(module):
    return list(next(iter(module.ops)).body.block.ops)


def op_names(module):
    return [op.name for op in body(module) if not isinstance(op, WeightOp)]


LAYER_OPS = ["adamk.rmsnorm", "adamk.linear", "adamk.linear", "adamk.linear", "adamk.rope", "adamk.rope",
             "adamk.attention", "adamk.linear", "adamk.add", "adamk.rmsnorm", "adamk.linear", "adamk.linear",
             "adamk.silu_mul", "adamk.linear", "adamk.add", "func.return"]


@pytest.mark.parametrize("preset", ["tiny", "llama-3.2-1b"])
def test_layer_becomes_graph_ops(preset):
    cfg = PRESETS[preset]
    module = graph_of(DecoderLayer(cfg, seed=0))
    assert op_names(module) == LAYER_OPS
    ops = body(module)
    weights = {op.weight_name.data: list(op.result.type.get_shape()) for op in ops if isinstance(op, WeightOp)}
    H, hd = cfg.hidden_size, cfg.head_dim
    assert weights["q_proj.weight"] == [cfg.num_heads * hd, H]
    assert weights["k_proj.weight"] == [cfg.num_kv_heads * hd, H]
    assert weights["down_proj.weight"] == [H, cfg.intermediate_size]
    attn = next(op for op in ops if isinstance(op, AttentionOp))
    assert (attn.num_heads.value.data, attn.num_kv_heads.value.data, attn.head_dim.value.data) == \
        (cfg.num_heads, cfg.num_kv_heads, hd)
    assert math.isclose(attn.scale.value.data, 1 / math.sqrt(hd), rel_tol=1e-6)
    rope = next(op for op in ops if isinstance(op, RopeOp))
    expected = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
    assert torch.allclose(torch.tensor(rope.inv_freq.get_values()), expected)
    norms = [op for op in ops if isinstance(op, RMSNormOp)]
    assert all(math.isclose(n.eps.value.data, cfg.rms_eps, rel_tol=1e-6) for n in norms)


class HFStyleLayer(DecoderLayer):
    """Same function, written the other common way: x * sigmoid(x) SiLU, scores * scale,
    weight * normed with the cast after, attention output through transpose."""

    def rope_tables(self, pos):
        freqs = pos.float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()

    def forward(self, x, pos, k_cache, v_cache):
        c = self.cfg
        nh, nkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(1, 1, nh, hd).transpose(1, 2)
        k = self.k_proj(h).view(1, 1, nkv, hd).transpose(1, 2)
        v = self.v_proj(h).view(1, 1, nkv, hd).transpose(1, 2)
        cos, sin = self.rope_tables(pos)
        half = hd // 2
        q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
        k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
        k_cache.index_copy_(2, pos.view(1), k)
        v_cache.index_copy_(2, pos.view(1), v)
        keys = k_cache.repeat_interleave(nh // nkv, dim=1)
        values = v_cache.repeat_interleave(nh // nkv, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) * (hd ** -0.5)
        scores = scores.masked_fill(torch.arange(c.max_seq_len) > pos, float("-inf"))
        attn = torch.matmul(torch.softmax(scores, dim=-1), values).transpose(1, 2).reshape(1, nh * hd)
        x = x + self.o_proj(attn)
        h = self.post_attention_layernorm(x)
        g = self.gate_proj(h)
        return x + self.down_proj(g * torch.sigmoid(g) * self.up_proj(h))


def test_equivalent_module_gives_structurally_equal_ir():
    a = graph_of(DecoderLayer(PRESETS["tiny"], seed=3))
    b = graph_of(HFStyleLayer(PRESETS["tiny"], seed=3))
    assert op_names(b) == LAYER_OPS
    assert [str(op.result.type) for op in body(a)[:-1]] == [str(op.result.type) for op in body(b)[:-1]]


class TanhMLP(DecoderLayer):
    def forward(self, x, pos, k_cache, v_cache):
        return x + self.down_proj(torch.tanh(self.gate_proj(self.post_attention_layernorm(x))))


def test_unknown_op_is_named_with_its_node():
    with pytest.raises(FrontendError, match=r"cannot place op 'aten\.tanh\.default' at node 'tanh'"):
        graph_of(TanhMLP(PRESETS["tiny"], seed=0))


class NoMask(DecoderLayer):
    def forward(self, x, pos, k_cache, v_cache):
        c = self.cfg
        q = self.q_proj(x).view(1, c.num_heads, 1, c.head_dim)
        k = self.k_proj(x).view(1, c.num_kv_heads, 1, c.head_dim)
        k_cache.index_copy_(2, pos.view(1), k)
        keys = k_cache.repeat_interleave(c.num_heads // c.num_kv_heads, dim=1)
        scores = torch.matmul(q, keys.transpose(2, 3)) / 3.0
        return torch.softmax(scores, dim=-1).sum()


def test_attention_without_causal_mask_is_refused():
    with pytest.raises(FrontendError, match="without a causal mask"):
        graph_of(NoMask(PRESETS["tiny"], seed=0))


def test_biases_are_placed_on_the_linear():
    cfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, "qkv_bias": True})
    ops = body(graph_of(DecoderLayer(cfg, seed=1)))
    q = [op for op in ops if isinstance(op, LinearOp)][0]
    assert q.bias is not None and q.bias.owner.weight_name.data == "q_proj.bias"
    assert sum(isinstance(op, (AddOp, SiluMulOp)) for op in ops) == 3


def test_random_layer_helper_is_seeded_freshly():
    assert not torch.equal(random_layer().q_proj.weight, random_layer().q_proj.weight)


class MatmulRopeLayer(HFStyleLayer):
    """RoPE angles as an outer product, the way transformers <= 5.17 writes its rotary embedding."""

    def rope_tables(self, pos):
        position_ids = pos.view(1, 1)
        inv = self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1).to(dtype=torch.float)
        freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * 1.0).unsqueeze(1), (emb.sin() * 1.0).unsqueeze(1)


def test_outer_product_rope_is_recognised_by_both_frontends(tmp_path):
    from adamk.frontend.onnx_frontend import import_onnx
    layer = MatmulRopeLayer(PRESETS["tiny"], seed=4).eval()
    ref = graph_of(HFStyleLayer(PRESETS["tiny"], seed=4))     # the same layer with elementwise RoPE
    assert graph_of(layer).is_structurally_equivalent(ref)
    path = tmp_path / "m.onnx"
    torch.onnx.export(layer, layer.example_inputs(), dynamo=True, opset_version=18, verbose=False,
                      optimize=False).save(str(path))
    assert import_onnx(path).is_structurally_equivalent(ref)


# ---- a whole model: embedding, the layers on stacked KV caches, final norm, LM head, argmax ----

def test_whole_model_becomes_flat_graph_ops():
    cfg = PRESETS["tiny"]
    module = import_model(LlamaModel(cfg, seed=0))
    module.verify()
    fn = next(iter(module.ops))
    ops = body(module)
    stack = f"tensor<{cfg.num_layers}x1x{cfg.num_kv_heads}x{cfg.max_seq_len}x{cfg.head_dim}xf32>"
    assert [str(a.type) for a in fn.body.block.args] == ["tensor<1xi64>", "tensor<1xi64>", stack, stack]
    token, pos, k_caches, v_caches = fn.body.block.args
    embeddings = [op for op in ops if isinstance(op, EmbeddingOp)]
    assert len(embeddings) == 1 and embeddings[0].token is token
    assert embeddings[0].table.owner.weight_name.data == "embed_tokens.weight"
    attns = [op for op in ops if isinstance(op, AttentionOp)]
    assert [a.layer.value.data for a in attns] == list(range(cfg.num_layers))
    assert all(a.k_cache is k_caches and a.v_cache is v_caches and a.pos is pos for a in attns)
    argmax = [op for op in ops if isinstance(op, ArgmaxOp)]
    assert len(argmax) == 1 and ops[-1].operands[0] is argmax[0].result
    assert argmax[0].logits.owner.weight.owner.weight_name.data == "lm_head.weight"
    assert [str(t) for t in fn.function_type.outputs.data] == ["tensor<1xi64>"]
    weights = {op.weight_name.data for op in ops if isinstance(op, WeightOp)}
    assert {"embed_tokens.weight", "layers.1.q_proj.weight", "norm.weight", "lm_head.weight"} <= weights
    assert weights == set(LlamaModel(cfg, seed=0).state_dict())      # every parameter, by its state_dict name


def test_whole_model_layers_have_one_structure():
    """Layer l's ops are layer 0's, in order, on layer l's weights: the layers pass folds them."""
    cfg = PRESETS["tiny"]
    ops = [op for op in body(import_model(LlamaModel(cfg, seed=0))) if not isinstance(op, WeightOp)]
    assert [op.name for op in ops[:1]] == ["adamk.embedding"]
    assert [op.name for op in ops[-4:]] == ["adamk.rmsnorm", "adamk.linear", "adamk.argmax", "func.return"]
    per_layer = len(LAYER_OPS) - 1
    layers = [ops[1 + i * per_layer:1 + (i + 1) * per_layer] for i in range(cfg.num_layers)]
    assert 1 + cfg.num_layers * per_layer + 4 == len(ops)

    def weights_of(layer_ops, i):
        return [v.owner.weight_name.data.replace(f"layers.{i}.", "layers.L.") for op in layer_ops
                for v in op.operands if isinstance(v.owner, WeightOp)]
    for i, layer in enumerate(layers):
        assert [op.name for op in layer] == LAYER_OPS[:-1]
        assert weights_of(layer, i) == weights_of(layers[0], 0)


def _whole_model(forward):
    """The tiny LlamaModel with `forward` (token, pos, k_caches, v_caches) in place of its own."""
    model = LlamaModel(PRESETS["tiny"], seed=0)
    model.forward = forward.__get__(model)
    return model


def _layers_on_caches(pick):
    """A whole model whose layer i runs on the caches `pick(i, pos, k_caches, v_caches)`."""
    def forward(self, token, pos, k_caches, v_caches):
        x = self.embed_tokens(token)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, *pick(i, pos, k_caches, v_caches))
        return self.lm_head(self.norm(x))
    return forward


@pytest.mark.parametrize("pick, message", [
    (lambda i, pos, k, v: (k[pos].clone(), v[pos].clone()),     # (torch.export refuses k[pos] written in place)
     r"select of KV cache layer pos: the layer index must be a constant at node 'select' \('aten\.select\.int'\)"),
    (lambda i, pos, k, v: (k[i], v[1 - i]), r"attention over the keys of KV cache layer 0 and the values of layer 1"),
], ids=["cache_at_position", "keys_and_values_of_two_layers"])
def test_whole_model_with_bad_cache_use_is_refused(pick, message):
    with pytest.raises(FrontendError, match=message):
        import_model(_whole_model(_layers_on_caches(pick)))


def test_whole_model_with_int32_tokens_is_refused():
    model = LlamaModel(PRESETS["tiny"], seed=0)
    token, pos, k, v = model.example_inputs()
    with pytest.raises(FrontendError, match=r"'token' holds token ids of dtype torch\.int32; adamk takes int64 ids"):
        import_model(model, (token.int(), pos, k, v))


class WritesUnreadCache(DecoderLayer):
    def forward(self, x, pos, k_cache, v_cache):
        k_cache.index_copy_(2, pos.view(1), self.k_proj(x).view(1, self.cfg.num_kv_heads, 1, self.cfg.head_dim))
        return x + self.o_proj(self.q_proj(x))


def test_cache_append_that_no_attention_reads_is_refused():
    """Only an adamk.attention writes a KV cache: an append without one would be dropped."""
    with pytest.raises(FrontendError, match="a KV cache append that no attention reads at node 'output'"):
        graph_of(WritesUnreadCache(PRESETS["tiny"], seed=0))


@pytest.mark.parametrize("what", ["layer", "whole model"])
def test_import_shows_the_user_no_warning_of_torch_internals(what):
    """Importing a module shows no FutureWarning (torch 2.13's run_decompositions warns about its
    own pytree specs on every export; the frontend silences exactly that message)."""
    cfg = PRESETS["tiny"]
    module = DecoderLayer(cfg, seed=1) if what == "layer" else LlamaModel(cfg, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        import_model(module).verify()
