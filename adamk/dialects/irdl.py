"""The `adamk` dialect in IRDL, upstream MLIR's dialect description language, generated from the
xDSL op definitions (the one source of truth), so upstream tools verify an artifact's IR:
``mlir-opt --irdl-file=adamk.irdl.mlir graph.mlir`` (or ``iree-opt``, adamk[mlir]).

Reads every op and type of `dialects.Adamk`; writes `irdl.dialect @adamk`: per op its operands
(single, optional, variadic) and results with their base type, its required properties as
attributes with their base attribute (an IRDL-defined op has no properties, so artifacts print
properties as attributes: `print_module`). Upstream IRDL has no optional attributes: an
optional property is named in a comment and checked only by xDSL's verifier, as are the
`verify_` methods (shapes, prologues, tilings). No adamk op may hold a region: upstream verifies
a block only with a terminator, and an IRDL op can be neither a terminator nor exempt from one.
Nothing here is written by hand: a constraint the mapping does not know is an error, not a
silently looser check.
"""
from __future__ import annotations

from xdsl.dialects.builtin import (
    ArrayAttr, DenseArrayBase, DictionaryAttr, FloatAttr, IntegerAttr, StringAttr, SymbolRefAttr, TensorType,
)
from xdsl.irdl import (
    AnyAttr, BaseAttr, OptAttributeDef, OptOperandDef, OptPropertyDef, OptResultDef, RangeLengthConstraint, RangeOf, VarOperandDef,
    VarResultDef,
)

FILE_NAME = "adamk.irdl.mlir"      # in every artifact, listed in the manifest's hashes

# xDSL builtin class -> its upstream MLIR name ('!' a type, '#' an attribute)
UPSTREAM_NAMES = {TensorType: "!builtin.tensor", StringAttr: "#builtin.string", IntegerAttr: "#builtin.integer",
                  FloatAttr: "#builtin.float", DenseArrayBase: "#builtin.dense_array",
                  DictionaryAttr: "#builtin.dictionary", ArrayAttr: "#builtin.array",
                  SymbolRefAttr: "#builtin.symbol_ref"}
SEGMENT_SIZES = "operandSegmentSizes"   # checked by upstream IRDL itself for several optional operands


class _Emitter:
    def __init__(self, dialect):
        self.dialect = dialect
        self.own_types = {t: t.name.split(".", 1)[1] for t in dialect.attributes}   # TokenType -> "token"
        self.lines: list[str] = []
        self.n = 0

    def constraint(self, constr, where: str) -> str:
        """An SSA value holding `constr` (a fresh one per use: IRDL unifies a shared value)."""
        if isinstance(constr, RangeLengthConstraint):
            constr = constr.constraint
        if isinstance(constr, RangeOf):
            constr = constr.constr
        if isinstance(constr, AnyAttr):
            rhs = "irdl.any"
        elif isinstance(constr, BaseAttr) and constr.attr in self.own_types:
            rhs = f"irdl.base @{self.dialect.name}::@{self.own_types[constr.attr]}"
        elif isinstance(constr, BaseAttr) and constr.attr in UPSTREAM_NAMES:
            rhs = f'irdl.base "{UPSTREAM_NAMES[constr.attr]}"'
        else:
            raise ValueError(f"{where}: no IRDL form for the constraint {constr!r} (adamk/dialects/irdl.py)")
        value = f"%{self.n}"
        self.n += 1
        self.lines.append(f"      {value} = {rhs}")
        return value

    def values(self, defs, optional, variadic, where: str) -> str:
        items = []
        for name, d in defs:
            v = self.constraint(d.constr, f"{where} {name}")
            kind = "optional " if isinstance(d, optional) else "variadic " if isinstance(d, variadic) else ""
            items.append(f"{name}: {kind}{v}")
        return ", ".join(items)

    def op(self, op_class):
        d = op_class.get_irdl_definition()
        short = d.name.split(".", 1)[1]
        self.lines.append(f"    irdl.operation @{short} {{")
        if d.operands:
            self.lines.append(f"      irdl.operands({self.values(d.operands, OptOperandDef, VarOperandDef, d.name)})")
        fields = {**d.attributes, **d.properties}       # both are attributes upstream
        is_optional = lambda f: isinstance(f, (OptPropertyDef, OptAttributeDef))
        required = {n: f for n, f in fields.items() if not is_optional(f) and n != SEGMENT_SIZES}
        optional = sorted(n for n, f in fields.items() if is_optional(f))
        if required:
            attrs = ", ".join(f'"{n}" = {self.constraint(p.constr, f"{d.name} {n}")}' for n, p in required.items())
            self.lines.append(f"      irdl.attributes {{{attrs}}}")
        if optional:
            self.lines.append(f"      // optional, checked by adamk's verifier only: {', '.join(optional)}")
        if d.regions:      # its blocks could not verify upstream: an IRDL op is never a terminator or exempt
            raise ValueError(f"{d.name} has regions, which upstream MLIR cannot verify for an IRDL op "
                             "(adamk/dialects/schedule.py: programs are func.func)")
        if d.results:
            self.lines.append(f"      irdl.results({self.values(d.results, OptResultDef, VarResultDef, d.name)})")
        self.lines.append("    }")

    def emit(self) -> str:
        self.lines = ["// adamk.irdl.mlir - the adamk dialect for upstream MLIR, generated from adamk/dialects",
                      "// (adamk/dialects/irdl.py); load it with `mlir-opt --irdl-file=adamk.irdl.mlir`.",
                      "builtin.module {", f"  irdl.dialect @{self.dialect.name} {{"]
        for t, short in self.own_types.items():
            self.lines += [f"    irdl.type @{short} {{", "      irdl.parameters()", "    }"]
        for op_class in self.dialect.operations:
            self.op(op_class)
        return "\n".join(self.lines + ["  }", "}", ""])


def dialect_irdl() -> str:
    """The IRDL text of the adamk dialect (deterministic: ops in the dialect's order)."""
    from . import Adamk
    return _Emitter(Adamk).emit()
