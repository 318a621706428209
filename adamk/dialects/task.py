"""Task level of the `adamk` dialect: one `adamk.task` per tile of work.

`adamk.buffer` declares every tensor the kernel touches (its role, shape and storage
dtype). An `adamk.task` names the buffers it reads and writes by role, its tile (output
rows of a linear, query heads of an attention) and, for a task of one sequence of the batch
(an attention's), that sequence (`seq`), its K-split part (`k_index` of
`k_split`: columns of K, or positions of the sequence) and its shared-memory footprint
(`stage_bytes` of weights staged through the SM's ring, `work_bytes` of work area; see
smem.py). A split op's parts write float partials; its `*_combine` tasks add them up in
part order. Dependencies are `!adamk.token` SSA values: the task DAG is the use-def
graph, so a task can only name producers that come before it; `adamk.join` stands for
all tasks of one op.

A whole model's layer loop (passes/layers.py) makes buffers layer-indexed: `slots` copies of
`shape`, one per layer (the hidden state one more: the embedding's, then each layer's output).
A task of the loop's body (`loop`) runs once per layer and reads and writes slot `layer + c` of
each layer-indexed buffer it names (`slots`: buffer -> c); a task outside it slot c.
"""
from __future__ import annotations

from xdsl.dialects.builtin import (
    ArrayAttr, DenseArrayBase, DictionaryAttr, IntegerAttr, StringAttr, i64,
)
from xdsl.ir import ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    IRDLOperation, irdl_attr_definition, irdl_op_definition, opt_prop_def, prop_def, result_def, var_operand_def,
)
from xdsl.utils.exceptions import VerifyException

from ..kinds import KINDS
from ..kinds.base import DTYPE_BYTES
from ..smem import Footprint, k_range

BUFFER_ROLES = ("input", "output", "weight", "kv_cache", "activation", "tokens", "position")
TASK_KINDS = {name: k.roles for name, k in KINDS.items()}     # kind -> buffer roles it must name
DTYPES = tuple(DTYPE_BYTES)     # bf16, and f32_tagged for activations (a value and the epoch that wrote it)
BODY_PROPERTIES = ("sym_name", "kind", "source", "tile", "k_index", "k_split", "stage_bytes",
                   "work_bytes", "buffers", "params", "loop", "slots", "seq")


@irdl_attr_definition
class TokenType(ParametrizedAttribute, TypeAttribute):
    """Completion of one task; consuming it is a dependency edge."""
    name = "adamk.token"


@irdl_op_definition
class BufferOp(IRDLOperation):
    """A tensor in device memory: the kernel's inputs, outputs, weights, KV caches and
    the activations passed between tasks."""
    name = "adamk.buffer"
    sym_name = prop_def(StringAttr)
    role = prop_def(StringAttr)
    shape = prop_def(DenseArrayBase)
    dtype = prop_def(StringAttr)
    slots = opt_prop_def(IntegerAttr)     # layer-indexed: this many copies of `shape`
    layer_names = opt_prop_def(ArrayAttr)   # a layer-indexed weight: each slot's parameter name
    aliases = opt_prop_def(ArrayAttr)       # a weight: other names of its tensor in the source (tied)

    def __init__(self, sym_name: str, role: str, shape, dtype: str, slots: int | None = None, layer_names=None,
                 aliases=None):
        props = {"sym_name": StringAttr(sym_name), "role": StringAttr(role),
                 "shape": DenseArrayBase.from_list(i64, list(shape)), "dtype": StringAttr(dtype)}
        if slots is not None:
            props["slots"] = IntegerAttr(slots, i64)
        if layer_names is not None:
            props["layer_names"] = ArrayAttr([StringAttr(n) for n in layer_names])
        if aliases:
            props["aliases"] = ArrayAttr([StringAttr(n) for n in aliases])
        super().__init__(properties=props)

    @property
    def names(self) -> list[str]:
        """The parameter name of each slot of a weight (its own name if not layer-indexed)."""
        if self.layer_names is None:
            return [self.sym_name.data]
        return [n.data for n in self.layer_names.data]

    @property
    def copies(self) -> int:
        """Layer slots (1 for a buffer that is not layer-indexed)."""
        return self.slots.value.data if self.slots is not None else 1

    def verify_(self):
        if self.role.data not in BUFFER_ROLES:
            raise VerifyException(f"adamk.buffer @{self.sym_name.data}: unknown role '{self.role.data}'")
        if self.dtype.data not in DTYPES:
            raise VerifyException(f"adamk.buffer @{self.sym_name.data}: unknown dtype '{self.dtype.data}'")
        if self.layer_names is not None and len(self.layer_names.data) != self.copies:
            raise VerifyException(f"adamk.buffer @{self.sym_name.data}: {len(self.layer_names.data)} layer_names for "
                                  f"{self.copies} slots")
        if any(d <= 0 for d in self.shape.get_values()) or self.copies <= 0:
            raise VerifyException(f"adamk.buffer @{self.sym_name.data}: shape {list(self.shape.get_values())} "
                                  f"x {self.copies} slots has a non-positive extent")


def slot_index(op, buffer: str, layer: int) -> int:
    """The slot of `buffer` task `op` (an adamk.task / adamk.exec or a tile.TaskRecord) uses at
    layer `layer` of the loop: 0 for a buffer that is not layer-indexed."""
    c = op.slot(buffer)
    if c is None:
        return 0
    return c + (layer if op.in_loop else 0)


def attr_value(a):
    """The Python value of a task parameter attribute (an integer, float or string attr)."""
    v = a.value if hasattr(a, "value") else a
    return v.data if hasattr(v, "data") else v


class TaskBody(IRDLOperation):
    """Properties shared by `adamk.task` (task level) and `adamk.exec` (schedule level)."""
    sym_name = prop_def(StringAttr)
    kind = prop_def(StringAttr)
    source = prop_def(StringAttr)
    tile = prop_def(DenseArrayBase)
    k_index = prop_def(IntegerAttr)
    k_split = prop_def(IntegerAttr)
    stage_bytes = prop_def(IntegerAttr)
    work_bytes = prop_def(IntegerAttr)
    buffers = prop_def(DictionaryAttr)
    params = prop_def(DictionaryAttr)
    loop = opt_prop_def(IntegerAttr)          # 1: runs once per layer (the layer loop's body)
    slots = opt_prop_def(DictionaryAttr)      # layer-indexed buffer -> c: it uses slot (layer +) c
    seq = opt_prop_def(IntegerAttr)           # the one sequence of the batch it serves; absent: all of them

    @staticmethod
    def body_properties(sym_name, kind, source, tile, buffers: dict[str, str], params: dict,
                        footprint=None, k_index: int = 0, k_split: int = 1, loop: bool = False,
                        slots: dict[str, int] | None = None, seq: int | None = None):
        props = {"sym_name": StringAttr(sym_name), "kind": StringAttr(kind), "source": StringAttr(source),
                 "tile": DenseArrayBase.from_list(i64, list(tile)),
                 "k_index": IntegerAttr(k_index, i64), "k_split": IntegerAttr(k_split, i64),
                 "stage_bytes": IntegerAttr(footprint.stage if footprint else 0, i64),
                 "work_bytes": IntegerAttr(footprint.work if footprint else 0, i64),
                 "buffers": DictionaryAttr({k: StringAttr(v) for k, v in sorted(buffers.items())}),
                 "params": DictionaryAttr(dict(sorted(params.items())))}
        if loop:
            props["loop"] = IntegerAttr(1, i64)
        if slots:
            props["slots"] = DictionaryAttr({k: IntegerAttr(v, i64) for k, v in sorted(slots.items())})
        if seq is not None:
            props["seq"] = IntegerAttr(seq, i64)
        return props

    def copy_body_properties(self):
        return {k: v for k, v in self.properties.items() if k in BODY_PROPERTIES}

    # --- readers used by the simulator and codegen ---
    @property
    def tile_range(self) -> tuple[int, int]:
        b, e = self.tile.get_values()
        return b, e

    @property
    def kind_name(self) -> str:
        return self.kind.data

    @property
    def source_name(self) -> str:
        return self.source.data

    @property
    def part(self) -> int:
        """k_index: which K-part (columns of K, or positions of the sequence) the task covers."""
        return self.k_index.value.data

    @property
    def parts(self) -> int:
        """k_split: how many parts its op is split into."""
        return self.k_split.value.data

    @property
    def k_range(self) -> tuple[int, int]:
        """(k0, k_len): the columns of K a linear part reduces over."""
        return k_range(self.param("K"), self.param("k_chunk"), self.part)

    @property
    def sequence(self) -> int | None:
        """The sequence of the batch the task serves (None: every sequence)."""
        return self.seq.value.data if self.seq is not None else None

    @property
    def footprint(self):
        return Footprint(self.stage_bytes.value.data, self.work_bytes.value.data)

    def buffer(self, role: str) -> str | None:
        a = self.buffers.data.get(role)
        return a.data if a is not None else None

    def param(self, key: str):
        a = self.params.data.get(key)
        return None if a is None else attr_value(a)

    @property
    def in_loop(self) -> bool:
        return self.loop is not None and self.loop.value.data == 1

    def slot(self, buffer: str) -> int | None:
        """c of the slot (layer + c in the loop) of a layer-indexed buffer it names, else None."""
        if self.slots is None or buffer not in self.slots.data:
            return None
        return self.slots.data[buffer].value.data

    def verify_(self):
        name, kind = self.sym_name.data, self.kind.data
        if kind not in TASK_KINDS:
            raise VerifyException(f"{self.name} @{name}: unknown kind '{kind}', expected one of {sorted(TASK_KINDS)}")
        missing = TASK_KINDS[kind] - set(self.buffers.data)
        if missing:
            raise VerifyException(f"{self.name} @{name}: {kind} task lacks buffers {sorted(missing)}")
        tile = self.tile.get_values()
        if len(tile) != 2 or not 0 <= tile[0] < tile[1]:
            raise VerifyException(f"{self.name} @{name}: tile {list(tile)} is not a non-empty [begin, end)")
        ki, ks = self.k_index.value.data, self.k_split.value.data
        if not 0 <= ki < ks:
            raise VerifyException(f"{self.name} @{name}: k_index {ki} outside k_split {ks}")
        for prop in ("stage_bytes", "work_bytes"):
            if getattr(self, prop).value.data < 0:
                raise VerifyException(f"{self.name} @{name}: negative {prop}")
        batch = self.param("batch")
        if batch is None or batch < 1:
            raise VerifyException(f"{self.name} @{name}: param batch {batch} is not a positive number of sequences")
        if self.sequence is not None and not 0 <= self.sequence < batch:
            raise VerifyException(f"{self.name} @{name}: seq {self.sequence} outside its batch of {batch}")




@irdl_op_definition
class TaskOp(TaskBody):
    """One tile of work; `deps` are the tokens of the tasks it must follow."""
    name = "adamk.task"
    deps = var_operand_def(TokenType)
    done = result_def(TokenType)

    def __init__(self, deps, properties):
        super().__init__(operands=[list(deps)], properties=properties, result_types=[TokenType()])


@irdl_op_definition
class JoinOp(IRDLOperation):
    """Done when every task of op `source` is: a consumer of a whole vector depends on one
    join instead of on each producer tile, so the DAG stays linear in the number of tasks
    (and a join is what one per-op counter tracks)."""
    name = "adamk.join"
    source = prop_def(StringAttr)
    parts = var_operand_def(TokenType)
    done = result_def(TokenType)

    def __init__(self, source: str, parts):
        super().__init__(operands=[list(parts)], properties={"source": StringAttr(source)},
                         result_types=[TokenType()])

    def verify_(self):
        for p in self.parts:
            if not isinstance(p.owner, TaskOp) or p.owner.source.data != self.source.data:
                raise VerifyException(f"adamk.join @{self.source.data}: operand {p.name_hint or p} is not the "
                                      f"token of a task of '{self.source.data}'")


TASK_OPS = [BufferOp, TaskOp, JoinOp]
