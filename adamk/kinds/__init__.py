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


class NextStepL2Pages:
    """Which of an SM's first streamed tasks its producer asks L2 for after its drain, for the next
    step (sm_90: ring.cuh NextStepL2, one `cp.async.bulk.prefetch.L2` per page span): in program order,
    while their kind's pages are the same bytes every step, until the pages taken fill the ring. The
    next launch's first pages then come from L2 while its chain starts (docs/perf.md v73-v74).
    Codegen emits those prefetches and the cost model streams those pages from L2: both ask `take`,
    task by task, for the tasks with pages."""

    def __init__(self, depth: int):
        self.left = depth          # ring pages still to take; 0: none (a GPU without the prefetch)

    @staticmethod
    def reach(ops) -> list:
        """The part of an SM's program (its schedule ops) whose tasks `take` may be asked about: before
        the layer loop's end (the prologue's and the loop body's, which the next step runs as layer
        0's), never after it (an LM head)."""
        from ..dialects.schedule import LoopEndOp     # here: the dialects import the kinds
        return list(ops[:next((i for i, o in enumerate(ops) if isinstance(o, LoopEndOp)), len(ops))])

    def close(self) -> None:
        """No more tasks: the rest of the program is past `reach`, or not at the start of the stream."""
        self.left = 0

    def take(self, kind_name: str, pages: int) -> bool:
        if self.left <= 0 or not kind(kind_name).same_pages_each_step:
            self.close()
            return False
        self.left -= pages
        return True


def kind(name: str) -> TaskKind:
    if name not in KINDS:
        raise ValueError(f"no task kind '{name}'; known: {', '.join(KINDS)}")
    return KINDS[name]


__all__ = ["KINDS", "NextStepL2Pages", "TaskKind", "kind", "packings"]
