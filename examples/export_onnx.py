"""Write the bundled example decoder layer (seeded random weights) as ONNX.

    python examples/export_onnx.py -o model.onnx                       # llama-3.2-1b layer
    python examples/export_onnx.py -o tiny.onnx --preset tiny --seed 3
    python examples/export_onnx.py -o model.onnx --external-data       # weights in model.onnx.data
    python examples/export_onnx.py -o qwen.onnx --hf qwen2 --preset tiny  # a transformers Qwen2DecoderLayer
    python examples/export_onnx.py -o qwen3.onnx --hf qwen3 --preset tiny  # Qwen3 (per-head q/k RMSNorm)
    python examples/export_onnx.py -o whole.onnx --whole-model --preset tiny   # embedding, layers, LM head
    python examples/export_onnx.py -o hf.onnx --whole-model --hf llama --preset tiny   # a LlamaForCausalLM

Uses the dynamo exporter (opset 18): RMSNorm, RoPE, GQA attention and SwiGLU come out
decomposed, weights as initializers. `--whole-model` writes embedding + all layers + final
norm + LM head (adamk.models.LlamaModel, or with `--hf` a transformers causal LM behind
adamk.models.HFDecodeModel); `adamk compile` compiles it into one kernel that also takes the
greedy argmax. The exporter writes each layer's KV cache write-back (`k_caches[i].index_copy_`)
as a ScatterElements whose int64 indices have a cache layer's shape (each the layer's index),
so a large model's file carries a cache layer's worth of them per layer and cache: use
`--external-data`.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import warnings

import torch

from adamk.models import PRESETS, DecoderLayer, LlamaModel


def _hf_config(kind: str, cfg, **extra):
    """A transformers Llama, Qwen2 or Qwen3 config with `cfg`'s dims (eager attention)."""
    import transformers
    dims = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                rms_norm_eps=cfg.rms_eps, max_position_embeddings=cfg.max_seq_len, attn_implementation="eager",
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, **extra)
    return {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
            "qwen3": transformers.Qwen3Config}[kind](**dims)


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Random weights (torch's generator, seeded before the module is built) with a trained
    model's spread: norms ~ 1, the rest ~ N(0, 1/fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) * p.shape[-1] ** -0.5)
    return module


def hf_layer(kind: str, cfg, seed: int = 0) -> torch.nn.Module:
    """A transformers Llama, Qwen2 or Qwen3 decoder layer with `cfg`'s dims and seeded random weights,
    wrapped in adamk's decode-step signature."""
    from adamk.models import HFDecodeStep
    hf_cfg = _hf_config(kind, cfg)
    if kind == "llama":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer as Layer, LlamaRotaryEmbedding as Rope
    elif kind == "qwen2":
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer as Layer, Qwen2RotaryEmbedding as Rope
    else:
        from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer as Layer, Qwen3RotaryEmbedding as Rope
    torch.manual_seed(seed)
    layer = _randomize(Layer(hf_cfg, layer_idx=0))
    return HFDecodeStep(layer, Rope(hf_cfg), cfg.max_seq_len).eval()


def hf_model(kind: str, cfg, seed: int = 0, tie: bool = False) -> torch.nn.Module:
    """A transformers LlamaForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM with `cfg`'s dims,
    layers and vocabulary (the LM head tied to the embedding if `tie`) and seeded random weights,
    wrapped in adamk's whole-model signature."""
    import transformers
    from adamk.models import HFDecodeModel
    hf_cfg = _hf_config(kind, cfg, num_hidden_layers=cfg.num_layers, vocab_size=cfg.vocab_size,
                        tie_word_embeddings=tie)
    torch.manual_seed(seed)
    causal_lm = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
                 "qwen3": transformers.Qwen3ForCausalLM}[kind](hf_cfg)
    return HFDecodeModel(_randomize(causal_lm), cfg.max_seq_len).eval()


def export(path: str, preset="llama-3.2-1b", seed: int = 0, external_data: bool = False,
           max_seq_len: int | None = None, hf: str | None = None, whole_model: bool = False) -> str:
    """Write the model to `path`; `preset` is a PRESETS name or an adamk.models.LlamaConfig."""
    needed = {"onnxscript": "onnx", **({"transformers": "hf"} if hf else {})}    # module -> adamk extra
    for module, extra in needed.items():
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"error: this export needs {module}, which is not installed: pip install 'adamk[{extra}]'")
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    if max_seq_len is not None:
        cfg = type(cfg)(**{**cfg.__dict__, "max_seq_len": max_seq_len})
    if whole_model:
        layer = hf_model(hf, cfg, seed) if hf else LlamaModel(cfg, seed=seed)
    else:
        layer = hf_layer(hf, cfg, seed) if hf else DecoderLayer(cfg, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        # optimize=False keeps `Transpose(weight)` nodes that the optimiser would fold into
        # unnamed constants (HF layers feed 3-D activations, exported as MatMul on W^T).
        program = torch.onnx.export(layer, layer.example_inputs(pos=1), dynamo=True, opset_version=18,
                                    input_names=["token" if whole_model else "x", "pos", "k_cache", "v_cache"],
                                    output_names=["logits" if whole_model else "y"],
                                    verbose=False, optimize=hf is None)
    program.save(path, external_data=external_data)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="model.onnx")
    ap.add_argument("--preset", default="llama-3.2-1b", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the preset's)")
    ap.add_argument("--external-data", action="store_true", help="store weights in a .data file next to the model")
    ap.add_argument("--hf", choices=["llama", "qwen2", "qwen3"], help="export a transformers decoder layer (with "
                    "--whole-model: causal LM) of that family")
    ap.add_argument("--whole-model", action="store_true", help="embedding, all layers, final norm and LM head")
    args = ap.parse_args()
    export(args.output, args.preset, args.seed, args.external_data, args.max_seq_len, args.hf, args.whole_model)
    what = f"{args.hf or 'adamk'} {'whole model' if args.whole_model else 'layer'}"
    print(f"wrote {args.output} ({what}, {args.preset} dims, seed {args.seed})")


if __name__ == "__main__":
    main()
