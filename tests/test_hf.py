"""Hugging Face decoder layers (Llama, Qwen2, Qwen3) through both frontends, checked in the simulator."""
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding  # noqa: E402

from adamk.dialects import make_context, parse_module, print_module  # noqa: E402
from adamk.frontend.onnx_frontend import import_onnx  # noqa: E402
from adamk.frontend.torch_frontend import import_module  # noqa: E402
from adamk.models import HFDecodeStep  # noqa: E402
from adamk.passes.fuse import FusePass  # noqa: E402
from adamk.passes.tile import TilePass  # noqa: E402
from adamk.search.round_robin import RoundRobinSchedulePass  # noqa: E402
from adamk.simulator import Simulator  # noqa: E402
from helpers import rel  # noqa: E402

MAX_SEQ = 48
DIMS = dict(hidden_size=144, intermediate_size=344, num_attention_heads=6, num_key_value_heads=2, head_dim=24,
            rms_norm_eps=1e-6, max_position_embeddings=MAX_SEQ, attn_implementation="eager")


def hf_step(kind: str) -> HFDecodeStep:
    torch.manual_seed(int(np.random.randint(2**31)))
    if kind == "llama":
        cfg = transformers.LlamaConfig(**DIMS, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                                "factor": 32.0, "low_freq_factor": 1.0,
                                                                "high_freq_factor": 4.0,
                                                                "original_max_position_embeddings": 8})
        layer, rope = LlamaDecoderLayer(cfg, layer_idx=0), LlamaRotaryEmbedding(cfg)
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**DIMS)
        layer, rope = Qwen2DecoderLayer(cfg, layer_idx=0), Qwen2RotaryEmbedding(cfg)
    else:       # per-head RMSNorm of q and k; heads x head_dim (192) wider than the hidden state, as in Qwen3
        kv = {"qwen3": 2, "qwen3-1kv": 1}[kind]     # one KV head: its norm looks like a plain RMSNorm
        cfg = transformers.Qwen3Config(**{**DIMS, "head_dim": 32, "num_key_value_heads": kv})
        layer, rope = Qwen3DecoderLayer(cfg, layer_idx=0), Qwen3RotaryEmbedding(cfg)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn_like(p) * (1.0 if "norm" in name else 0.2) + (1.0 if "norm" in name else 0.0))
    return HFDecodeStep(layer, rope, MAX_SEQ).eval()


def simulate(step, module, pos):
    ctx = make_context()
    FusePass().apply(ctx, module)
    TilePass().apply(ctx, module)
    RoundRobinSchedulePass(num_sms=5).apply(ctx, module)
    x, p, kc, vc = step.example_inputs(pos, seed=int(np.random.randint(2**31)))
    sim = Simulator(module, {k: v.detach().numpy() for k, v in step.state_dict().items()})
    sim.mem["k_cache"][:] = kc.numpy()
    sim.mem["v_cache"][:] = vc.numpy()
    y = sim.step(x.numpy(), pos)
    with torch.no_grad():
        ref = step(x, p, kc, vc)
    return y, ref.numpy(), sim.mem["k_cache"], kc.numpy()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "qwen3-1kv"])
def test_hf_layer_through_torch_frontend_matches_transformers(kind):
    step = hf_step(kind)
    module, _ = import_module(step, step.example_inputs(1))
    y, ref, k_sim, k_ref = simulate(step, module, 17)
    assert rel(y, ref) < 1e-5
    assert rel(k_sim, k_ref) < 1e-6


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_hf_layer_onnx_export_gives_the_same_ir(kind, tmp_path):
    step = hf_step(kind)
    args = step.example_inputs(1)
    path = tmp_path / f"{kind}.onnx"
    # optimize=False keeps Transpose(weight) nodes: the optimiser folds small ones into unnamed constants
    torch.onnx.export(step, args, dynamo=True, opset_version=18, verbose=False, optimize=False).save(str(path))
    from_onnx = import_onnx(path)
    from_torch, _ = import_module(step, args)
    assert from_onnx.is_structurally_equivalent(from_torch)
    y, ref, *_ = simulate(step, from_onnx, MAX_SEQ - 1)
    assert rel(y, ref) < 1e-5


def test_qwen3_head_norms_ride_on_the_attention_task():
    """The per-head RMSNorm of q and k is recognised (one adamk.head_rmsnorm each), fused into the
    attention with its weights (then RoPE), and the kernel instantiates the attention task with it."""
    import adamk
    from adamk.dialects.graph import AttentionOp, HeadRMSNormOp, WeightOp
    step = hf_step("qwen3")
    module, _ = import_module(step, step.example_inputs(1))
    assert sum(isinstance(o, HeadRMSNormOp) for o in module.walk()) == 2
    FusePass().apply(make_context(), module)
    assert not any(isinstance(o, HeadRMSNormOp) for o in module.walk())
    (att,) = [o for o in module.walk() if isinstance(o, AttentionOp)]
    names = {o.result: o.weight_name.data for o in module.walk() if isinstance(o, WeightOp)}
    assert (names[att.q_norm], names[att.k_norm]) == ("layer.self_attn.q_norm.weight", "layer.self_attn.k_norm.weight")
    assert att.rope_inv_freq is not None and att.norm_eps.value.data == pytest.approx(1e-6)
    assert parse_module(print_module(module)).is_structurally_equivalent(module)
    source = adamk.compile(step, adamk.CompileConfig(gpu="H200")).files["kernel.cu"].decode()
    assert ", true>(s, task," in source and "attention_task<" in source


@pytest.mark.parametrize("kind", ["qwen3", "qwen2"])
def test_hf_layer_in_a_batch_at_three_positions_matches_each_sequence_alone(kind, tmp_path):
    """Through ONNX, widened to a batch of 3 at positions 0, 30 and the last: every sequence's
    output and cache row is what transformers gives for it alone (Qwen3's head norms per sequence)."""
    import adamk
    step = hf_step(kind)
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(step, step.example_inputs(1), dynamo=True, opset_version=18, verbose=False,
                      optimize=False).save(str(path))
    schedule = adamk.lower(path, adamk.CompileConfig(gpu="H200", batch_size=3, num_sms=5,
                                                     schedule="round-robin")).schedule
    pos = [0, 30, MAX_SEQ - 1]
    inputs = [step.example_inputs(p, seed=int(np.random.randint(2**31))) for p in pos]
    sim = Simulator(schedule, {k: v.detach().numpy() for k, v in step.state_dict().items()})
    sim.mem["k_cache"][:] = np.concatenate([i[2].numpy() for i in inputs])
    sim.mem["v_cache"][:] = np.concatenate([i[3].numpy() for i in inputs])
    y = sim.step(np.concatenate([i[0].numpy() for i in inputs]), pos)
    for b, (x, p, kc, vc) in enumerate(inputs):
        with torch.no_grad():
            ref = step(x, p, kc, vc).numpy()
        assert rel(y[b], ref[0]) < 1e-5, b
        assert rel(sim.mem["k_cache"][b], kc[0].numpy()) < 1e-6, b
        assert rel(sim.mem["v_cache"][b], vc[0].numpy()) < 1e-6, b
