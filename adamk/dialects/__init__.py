"""The `adamk` dialect (graph, task and schedule levels) and MLIR text I/O."""
from __future__ import annotations

import io

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.dialects.func import Func
from xdsl.ir import Dialect
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
    """MLIR text of `module`; `generic=True` writes the upstream-MLIR-compatible form."""
    out = io.StringIO()
    Printer(stream=out, print_generic_format=generic, print_properties_as_attributes=generic).print_op(module)
    return out.getvalue() + "\n"


def parse_module(text: str) -> ModuleOp:
    module = Parser(make_context(), text).parse_module()
    module.verify()
    return module
