"""adamk: an ahead-of-time megakernel compiler for LLM decoding.

    cfg = adamk.CompileConfig(gpu="L20")
    art = adamk.compile(module_or_onnx_path, cfg)
    art.save("out/")
    lowered = adamk.lower(module_or_onnx_path, cfg)   # up to the schedule IR, for the CPU simulator
    step = adamk.load("out/", weights)      # on a GPU machine
    engine = adamk.Engine("out/", weights)  # a whole model: prefill in PyTorch, decode on the megakernel
"""
__version__ = "0.1.0"

from .artifact import Artifact  # noqa: E402
from .compiler import compile, lower  # noqa: E402
from .config import CompileConfig  # noqa: E402
from .errors import AdamkError  # noqa: E402


def load(path, weights, device=None, timeout_s: float = 2.0, weights_prefix: str = "", names_prefix: str = "",
         launcher: str = "cuda-bindings"):
    """Load an artifact on a GPU; see `adamk.runtime.DecodeStep` (weights: a module, a state_dict,
    an .onnx or .safetensors file, or a checkpoint directory; launcher: "cuda-bindings" or "cpp",
    the C++ runtime)."""
    from .runtime import load as _load
    return _load(path, weights, device=device, timeout_s=timeout_s, weights_prefix=weights_prefix,
                 names_prefix=names_prefix, launcher=launcher)


def __getattr__(name):
    if name == "Engine":          # imported on use: it needs torch and a GPU, the compiler neither
        from .runtime.engine import Engine
        return Engine
    raise AttributeError(f"module 'adamk' has no attribute {name!r}")


__all__ = ["Artifact", "AdamkError", "CompileConfig", "Engine", "compile", "load", "lower", "__version__"]
