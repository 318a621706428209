"""torch frontend: decomposed Llama patterns become the same graph IR, unknown ops are named."""
import math

import pytest
import torch

from adamk.dialects.graph import AddOp, AttentionOp, LinearOp, RMSNormOp, RopeOp, SiluMulOp, WeightOp
from adamk.errors import FrontendError
from adamk.models import PRESETS, DecoderLayer
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
