"""Runtime: load an artifact on a GPU, bind weights, own the KV cache, launch decode steps."""
from .decode import DecodeStep, load

__all__ = ["DecodeStep", "load"]
