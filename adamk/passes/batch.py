"""batch: graph IR traced for one sequence -> the same graph for a batch of `batch_size`.

Reads `@decode_step` as a frontend writes it, for a batch of 1; writes it with the batch axis
widened to `batch_size` on every value that belongs to a sequence: the hidden state or token
ids in, each position (`pos` [batch]), the KV caches (`[batch, ...]`, stacked `[layers, batch,
...]`), every activation and the result. Weights keep their shapes: the sequences of a batch
share them and nothing else, so a decoder layer's step for a batch is its step for one sequence
applied to each row (each at its own position, on its own cache). Every graph op is defined
row by row, so no op changes but its types. With `batch_size` 1 the graph is left as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.passes import ModulePass
from xdsl.rewriter import Rewriter

from ..dialects.graph import WeightOp, shape_of
from ..errors import FrontendError


@dataclass(frozen=True)
class BatchPass(ModulePass):
    name = "batch"
    batch_size: int = 1

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = next(o for o in op.ops if isinstance(o, func.FuncOp))
        args = fn.body.block.args
        traced = shape_of(args[0])[0]
        if traced != 1:
            raise FrontendError(f"the graph was traced at batch {traced}; the batch pass widens a batch of 1")
        if self.batch_size == 1:
            return
        for arg in args:
            shape = shape_of(arg)
            axis = 1 if len(shape) == 5 else 0          # a whole model's caches: [layers, batch, ...]
            self.widen(arg, axis)
        for o in list(fn.body.block.ops):
            if isinstance(o, (WeightOp, func.ReturnOp)):
                continue
            for result in o.results:
                self.widen(result, 0)
        fn.update_function_type()

    def widen(self, value, axis: int):
        shape = list(shape_of(value))
        if shape[axis] != 1:
            raise FrontendError(f"a value of shape {shape} has batch {shape[axis]}, expected the traced 1")
        shape[axis] = self.batch_size
        Rewriter.replace_value_with_new_type(value, TensorType(value.type.get_element_type(), shape))
