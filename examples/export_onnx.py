"""Write the bundled example decoder layer (seeded random weights) as ONNX.

    python examples/export_onnx.py -o model.onnx                       # llama-3.2-1b layer
    python examples/export_onnx.py -o tiny.onnx --preset tiny --seed 3
    python examples/export_onnx.py -o model.onnx --external-data       # weights in model.onnx.data

Uses the dynamo exporter (opset 18): RMSNorm, RoPE, GQA attention and SwiGLU come out
decomposed, weights as initializers. Whole models (embedding, N layers, LM head) are not
exported yet: adamk compiles one decoder layer (see README, "Status").
"""
from __future__ import annotations

import argparse
import logging
import warnings

import torch

from adamk.models import PRESETS, DecoderLayer


def export(path: str, preset: str = "llama-3.2-1b", seed: int = 0, external_data: bool = False,
           max_seq_len: int | None = None) -> str:
    cfg = PRESETS[preset]
    if max_seq_len is not None:
        cfg = type(cfg)(**{**cfg.__dict__, "max_seq_len": max_seq_len})
    layer = DecoderLayer(cfg, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch").setLevel(logging.ERROR)
        program = torch.onnx.export(layer, layer.example_inputs(pos=1), dynamo=True, opset_version=18,
                                    input_names=["x", "pos", "k_cache", "v_cache"], output_names=["y"],
                                    verbose=False)
    program.save(path, external_data=external_data)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="model.onnx")
    ap.add_argument("--preset", default="llama-3.2-1b", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seq-len", type=int, default=None, help="KV cache length (default: the preset's)")
    ap.add_argument("--external-data", action="store_true", help="store weights in a .data file next to the model")
    args = ap.parse_args()
    export(args.output, args.preset, args.seed, args.external_data, args.max_seq_len)
    print(f"wrote {args.output} ({args.preset}, seed {args.seed})")


if __name__ == "__main__":
    main()
