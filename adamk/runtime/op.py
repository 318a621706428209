"""One decode step as a PyTorch custom op (`torch.library`), so PyTorch code calls the megakernel
like any op, captures it in a CUDA graph and compiles around it (`torch.compile` sees one opaque op).

    step = adamk.load(artifact, weights)              # a layer's DecodeStep or a whole model's ModelStep
    y = adamk.runtime.op.call(step, x, pos)           # a layer: torch.ops.adamk.layer_step
    logits, nxt = adamk.runtime.op.call(step, token, pos)   # a model: torch.ops.adamk.model_step

The ops read and write torch tensors on the current stream and launch there (the cooperative
launch is a launch attribute, so a graph capture records it):
- `adamk::layer_step(handle, x, pos, order) -> y`: x [1, hidden] is copied in, y comes out as a new
  tensor; `pos` is an int (a graph replays the position it was captured with). One sequence's
  layer only: a batch's layer reads its positions from a buffer the host writes (`set_positions`),
  which a captured graph would replay stale, so the op refuses it (call the step itself).
- `adamk::model_step(handle, token, pos, order) -> (logits, next_token)`: `token` and
  `pos` are int32 device tensors of one element per sequence (B, the artifact's batch), so a
  captured graph serves every position: the op writes each token at its `pos` of its device
  sequence and `pos` into both of the kernel's position slots, then launches; logits (float32
  [vocab], a batch's [B, vocab]) and the argmax (int32 [B]) come out as new tensors. A token or
  position out of range is reported by the kernel (`step.check()`).
The step owns its KV caches and writes them on every call: the ops declare that they mutate
`order`, a one-element tensor of the step's, so torch.compile keeps every call and their order
(it may copy a declared-mutated input, which is why that is not the caches themselves; code that
reads `step.k_cache` should do so outside the compiled region). `handle` is the step's number in
this process (`register`). Launches a CUDA graph
replays are not counted by the host: past the epoch wrap the kernel refuses them and `check()`
says so (`step.graph()` counts its replays instead).
"""
from __future__ import annotations

import torch

from ..errors import AdamkError

_STEPS: dict[int, object] = {}


def register(step) -> int:
    """The handle of `step` for the ops (registered once; the step stays alive with it, and gets
    `step.op_order`, the tensor its ops declare they mutate)."""
    handle = getattr(step, "_op_handle", None)
    if handle is None:
        handle = step._op_handle = len(_STEPS) + 1
        step.op_order = torch.zeros(1, dtype=torch.int32, device=step.device)
        _STEPS[handle] = step
    return handle


def _step(handle: int, whole: bool):
    step = _STEPS.get(handle)
    if step is None:
        raise AdamkError(f"no decode step has op handle {handle} in this process (adamk.runtime.op.register)")
    if bool(step.manifest["model"].get("whole_model")) != whole:
        raise AdamkError(f"op handle {handle} is a {'layer' if whole else 'whole model'}: call "
                         f"torch.ops.adamk.{'layer_step' if whole else 'model_step'}")
    if not whole and step.batch > 1:
        raise AdamkError(f"op handle {handle} is a layer of a batch of {step.batch}, whose positions the host writes "
                         "(a captured graph would replay them stale): call the step itself; the ops take a batch's "
                         "whole model")
    return step


# Defined with torch.library.Library rather than @custom_op: its Python wrapper costs ~50 us of
# host time per eager call, this ~10 (benchmarks/bench_op.py).
_LIB = torch.library.Library("adamk", "DEF")
_LIB.define("layer_step(int handle, Tensor x, int pos, Tensor(a!) order) -> Tensor")
_LIB.define("model_step(int handle, Tensor token, Tensor pos, Tensor(a!) order) -> (Tensor, Tensor)")


def layer_step(handle: int, x: torch.Tensor, pos: int, order: torch.Tensor) -> torch.Tensor:
    step = _step(handle, whole=False)
    step.buffers["x"].copy_(x.reshape(step.buffers["x"].shape))
    step.launch(pos)
    return step.buffers["y"].clone()


def model_step(handle: int, token: torch.Tensor, pos: torch.Tensor, order: torch.Tensor):
    step = _step(handle, whole=True)
    batch = step.batch
    if token.numel() != batch or pos.numel() != batch:
        raise AdamkError(f"{token.numel()} tokens and {pos.numel()} positions for a batch of {batch} sequences")
    # a position outside the cache indexes nothing here (clamped), so the kernel reports it (check())
    at = pos.reshape(batch, 1).long().clamp(0, step.max_seq_len - 1)
    step.batch_tokens.scatter_(1, at, token.reshape(batch, 1).to(torch.int32))    # each into its row
    step.batch_positions.copy_(pos.reshape(batch, 1).to(torch.int32).expand(batch, 2))   # either slot
    step.launch()
    return step.logits(), step.batch_tokens.gather(1, at + 1).reshape(batch)


_LIB.impl("layer_step", layer_step, "CUDA")
_LIB.impl("model_step", model_step, "CUDA")


@torch.library.register_fake("adamk::layer_step", lib=_LIB)
def _(handle, x, pos, order):
    y = _STEPS[handle].buffers["y"]
    return x.new_empty(y.shape, dtype=y.dtype)


@torch.library.register_fake("adamk::model_step", lib=_LIB)
def _(handle, token, pos, order):
    step = _STEPS[handle]
    logits = (step.vocab_size,) if step.batch == 1 else (step.batch, step.vocab_size)
    return token.new_empty(logits, dtype=torch.float32), token.new_empty(step.batch, dtype=torch.int32)


def call(step, inputs, pos):
    """One step through the op: `y = call(step, x, pos)` (a layer of one sequence) or `logits, token =
    call(step, token, pos)` (a whole model; token and pos int32 device tensors of one element per
    sequence)."""
    handle = register(step)
    if step.manifest["model"].get("whole_model"):
        return torch.ops.adamk.model_step(handle, inputs, pos, step.op_order)
    return torch.ops.adamk.layer_step(handle, inputs, pos, step.op_order)
