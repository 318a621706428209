"""Whole models (embedding, decoder layers, final norm, LM head, greedy argmax) through both
frontends: Hugging Face causal LMs behind `HFDecodeModel` through torch.export, and adamk's
`LlamaModel` and an HF causal LM through ONNX, compiled and checked in the simulator against
float32 PyTorch (the HF model's own forward, with its own KV cache)."""
import dataclasses
import inspect
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import adamk
from adamk.cli import main
from adamk.dialects import parse_module
from adamk.dialects.task import BufferOp
from adamk.errors import FrontendError
from adamk.frontend.onnx_frontend import import_onnx, weights_from_onnx
from adamk.frontend.torch_frontend import import_module
from adamk.models import PRESETS, HFDecodeModel, LlamaConfig, LlamaModel
from adamk.simulator import Simulator
from helpers import causal_lm, lower_model, rel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from export_onnx import export, hf_model  # noqa: E402

MAX_SEQ = 40
HF_CONFIG = adamk.CompileConfig(gpu="H200", num_sms=32)     # fewer blocks: less straight-line code for NVRTC
# a cache layer of 2 x 1400 x 24 > 65536 elements: the exporter's ScatterElements indices are
# an initializer too large to be read with the small constants
ONNX_CFG = dataclasses.replace(PRESETS["tiny"], max_seq_len=1400)


def simulator(schedule: str, weights) -> Simulator:
    """The simulator of an artifact's schedule.mlir, its layer-indexed weights bound by name."""
    sched = parse_module(schedule)
    names = {b.sym_name.data: b.names for b in sched.ops if isinstance(b, BufferOp) and b.layer_names is not None}
    return Simulator(sched, {k: v.detach().float().numpy() for k, v in weights.items()}, names)


def sim_step(sim, token, pos, k, v):
    """(logits, next id) of one simulated step on a copy of the caches."""
    sim.mem["k_cache"][:] = k.numpy()
    sim.mem["v_cache"][:] = v.numpy()
    logits = sim.step(int(token), pos)[0]
    return logits, int(sim.mem["tokens"][0, pos + 1])


# ---- Hugging Face causal LMs through the torch frontend ------------------------------------------

# transformers' LlamaConfig wants hidden = heads x head_dim, which the tiny preset is not
HF_DIMS = LlamaConfig(hidden_size=96, num_heads=6, num_kv_heads=2, head_dim=16, intermediate_size=200, num_layers=2,
                      vocab_size=301, rms_eps=1e-6, rope_theta=10000.0, max_seq_len=MAX_SEQ)


def hf_step(kind: str, seed: int, vocab: int = 301, layers: int = 2, tie: bool = False) -> HFDecodeModel:
    """A tiny transformers LlamaForCausalLM / Qwen2ForCausalLM (GQA 6:2) with seeded random
    weights, behind adamk's whole-model signature (examples/export_onnx.py `hf_model`)."""
    pytest.importorskip("transformers")
    return hf_model(kind, dataclasses.replace(HF_DIMS, vocab_size=vocab, num_layers=layers), seed, tie)


def hf_logits(step: HFDecodeModel, token, pos, k, v):
    """The HF model's own forward (its mask, rotary and DynamicCache holding the first `pos`
    positions of the caches) and LM head, for one token at `pos`."""
    from transformers import DynamicCache
    model = step.model
    cache = DynamicCache(config=model.config)
    for i in range(model.config.num_hidden_layers):
        cache.update(k[i, :, :, :pos], v[i, :, :, :pos], i)
    kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=token.view(1, 1), position_ids=torch.tensor([[pos]]), use_cache=True, **{kwarg: cache})
        return step.lm_head(out.last_hidden_state).reshape(-1).numpy()


# llama: untied, a vocabulary of two argmax chunks (4096 logits each, the last short);
# qwen2: q/k/v biases, tied embeddings
HF_MODELS = {"llama": dict(vocab=5000, tie=False), "qwen2": dict(vocab=301, tie=True)}


@pytest.fixture(scope="module", params=sorted(HF_MODELS))
def hf_compiled(request):
    step = hf_step(request.param, seed=11, **HF_MODELS[request.param])
    return request.param, step, adamk.compile(step, HF_CONFIG)


def test_hf_causal_lm_compiles_and_decodes_what_transformers_decodes(hf_compiled):
    kind, step, art = hf_compiled
    sim = simulator(art.files["schedule.mlir"].decode(), step.state_dict())
    for pos in (0, 17, MAX_SEQ - 1):
        token, p, k, v = step.example_inputs(pos, seed=pos)
        ref = hf_logits(step, token, pos, k, v)
        with torch.no_grad():
            assert rel(step(token, p, k.clone(), v.clone()).reshape(-1).numpy(), ref) < 1e-6    # the wrapper is HF
        logits, next_id = sim_step(sim, token, pos, k, v)
        assert rel(logits, ref) < 1e-5, (kind, pos)
        assert next_id == int(np.argmax(ref)), (kind, pos)


def test_greedy_decoding_in_the_simulator_equals_transformers_generate(hf_compiled):
    """The prompt fed one token a step, then 16 greedy steps, each next id the kernel's argmax (the
    simulator's): the ids transformers' `generate` gives (eager attention, float32)."""
    kind, step, art = hf_compiled
    sim = simulator(art.files["schedule.mlir"].decode(), step.state_dict())
    prompt = list(np.random.default_rng().integers(0, step.vocab_size, 8))
    for pos, token in enumerate(prompt):
        sim.step(int(token), pos)
    ours = []
    for pos in range(len(prompt), len(prompt) + 16):
        ours.append(int(sim.mem["tokens"][0, pos]))
        sim.step(ours[-1], pos)
    ids = torch.tensor([prompt])
    with torch.no_grad():    # the mask given: without it, generate masks every prompt id equal to the pad id
        out = causal_lm(step).generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                                       pad_token_id=0)
    assert ours == out[0, len(prompt):].tolist()


def test_hf_weights_keep_their_checkpoint_names(hf_compiled):
    """Every parameter by its HF name; tied embeddings as two weights (the table by rows, the LM
    head's paged), both names in the model's state_dict."""
    kind, step, art = hf_compiled
    names = {w["name"] for w in art.manifest["weights"]}
    assert names == set(step.state_dict()) and "model.layers.1.self_attn.q_proj.weight" in names
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (kind == "qwen2")
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= names
    assert "lm_head.weight" in {e["buffer"] for e in art.manifest["packed_weights"]}
    assert "model.embed_tokens.weight" not in {s for e in art.manifest["packed_weights"] for s in e["sources"]}
    aliases = {w["name"]: w.get("aliases") for w in art.manifest["weights"]}
    if HF_MODELS[kind]["tie"]:
        assert step.lm_head.weight is step.model.embed_tokens.weight
        # a checkpoint that save_pretrained wrote holds the tied tensor once: it binds by its other name
        assert aliases["lm_head.weight"] == ["model.embed_tokens.weight"]
        from adamk.runtime.weights import check_weights
        checkpoint = {k: v for k, v in step.state_dict().items() if k != "lm_head.weight"}
        bound = check_weights(art.manifest, checkpoint)
        assert bound["lm_head.weight"] is checkpoint["model.embed_tokens.weight"]
    else:
        assert not any(aliases.values())


def test_a_tied_weight_used_as_table_and_linear_under_one_name_is_refused():
    """An LM head that is the embedding table through no module of its own (F.linear) leaves the
    tensor one name for two layouts: one clear error."""
    model = LlamaModel(dataclasses.replace(PRESETS["tiny"], num_layers=1), seed=0)

    def forward(self, token, pos, k_caches, v_caches):
        x = self.embed_tokens(token)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, k_caches[i], v_caches[i])
        return torch.nn.functional.linear(self.norm(x), self.embed_tokens.weight)
    model.forward = forward.__get__(model)
    with pytest.raises(FrontendError, match=r"weight 'embed_tokens\.weight' as the linear weight: it is already "
                                            r"the embedding table .* at node 'linear_7'"):
        import_module(model, model.example_inputs())


# ---- ONNX ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def whole_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "whole.onnx"
    return Path(export(str(path), "tiny", seed=5, max_seq_len=ONNX_CFG.max_seq_len, whole_model=True))


@pytest.fixture(scope="module")
def whole_onnx_compiled(whole_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "whole"
    result = CliRunner().invoke(main, ["compile", str(whole_onnx), "--gpu", "L20", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    return out


def test_onnx_whole_model_gives_the_torch_import(whole_onnx):
    model = LlamaModel(ONNX_CFG, seed=5)
    graph = onnx.load(str(whole_onnx), load_external_data=False).graph
    assert {"Gather", "ScatterElements"} <= {n.op_type for n in graph.node}       # what the frontend must read
    big = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT64 and np.prod(t.dims) > 1 << 16]
    assert len(big) == 2 * ONNX_CFG.num_layers                                   # the scatters' indices
    from_torch, _ = import_module(model, model.example_inputs())
    assert import_onnx(whole_onnx).is_structurally_equivalent(from_torch)


def test_onnx_whole_model_compiles_with_the_cli_and_decodes_what_torch_decodes(whole_onnx, whole_onnx_compiled):
    model = LlamaModel(ONNX_CFG, seed=5)
    sim = simulator((whole_onnx_compiled / "schedule.mlir").read_text(), weights_from_onnx(whole_onnx))
    for pos in (0, 5, ONNX_CFG.max_seq_len - 1):
        token, p, k, v = model.example_inputs(pos, seed=pos)
        with torch.no_grad():
            ref = model(token, p, k.clone(), v.clone()).reshape(-1).numpy()
        logits, next_id = sim_step(sim, token, pos, k, v)
        assert rel(logits, ref) < 1e-5, pos
        assert next_id == int(np.argmax(ref)), pos


def test_qwen3_causal_lm_decodes_what_transformers_decodes_in_the_simulator():
    """Qwen3ForCausalLM (per-head q/k RMSNorm before RoPE, heads x head_dim wider than the hidden
    state): both layers' norms fold into one loop body with layer-indexed weights, and the simulated
    steps give transformers' logits and argmax; the engine's prefill plan names the norms."""
    from adamk.compiler import prefill_plan
    from adamk.dialects import make_context
    from adamk.passes.fuse import FusePass
    from adamk.passes.layers import LayersPass
    step = hf_model("qwen3", dataclasses.replace(HF_DIMS, head_dim=24), seed=5)
    graph, _ = import_module(step, step.example_inputs())
    for pass_ in (FusePass(), LayersPass()):
        pass_.apply(make_context(), graph)
    plan = prefill_plan(graph)                   # the engine's PyTorch prefill applies them too
    assert plan["q_norm"][1].endswith("layers.1.self_attn.q_norm.weight") and plan["qk_eps"] > 0
    sim = simulator(lower_model(step), step.state_dict())
    for pos in (0, 17, MAX_SEQ - 1):
        token, p, k, v = step.example_inputs(pos, seed=pos)
        ref = hf_logits(step, token, pos, k, v)
        logits, next_id = sim_step(sim, token, pos, k, v)
        assert rel(logits, ref) < 1e-5, pos
        assert next_id == int(np.argmax(ref)), pos


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_hf_causal_lm_onnx_export_gives_the_torch_import(tmp_path, kind):
    """examples/export_onnx.py --whole-model --hf llama|qwen3: the ONNX frontend builds the torch
    import's IR (Qwen3: with its two adamk.head_rmsnorm per layer)."""
    step = hf_step(kind, seed=3, layers=1)
    path = export(str(tmp_path / f"{kind}.onnx"), dataclasses.replace(HF_DIMS, num_layers=1), seed=3, hf=kind,
                  whole_model=True)
    from_torch, _ = import_module(step, step.example_inputs(1))
    from_onnx = import_onnx(path)
    assert from_onnx.is_structurally_equivalent(from_torch)
    heads = sum(o.name == "adamk.head_rmsnorm" for o in from_onnx.walk())
    assert heads == (2 if kind == "qwen3" else 0)


def edited(path: Path, tmp_path: Path, edit) -> Path:
    """A copy of the ONNX model at `path` with `edit(model)` applied."""
    model = onnx.load(str(path))
    edit(model)
    out = tmp_path / "edited.onnx"
    onnx.save(model, str(out))
    return out


def _relink(model, op_type: str, index: int, name: str):
    """The last `op_type` node reads `name` as its input `index`."""
    [n for n in model.graph.node if n.op_type == op_type][-1].input[index] = name


def _int32_tokens(model):
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32


def _scatter_into_another_layer(model):
    """Layer 0's K append written back into layer 1 (its indices all 1)."""
    scatter = next(n for n in model.graph.node if n.op_type == "ScatterElements")
    t = next(t for t in model.graph.initializer if t.name == scatter.input[1])
    t.CopyFrom(onnx.numpy_helper.from_array(np.ones(onnx.numpy_helper.to_array(t).shape, np.int64), t.name))


@pytest.mark.parametrize("edit, message", [
    (lambda m: _relink(m, "Gemm", 1, "embed_tokens.weight"),       # tied: the LM head reads the embedding table
     r"weight 'embed_tokens\.weight' as the linear weight: it is already the embedding table .* at node "
     r"'node_linear_14' \('Gemm'\)"),
    (_int32_tokens, r"'token' holds token ids of type int32; adamk takes int64 ids"),
    (_scatter_into_another_layer, r"select_scatter of appended into cache_stack \(dim 0, index 1\): only the KV "
                                  r"cache append of a layer of the stack goes back into that layer"),
], ids=["tied_embeddings", "int32_tokens", "scatter_into_another_layer"])
def test_onnx_whole_model_that_cannot_be_placed_is_one_clear_error(whole_onnx, tmp_path, edit, message):
    with pytest.raises(FrontendError, match=message):
        import_onnx(edited(whole_onnx, tmp_path, edit))
