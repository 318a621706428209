"""Runtime: load an artifact on a GPU, bind weights, own the KV cache, launch decode steps."""
from .decode import DecodeStep, load
from .model import ModelStep

__all__ = ["DecodeStep", "ModelStep", "load"]
