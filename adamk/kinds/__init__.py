"""Task kinds: one description per kind, read by every stage.

Each kind says which buffer roles its tasks name (the task dialect verifies them), what a
task costs (the search's cost model), how the CPU simulator executes it, and what codegen
emits for it (its per-op functions in kernel.cu and a task's call in the consumers' line),
mirrored by its header in csrc/kernels/. A new kind is one file here and one header there.
"""
from __future__ import annotations

from .argmax import Argmax, ArgmaxCombine
from .attention import Attention, AttentionCombine
from .base import TaskKind
from .embedding import Embedding
from .linear import Linear, LinearCombine

KINDS: dict[str, TaskKind] = {k.name: k for k in (Linear(), LinearCombine(), Attention(), AttentionCombine(),
                                                  Embedding(), Argmax(), ArgmaxCombine())}


def packings(execs) -> dict[str, dict]:
    """buffer -> how the runtime stores the weights its tasks stream (the kinds' `packing`, the same
    for every task of an op), in the order of `execs`: the manifest's `packed_weights`."""
    out: dict[str, dict] = {}
    for op in execs:
        entry = kind(op.kind.data).packing(op)
        if entry is not None:
            out.setdefault(entry["buffer"], entry)
    return out


def kind(name: str) -> TaskKind:
    if name not in KINDS:
        raise ValueError(f"no task kind '{name}'; known: {', '.join(KINDS)}")
    return KINDS[name]


__all__ = ["KINDS", "TaskKind", "kind", "packings"]
