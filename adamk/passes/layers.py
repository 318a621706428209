"""layers: fused graph IR of a whole model -> the same model with its decoder layers folded into one loop.

Reads `@decode_step` after fusion: a whole model is its prologue (the `adamk.embedding`), L
decoder layers, and its epilogue (the LM head's linear, whose prologue is the final RMSNorm,
and `adamk.argmax`). Writes layer 0's ops once, between `adamk.layer_input` (the hidden state
entering each layer) and `adamk.layer_output` (the state it hands on), its weights naming every
layer's parameter (`adamk.weight` `layer_names`); the ops of layers 1..L-1 are erased. The tile
pass then makes the body's tasks run once per layer on layer-indexed buffers, so the search,
the schedule and the kernel's code are one layer's, whatever L is.

Folding is exact only if every layer is layer 0 with other weights: the same ops in the same
order with the same properties and types, each reading the same operands (its own layer's
values at the same places, layer l - 1's output where layer 0 reads the prologue's, the same
function arguments), and the epilogue reading only the last layer's output. Anything else is
one error naming the first layer and op that differ. A layer model (no stacked caches) is left
as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from ..dialects.graph import (
    ArgmaxOp, AttentionOp, EmbeddingOp, LayerInputOp, LayerOutputOp, LinearOp, WeightOp,
)
from ..errors import FrontendError
from ..names import quoted


class _Layers:
    """The whole model's ops split into prologue, L layers of P ops, epilogue."""

    def __init__(self, ops: list, layers: int):
        self.layers = layers
        begin = 0
        while begin < len(ops) and isinstance(ops[begin], EmbeddingOp):
            begin += 1
        end = len(ops)
        if end and isinstance(ops[end - 1], ArgmaxOp):
            end -= 1
            if end and isinstance(ops[end - 1], LinearOp) and ops[end - 1].result == ops[end].logits:
                end -= 1
        if begin != 1 or end != len(ops) - 2:
            raise FrontendError("a whole model must be one embedding, its decoder layers, then the LM head and "
                                "argmax; this graph has another structure")
        body = ops[begin:end]
        if len(body) % layers:
            raise FrontendError(f"the model's {len(body)} layer ops do not split into {layers} equal layers")
        self.prologue, self.epilogue = ops[:begin], ops[end:]
        self.period = len(body) // layers
        self.layer = [body[i * self.period:(i + 1) * self.period] for i in range(layers)]
        self.where = {op: (i, j) for i, layer in enumerate(self.layer) for j, op in enumerate(layer)}

    def place(self, value):
        """(layer, op index, result index) of a value a layer op defines, else None."""
        owner = value.owner
        if owner in self.where:
            return (*self.where[owner], value.index)
        return None


def _differs(i: int, j: int, op, what: str):
    return FrontendError(f"layer {i} differs from layer 0 at its op {j} ({op.name}): {what}; adamk folds only "
                         "identical decoder layers into one loop")


def _check(model: _Layers):
    """Every layer is layer 0 with its own weights (the module docstring); returns
    (the hidden state entering layer 0, the place (op, result) of a layer's output)."""
    template = model.layer[0]
    entry, carried = None, None
    for j, op in enumerate(template):
        for x in op.operands:
            if isinstance(x, BlockArgument) or isinstance(x.owner, WeightOp) or model.place(x) is not None:
                continue
            if entry is not None and x != entry:
                raise _differs(0, j, op, "it reads a second value from before the layers")
            entry = x
    if entry is None:
        raise FrontendError("layer 0 reads no hidden state from the embedding")
    for i in range(1, model.layers):
        for j, (op, op0) in enumerate(zip(model.layer[i], template)):
            if op.name != op0.name:
                raise _differs(i, j, op, f"layer 0 has {op0.name} there")
            props = {k: v for k, v in op.properties.items() if k != "layer"}
            props0 = {k: v for k, v in op0.properties.items() if k != "layer"}
            if props != props0 or [r.type for r in op.results] != [r.type for r in op0.results]:
                raise _differs(i, j, op, "other properties or result types")
            if isinstance(op, AttentionOp) and op.layer.value.data != i:
                raise _differs(i, j, op, f"its attention reads cache layer {op.layer.value.data}")
            if len(op.operands) != len(op0.operands):
                raise _differs(i, j, op, "another number of operands")
            for x, x0 in zip(op.operands, op0.operands):
                at, at0 = model.place(x), model.place(x0)
                if isinstance(x0, BlockArgument):
                    same = x == x0
                elif isinstance(x0.owner, WeightOp):
                    same = isinstance(x.owner, WeightOp) and x.type == x0.type
                elif at0 is not None:
                    same = at == (i, *at0[1:])
                else:                                   # layer 0 reads the entry: layer i the previous output
                    same = at is not None and at[0] == i - 1 and (carried is None or at[1:] == carried)
                    carried = at[1:] if same else carried
                if not same:
                    raise _differs(i, j, op, "it reads an operand from another place than layer 0 does")
    out = None
    for op in model.epilogue:
        for x in op.operands:
            at = model.place(x)
            if at is None:
                continue
            if at[0] != model.layers - 1 or (carried is not None and at[1:] != carried) or (out and at[1:] != out):
                raise FrontendError(f"the LM head reads a value of layer {at[0]} other than its output")
            out = at[1:]
    if carried is None:                                  # one layer: its output is what the LM head reads
        carried = out
    if carried is None:
        raise FrontendError("the LM head does not read the last layer's output")
    return entry, carried


@dataclass(frozen=True)
class LayersPass(ModulePass):
    name = "layers"

    def apply(self, ctx: Context, module: ModuleOp) -> None:
        fn = next(o for o in module.ops if isinstance(o, func.FuncOp))
        attentions = [o for o in fn.body.block.ops if isinstance(o, AttentionOp)]
        if not attentions or attentions[0].layer is None:
            return                                   # one decoder layer: nothing to fold
        layers = attentions[0].k_cache.type.get_shape()[0]
        if [a.layer.value.data if a.layer is not None else None for a in attentions] != list(range(layers)):
            raise FrontendError(f"the model's attentions read cache layers "
                                f"{[a.layer.value.data if a.layer else None for a in attentions][:8]}; a whole model "
                                f"reads each of its {layers} stacked cache layers once, in order")
        ops = [o for o in fn.body.block.ops if not isinstance(o, (WeightOp, func.ReturnOp))]
        model = _Layers(ops, layers)
        entry, (jc, rc) = _check(model)
        template = model.layer[0]
        # every weight of layer 0 names its counterpart in each layer
        names: dict = {}
        for j, op in enumerate(template):
            for k, x0 in enumerate(op.operands):
                if isinstance(x0.owner, WeightOp):
                    per_layer = [model.layer[i][j].operands[k].owner.weight_name.data for i in range(layers)]
                    if names.setdefault(x0.owner, per_layer) != per_layer:
                        raise FrontendError(f"weight {quoted(x0.owner.weight_name.data)} of layer 0 stands for "
                                            "different weights in another layer")
        for w, per_layer in names.items():
            if len(set(per_layer)) != layers:
                raise FrontendError(f"weight {quoted(per_layer[0])} is shared between layers; adamk folds layers "
                                    "with their own weights")
            folded = WeightOp(w.weight_name.data, w.result.type, per_layer)
            Rewriter.replace_op(w, folded)
        # the loop's bounds: layer_input before layer 0, layer_output after it
        loop_in = LayerInputOp(entry, layers)
        Rewriter.insert_op(loop_in, InsertPoint.before(template[0]))
        for op in template:
            for k, x in enumerate(op.operands):
                if x == entry:
                    op.operands[k] = loop_in.result
        loop_out = LayerOutputOp(template[jc].results[rc])
        Rewriter.insert_op(loop_out, InsertPoint.after(template[-1]))
        for op in model.epilogue:
            for k, x in enumerate(op.operands):
                if x == model.layer[-1][jc].results[rc]:
                    op.operands[k] = loop_out.result
        for layer in reversed(model.layer[1:]):
            for op in reversed(layer):
                Rewriter.erase_op(op)
        for w in [o for o in fn.body.block.ops if isinstance(o, WeightOp)]:
            if not w.result.uses.get_length():
                Rewriter.erase_op(w)
