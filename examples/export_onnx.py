"""Write the bundled example decoder layer (seeded random weights) as ONNX.

    python examples/export_onnx.py -o model.onnx                       # llama-3.2-1b layer
    python examples/export_onnx.py -o tiny.onnx --preset tiny --seed 3
    python examples/export_onnx.py -o model.onnx --external-data       # weights in model.onnx.data
    python examples/export_onnx.py -o qwen.onnx --hf qwen2 --preset tiny  # a transformers Qwen2DecoderLayer
    python examples/export_onnx.py -o whole.onnx --whole-model --preset tiny   # embedding, layers, LM head

Uses the dynamo exporter (opset 18): RMSNorm, RoPE, GQA attention and SwiGLU come out
decomposed, weights as initializers. `--whole-model` writes embedding + all layers + LM head
(adamk.models.LlamaModel); `adamk compile` refuses those for now with a clear error, since it
compiles one decoder layer (README, "Status").
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import warnings

import torch

from adamk.models import PRESETS, DecoderLayer, LlamaModel


def hf_layer(kind: str, cfg, seed: int = 0) -> torch.nn.Module:
    """A transformers Llama or Qwen2 decoder layer with `cfg`'s dims and seeded random weights,
    wrapped in adamk's decode-step signature."""
    import transformers
    from adamk.models import HFDecodeStep
    dims = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                rms_norm_eps=cfg.rms_eps, max_position_embeddings=cfg.max_seq_len, attn_implementation="eager")
    torch.manual_seed(seed)
    if kind == "llama":
        hf_cfg = transformers.LlamaConfig(**dims, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer as Layer, LlamaRotaryEmbedding as Rope
    else:
        hf_cfg = transformers.Qwen2Config(**dims, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
        from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer as Layer, Qwen2RotaryEmbedding as Rope
    layer = Layer(hf_cfg, layer_idx=0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) * p.shape[-1] ** -0.5)
    return HFDecodeStep(layer, Rope(hf_cfg), cfg.max_seq_len).eval()


def export(path: str, preset: str = "llama-3.2-1b", seed: int = 0, external_data: bool = False,
           max_seq_len: int | None = None, hf: str | None = None, whole_model: bool = False) -> str:
    needed = {"onnxscript": "onnx", **({"transformers": "hf"} if hf else {})}    # module -> adamk extra
    for module, extra in needed.items():
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"error: this export needs {module}, which is not installed: pip install 'adamk[{extra}]'")
    cfg = PRESETS[preset]
    if max_seq_len is not None:
        cfg = type(cfg)(**{**cfg.__dict__, "max_seq_len": max_seq_len})
    if whole_model and hf:
        raise SystemExit("--whole-model and --hf cannot be combined")
    layer = LlamaModel(cfg, seed=seed) if whole_model else hf_layer(hf, cfg, seed) if hf else DecoderLayer(cfg, seed=seed)
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
    ap.add_argument("--hf", choices=["llama", "qwen2"], help="export a transformers decoder layer of that family")
    ap.add_argument("--whole-model", action="store_true", help="embedding, all layers, final norm and LM head")
    args = ap.parse_args()
    export(args.output, args.preset, args.seed, args.external_data, args.max_seq_len, args.hf, args.whole_model)
    what = "whole model" if args.whole_model else f"{args.hf or 'adamk'} layer"
    print(f"wrote {args.output} ({what}, {args.preset} dims, seed {args.seed})")


if __name__ == "__main__":
    main()
