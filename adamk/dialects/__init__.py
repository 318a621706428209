"""The `adamk` dialect (graph, task and schedule levels) and MLIR text I/O."""
from __future__ import annotations

import io

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.dialects.func import Func
from xdsl.ir import Dialect
from xdsl.irdl import IRDLOperation
from xdsl.parser import Parser
from xdsl.printer import Printer

from .graph import GRAPH_OPS
from .schedule import SCHEDULE_OPS
from .task import TASK_OPS, TokenType

Adamk = Dialect("adamk", [*GRAPH_OPS, *TASK_OPS, *SCHEDULE_OPS], [TokenType])


def make_context() -> Context:
    ctx = Context()
    for d in (Builtin, Func, Adamk):
        ctx.load_dialect(d)
    return ctx


def print_module(module: ModuleOp, generic: bool = False) -> str:
    """MLIR text of `module`, the form every artifact holds: adamk ops generic with their
    properties as attributes, since ops that upstream MLIR loads from IRDL (adamk.irdl.mlir)
    have no properties; xDSL reads the attributes back as properties. `generic=True` also
    writes builtin and func ops generic."""
    for op in module.walk():     # properties in definition order, the order parsing gives them back
        if isinstance(op, IRDLOperation) and len(op.properties) > 1:
            order = {name: i for i, name in enumerate(type(op).get_irdl_definition().properties)}
            ordered = sorted(op.properties.items(), key=lambda kv: order.get(kv[0], len(order)))
            op.properties.clear()
            op.properties.update(ordered)
    out = io.StringIO()
    Printer(stream=out, print_generic_format=generic, print_properties_as_attributes=True).print_op(module)
    return out.getvalue() + "\n"


def parse_module(text: str) -> ModuleOp:
    module = Parser(make_context(), text).parse_module()
    module.verify()
    return module
