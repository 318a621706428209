"""tile: fused graph IR -> task-level IR.

Reads the fused `adamk.linear` / `adamk.attention` ops of `@decode_step`; writes one
`adamk.buffer` per tensor the kernel touches and one `adamk.task` per tile: `tile_rows`
output rows of a linear, the query heads of one KV head of the attention (up to
smem.MAX_HEADS_PER_TASK of its GQA group, which read the same cached rows once; the task of
the group's first head appends the new k/v). An op the ksplit pass
split (`k_split` > 1) becomes k_split parts per tile, writing float partials to a
`<out>.partial` buffer, and combine tasks that add the parts in order into `<out>`; the
parts of a split attention are instead merged by the input staging of the linear that reads
its output (prologue `attn_combine`), in the same fixed order, so they cost no dependency
level of their own, up to a batch of STAGED_MERGE_MAX_BATCH (`merges_in_staging`; above it,
and for an output with several readers, by combine tasks, one per sequence and KV group). A
task's tokens are the earlier tasks whose writes overlap its reads (its kind's `reads` and
`writes`, which also give the schedule's polls), so the DAG is exact at the granularity of
the data.

At a batch, an activation that an RMSNorm linear stages (the residual stream: the hidden state
and the attention block's output) or a plain one does (a down projection's gated input, an
o_proj's unsplit attention output) gets a bf16 shadow, `<name>.pairs` (dtype bf16x2_tagged: two
bf16 and the epoch in one word, csrc/kernels/tagged.cuh), which its writers store beside the
tagged floats and the stagings read instead, at half the bytes (docs/perf.md v38, v39); the
residual adds keep reading the floats. At batch 1 only a down projection's input gets one, which
its paged staging reads (docs/perf.md v40).

A whole model (folded by the layers pass) tiles its embedding and its LM head and argmax once
and the body of its layer loop once, as tasks that run once per layer (`loop`) on layer-indexed
buffers (task.py): the layer's weights, its KV caches and every activation the body writes, and
the hidden state, whose slot 0 the embedding writes, slot l + 1 layer l and the LM head reads
slot L. The DAG the search costs is the prologue, one layer and the epilogue.
"""
from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, i64
from xdsl.ir import Block
from xdsl.passes import ModulePass

from .. import smem
from ..dialects.graph import (
    ArgmaxOp, AttentionOp, EmbeddingOp, HeadRMSNormOp, LayerInputOp, LayerOutputOp, LinearOp, WeightOp, shape_of,
)
from ..dialects.task import BufferOp, JoinOp, TaskOp, attr_value
from ..errors import FrontendError, UnsupportedShapeError
from ..kinds import kind as task_kind
from ..kinds.argmax import chunk_columns as argmax_chunk_columns, chunks as argmax_chunks
from ..names import label, quoted


ACTIVATION = "f32_tagged"   # storage of every activation: tagged words (csrc/kernels/tagged.cuh)
PAIRS = "bf16x2_tagged"     # a bf16 shadow of a staged input (tagged.cuh paired_t; pair_values)
COMBINE_ROWS = 256   # output rows of one linear_combine task (it reads k_split x that many floats per sequence)
# The largest batch whose linears merge a split attention's parts in their input staging. Every task
# of the linear merges every sequence's parts again, where combine tasks merge each column once at
# the cost of a dependency level. Measured on an H100 (docs/perf.md v62, v65, whole 1B model): batch
# 8 (2 parts) was 3.1-3.7% faster with combine tasks; batches 2, 4 and 6 were 4-6%, 2% and 5% slower
# with them (the search then chose 8 parts); batches 5 and 7 are not measured.
STAGED_MERGE_MAX_BATCH = 7
MAX_TASKS = 65536    # tasks of one step: bounds the compile's time and memory (the 1B layer has ~1,500)


def _ivalue(v: int):
    return IntegerAttr(v, i64)


def merges_in_staging(op: LinearOp) -> bool:
    """Whether linear `op`'s input staging merges the parts of the split attention it reads
    (`attn_combine`): a plain input read by this linear alone, for a batch of at most
    STAGED_MERGE_MAX_BATCH; else combine tasks merge them first (TaskBuilder.combine_attention)."""
    a = op.input.owner
    if not isinstance(a, AttentionOp) or op.prologue.data != "none" or a.k_split is None or \
            a.k_split.value.data == 1 or a.result.uses.get_length() != 1:
        return False
    return shape_of(op.input)[0] <= STAGED_MERGE_MAX_BATCH


def merge_weights(op: LinearOp) -> int:
    """The merge weights (heads x parts) a linear's work area holds when its input staging merges
    the parts of a split attention (merges_in_staging); else 0."""
    a = op.input.owner
    return a.num_heads.value.data * a.k_split.value.data if merges_in_staging(op) else 0


@dataclass(frozen=True)
class TilePass(ModulePass):
    name = "tile"
    tile_rows: int = 16
    dtype: str = "bf16"
    page_bytes: int = 32 * 1024      # a weight page of the SM's ring (CompileConfig.stage_bytes)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = next((o for o in op.ops if isinstance(o, func.FuncOp)), None)
        if fn is None:
            raise FrontendError("graph IR has no func.func @decode_step")
        builder = TaskBuilder(self.tile_rows, self.dtype, self.page_bytes)
        builder.build(fn)
        members: dict[str, list[int]] = {}
        for i, r in enumerate(builder.tasks):
            members.setdefault(r.source, []).append(i)
        ops, tasks, joins = [], [], {}
        for r in builder.tasks:
            deps = []
            for source in dict.fromkeys(builder.tasks[d].source for d in r.deps):
                mine = [d for d in r.deps if builder.tasks[d].source == source]
                if len(mine) > 1 and len(mine) == len(members[source]):    # all of them: one join
                    if source not in joins:
                        joins[source] = JoinOp(source, [tasks[d].done for d in mine])
                        ops.append(joins[source])
                    deps.append(joins[source].done)
                else:
                    deps += [tasks[d].done for d in mine]
            tasks.append(TaskOp(deps, TaskOp.body_properties(r.name, r.kind, r.source, r.tile, r.buffers, r.params,
                                                             r.footprint, r.k_index, r.k_split, r.loop, r.slots,
                                                             r.seq)))
            ops.append(tasks[-1])
        op.body.detach_block(0)
        op.body.add_block(Block([*builder.buffers, *ops]))


@dataclass
class TaskRecord:
    """One task before it becomes an `adamk.task`: what the DAG search costs without building IR.
    It reads like an `adamk.task` (kind_name, tile_range, part, parts, k_range, buffer(), param()), so a
    kind's `reads` and `writes` take either."""
    name: str
    kind: str
    source: str
    tile: tuple[int, int]
    deps: list[int]            # indices of earlier records
    buffers: dict
    params: dict
    footprint: smem.Footprint | None
    k_index: int
    k_split: int
    loop: bool = False         # runs once per layer
    slots: dict = dataclasses.field(default_factory=dict)     # layer-indexed buffer -> c (task.py)
    seq: int | None = None     # the one sequence of the batch it serves (None: all)
    values: dict = dataclasses.field(default_factory=dict)    # params' Python values (shared by an op's tasks)

    @property
    def sequence(self) -> int | None:
        return self.seq

    @property
    def in_loop(self) -> bool:
        return self.loop

    def slot(self, buffer: str) -> int | None:
        return self.slots.get(buffer)

    @property
    def kind_name(self) -> str:
        return self.kind

    @property
    def source_name(self) -> str:
        return self.source

    @property
    def tile_range(self) -> tuple[int, int]:
        return self.tile

    @property
    def part(self) -> int:
        return self.k_index

    @property
    def parts(self) -> int:
        return self.k_split

    @property
    def k_range(self) -> tuple[int, int]:
        return smem.k_range(self.param("K"), self.param("k_chunk"), self.k_index)

    def buffer(self, role: str) -> str | None:
        return self.buffers.get(role)

    def param(self, key: str):
        return self.values.get(key)


@dataclass
class _SlotRanges:
    """One slot's written ranges (Writes): (begin, order, end, task), sorted by begin when `in_order`,
    their starts (valid when sorted) and the longest range's length."""
    ranges: list = dataclasses.field(default_factory=list)
    starts: list = dataclasses.field(default_factory=list)
    longest: int = 0
    in_order: bool = True


class Writes:
    """The element ranges the tasks so far write to one buffer, per slot, sorted by their start, so
    the writers a read overlaps are found by bisection (a batch's tasks write a range per sequence:
    a scan of every range per read made tiling a 1B layer at batch 16 take seconds). Ranges are
    appended as tasks write them and sorted when the next read comes (an op's tasks write, then a
    later op's read): inserting each in place shifted the list every time, and at batch 8 that was
    a third of the search's time."""

    def __init__(self):
        self.slots: dict[object, _SlotRanges] = {}
        self.count = 0

    def add(self, task: int, begin: int, end: int, slot):
        entry = self.slots.setdefault(slot, _SlotRanges())
        entry.ranges.append((begin, self.count, end, task))
        entry.longest = max(entry.longest, end - begin)
        entry.in_order = False
        self.count += 1

    def overlapping(self, begin: int, end: int, meets) -> list[int]:
        """The tasks whose ranges overlap [begin, end) in a slot `meets` accepts, in the order their
        ranges were added (a task once per range it overlaps)."""
        found = []
        for slot, entry in self.slots.items():
            if meets(slot):      # a range that overlaps starts after begin - longest
                if not entry.in_order:
                    entry.ranges.sort()
                    entry.starts, entry.in_order = [r[0] for r in entry.ranges], True
                lo = bisect.bisect_right(entry.starts, begin - entry.longest)
                hi = bisect.bisect_left(entry.starts, end)
                found += [(order, task) for b, order, e, task in entry.ranges[lo:hi] if e > begin]
        return [task for _, task in sorted(found)]


class TaskBuilder:
    """Tiles the fused `@decode_step` into TaskRecords (program order is topological)."""

    def __init__(self, tile_rows: int, dtype: str, page_bytes: int = 32 * 1024):
        self.tile_rows, self.dtype, self.page_bytes = tile_rows, dtype, page_bytes
        self.buffers: list[BufferOp] = []
        self.tasks: list[TaskRecord] = []
        self.name_of: dict = {}            # SSA value -> buffer name
        self.slot_of: dict = {}            # SSA value of a layer-indexed buffer -> c of its slot (task.py)
        self.producers: dict[str, Writes] = {}      # buffer -> the element ranges its tasks write
        self.known_deps: dict[str, dict] = {}                                  # buffer -> (begin, end, slot) -> deps
        self.unmerged: dict[str, tuple] = {}   # split attention's out -> (op, partial), parts not yet combined
        self.layers, self.loop = 1, False      # the layer loop's trip count; building its body
        self.layered: set[str] = set()         # the layer-indexed buffers
        self.shared_params: dict = {}          # id of an op's params -> (params, with the batch's, values)
        self.paired: set = set()               # SSA values whose buffers get a bf16 shadow (`pair_values`)
        self.pairs: dict[str, str] = {}        # buffer -> its bf16 shadow
        self.unions: dict = {}                 # ids of deps lists -> (the lists, their union)

    def declare(self, name: str, role: str, shape, dtype: str, slots: int | None = None, layer_names=None,
                aliases=None):
        """A new `adamk.buffer` (`slots`: layer-indexed, so many copies of `shape`)."""
        if any(b.sym_name.data == name for b in self.buffers):
            raise FrontendError(f"weight {quoted(name)} has the name of the kernel's {name} buffer; rename the weight")
        self.buffers.append(BufferOp(name, role, shape, dtype, slots, layer_names, aliases))
        if slots is not None:
            self.layered.add(name)

    @property
    def per_layer(self) -> int | None:
        """The slots of a buffer the loop's body writes (None outside the loop)."""
        return self.layers if self.loop else None

    def buffer(self, value, name: str, role: str, dtype: str, shape=None, slots: int | None = None,
               layer_names=None, aliases=None):
        self.declare(name, role, shape or shape_of(value), dtype, slots, layer_names, aliases)
        self.name_of[value] = name
        if slots is not None:
            self.slot_of[value] = 0

    def activation(self, value, base: str, role: str = "activation", dtype: str = ACTIVATION) -> str:
        """A new buffer for `value`, layer-indexed in the loop's body; the loop's carried output is
        the hidden state's next slot instead."""
        if value is self.carried:
            self.name_of[value], self.slot_of[value] = self.hidden, 1
            return self.hidden
        name = self.unique(base)
        self.buffer(value, name, role, dtype, slots=self.per_layer)
        if value in self.paired:
            self.shadow(name, shape_of(value), self.per_layer)
        return name

    def shadow(self, name: str, shape, slots: int | None):
        """Buffer `name`'s bf16 shadow: the same elements and slots, two to a tagged word."""
        self.pairs[name] = self.unique(f"{name}.pairs")
        self.declare(self.pairs[name], "activation", shape, PAIRS, slots)

    def pair_values(self, ops) -> set:
        """The values whose buffers get a bf16 shadow: at a batch, the tagged inputs of RMSNorm linears
        (a layer loop's input or output stands for the hidden state, the embedding's value) and of
        plain ones (a down projection's, the gated linear's output; an o_proj's, an unsplit attention's:
        a staging's trip costs more the more bytes it brings, docs/perf.md v39), when every writer can
        store it: the embedding, an unsplit attention, or a linear with an even N whose tasks (unsplit)
        or combine tasks (K-split, 256 rows) finish whole pairs."""
        writers = {op.result: op for op in ops if isinstance(op, (LinearOp, EmbeddingOp, AttentionOp))}

        def split(op) -> bool:
            return op.k_split is not None and op.k_split.value.data > 1

        def storable(value) -> bool:
            op = writers.get(value)
            if isinstance(op, EmbeddingOp):
                return shape_of(op.table)[1] % 2 == 0
            if isinstance(op, AttentionOp):   # unsplit: each task finishes its heads' rows (head_dim even)
                return not split(op) and op.head_dim.value.data % 2 == 0
            if not isinstance(op, LinearOp):
                return False          # a host input (bf16, untagged) or another kind's output
            return shape_of(op.weight)[0] % 2 == 0 and (split(op) or self.linear_rows(op) % 2 == 0)
        if self.batch == 1:       # one sequence: only a paged staging's input (a down projection's), written
            return {op.input for op in ops                              # by an unsplit linear's tasks
                    if isinstance(op, LinearOp) and op.prologue.data == "none"
                    and isinstance(w := writers.get(op.input), LinearOp) and not split(w) and storable(op.input)}
        loop_in = next((op for op in ops if isinstance(op, LayerInputOp)), None)
        loop_out = next((op for op in ops if isinstance(op, LayerOutputOp)), None)
        embedding = next((op for op in ops if isinstance(op, EmbeddingOp)), None)
        loop_ends = {v for v in (loop_in and loop_in.result, loop_out and loop_out.result) if v is not None}
        hidden = loop_ends | {v for v in (self.carried, embedding and embedding.result) if v is not None}
        wanted = {op.input for op in ops if isinstance(op, LinearOp) and op.prologue.data in ("rmsnorm", "none")}
        if wanted & hidden:
            wanted |= hidden
        paired = {v for v in wanted if storable(v)}
        if hidden & wanted and not all(storable(v) for v in hidden - loop_ends):
            paired -= hidden          # one buffer, one shadow: every writer of the hidden state stores it
        return paired

    def linear_rows(self, op: LinearOp) -> int:
        """Output rows of one task of linear `op`."""
        return (op.tile_rows.value.data if op.tile_rows is not None
                else smem.linear_tile_rows(self.tile_rows, op.weight2 is not None))

    def build(self, fn: func.FuncOp, stop_after_loop: bool = False):
        """Tile every op (with `stop_after_loop`, a whole model's only up to its layer loop's end)."""
        args = fn.body.block.args
        if len(args) != 4:
            raise FrontendError(f"@decode_step takes {len(args)} arguments, expected (x, pos, k_cache, v_cache) or "
                                "(token, pos, k_caches, v_caches)")
        ops = list(fn.body.block.ops)
        loop_in = next((op for op in ops if isinstance(op, LayerInputOp)), None)
        self.carried = next((op.input for op in ops if isinstance(op, LayerOutputOp)), None)
        self.hidden = None
        whole = loop_in is not None
        self.batch = shape_of(args[0])[0]      # sequences decoded per step (passes/batch.py)
        self.batch_param = {"batch": _ivalue(self.batch)}      # every task's (one attribute, built once)
        if whole:                    # token ids, then caches [layers, ...]: one slot per layer
            self.layers = loop_in.layers.value.data
            max_seq = shape_of(args[2])[-2]
            self.buffer(args[0], "tokens", "tokens", "i32", [self.batch, max_seq + 1])   # each sequence's ids
            self.buffer(args[2], "k_cache", "kv_cache", self.dtype, shape_of(args[2])[1:], self.layers)
            self.buffer(args[3], "v_cache", "kv_cache", self.dtype, shape_of(args[3])[1:], self.layers)
            self.declare("position", "position", [self.batch, 2], "i32")    # each one's, in two parity slots
        else:
            self.buffer(args[0], "x", "input", self.dtype)
            self.buffer(args[2], "k_cache", "kv_cache", self.dtype)
            self.buffer(args[3], "v_cache", "kv_cache", self.dtype)
            if self.batch > 1:       # each sequence's position, on the device (one sequence's: the launch's argument)
                self.declare("position", "position", [self.batch], "i32")
        self.pos, self.max_seq = args[1], shape_of(args[2])[-2]
        self.paired = self.pair_values(ops)
        returned = fn.body.block.last_op.operands[0]
        weights = [op for op in ops if isinstance(op, WeightOp)]
        # Activation names are labels of the weight names ([A-Za-z0-9_.], adamk/names.py), unique
        # among every buffer: a weight may be called anything, even "q_proj" or "y.partial".
        self.used = {"x", "k_cache", "v_cache", "y", "tokens", "position", *(n for w in weights for n in w.names)}
        for op in ops:
            if isinstance(op, WeightOp):
                layered = op.layer_names is not None
                self.buffer(op.result, op.weight_name.data, "weight", self.dtype,
                            slots=len(op.names) if layered else None, layer_names=op.names if layered else None,
                            aliases=op.alias_names)
            elif isinstance(op, LinearOp):
                base = label(re.sub(r"\.weight$", "", self.name_of[op.weight]), "linear")
                if op.result == returned:
                    name = "y"
                    self.buffer(op.result, name, "output", self.dtype)
                else:
                    name = self.activation(op.result, "logits" if whole and not self.loop and self.hidden else base)
                # the op's name (tasks, source): its buffer's, or for the layer's output, which goes to
                # the hidden state (the embedding's buffer too), its weight's
                self.linear(op, name, self.unique(base) if name == self.hidden else name)
            elif isinstance(op, AttentionOp):
                self.attention(op, self.activation(op.result, "attention"))
            elif isinstance(op, EmbeddingOp):
                self.hidden = self.unique("hidden")       # slot 0: the embedding; slot l + 1: layer l's output
                self.buffer(op.result, self.hidden, "activation", ACTIVATION, slots=self.layers + 1)
                if op.result in self.paired:
                    self.shadow(self.hidden, shape_of(op.result), self.layers + 1)
                self.embedding(op)
            elif isinstance(op, LayerInputOp):
                if self.name_of.get(op.input) != self.hidden:
                    raise FrontendError("the layer loop's input must be the embedding's hidden state")
                self.name_of[op.result], self.slot_of[op.result] = self.hidden, 0
                self.loop = True
            elif isinstance(op, LayerOutputOp):
                self.name_of[op.result], self.slot_of[op.result] = self.hidden, self.layers
                for out in list(self.unmerged):       # a split attention no linear of the body reads
                    self.combine_attention(out)
                self.loop = False
                if stop_after_loop:
                    return
            elif isinstance(op, ArgmaxOp):
                self.name_of[op.result] = "tokens"
                self.argmax(op)
            elif isinstance(op, func.ReturnOp):
                if whole and not isinstance(op.operands[0].owner, ArgmaxOp):
                    raise FrontendError("a whole model's result must be the argmax of its logits")
                if not whole and self.name_of.get(op.operands[0]) != "y":
                    raise FrontendError("the graph's result must come from a linear (the last projection)")
            elif isinstance(op, HeadRMSNormOp):
                raise FrontendError("cannot tile 'adamk.head_rmsnorm': a per-head RMSNorm runs only inside the "
                                    "attention, on q and k both, before their RoPE (as Qwen3 applies it)")
            else:
                raise FrontendError(f"cannot tile '{op.name}': after fusion every op must be a linear or the "
                                    "attention (this elementwise op has no consumer to fuse into)")
        for out in list(self.unmerged):       # a split attention no linear reads
            self.combine_attention(out)

    def slots(self, values) -> dict[str, int]:
        """buffer -> c for the layer-indexed buffers of `values` (SSA values a task names), and for
        their bf16 shadows, which have their buffers' slots."""
        slots = {self.name_of[v]: self.slot_of[v] for v in values if v is not None and v in self.slot_of}
        return slots | {self.pairs[b]: c for b, c in slots.items() if b in self.pairs}

    def meets(self, a, b) -> bool:
        """Whether slot (c, in loop) `a` can be slot `b`: the same c in the same place, or the loop's
        c + layer a constant slot for some layer (the DAG the search costs is one layer's)."""
        if a is None or b is None:
            return a == b
        (ca, la), (cb, lb) = a, b
        if la == lb:
            return ca == cb
        loop_c, fixed = (ca, cb) if la else (cb, ca)
        return 0 <= fixed - loop_c < self.layers

    def deps(self, buffer: str, begin: int, end: int, slot=None):
        """Indices of the tasks that write elements [begin, end) of `buffer` (in `slot`; remembered
        until the buffer gets another writer: the tiles of one op mostly read the same range)."""
        known = self.known_deps.setdefault(buffer, {})
        if (begin, end, slot) not in known:
            writes = self.producers.get(buffer)
            found = writes.overlapping(begin, end, lambda s: self.meets(s, slot)) if writes else []
            known[begin, end, slot] = list(dict.fromkeys(found))     # a task once (a batch's writes a range per row)
        return known[begin, end, slot]

    def embedding(self, op: EmbeddingOp):
        hidden = shape_of(op.table)[1]
        pairs = {"pairs": self.pairs[self.hidden]} if self.hidden in self.pairs else {}
        self.task(self.hidden, f"{self.hidden}.embedding", "embedding", (0, hidden),
                  {"tokens": "tokens", "table": self.name_of[op.table], "out": self.hidden} | pairs,
                  {"N": _ivalue(hidden), "vocab": _ivalue(shape_of(op.table)[0]), "max_seq_len": _ivalue(self.max_seq)})

    def argmax(self, op: ArgmaxOp):
        """Greedy sampling in two fixed-order levels: each task the (max, index) of a chunk of the
        logits, then one task the first maximum of the chunks', in chunk order (the lowest index
        on ties), written as the id of the token at pos + 1."""
        logits, vocab = self.name_of[op.logits], shape_of(op.logits)[1]
        chunks, columns = argmax_chunks(vocab, self.batch), argmax_chunk_columns(self.batch)
        partial = self.unique(f"{logits}.argmax")
        self.declare(partial, "activation", [self.batch, chunks, 2], ACTIVATION)
        for c in range(chunks):
            self.task(partial, f"{partial}.c{c}", "argmax", (c * columns, min((c + 1) * columns, vocab)),
                      {"logits": logits, "out": partial}, {"N": _ivalue(vocab)},
                      smem.Footprint(0, smem.argmax_work_bytes(self.batch)))
        self.task("tokens", "tokens.argmax", "argmax_combine", (0, chunks),
                  {"partial": partial, "out": "tokens", "position": "position"},
                  {"max_seq_len": _ivalue(self.max_seq), "N": _ivalue(vocab)})

    def linear(self, op: LinearOp, out: str, source: str):
        n, k = shape_of(op.weight)
        if k % 8:
            raise UnsupportedShapeError(f"linear '{out}': K={k} is not a multiple of 8 (rows are read 16 bytes at a time)")
        rows = self.linear_rows(op)
        k_split = op.k_split.value.data if op.k_split is not None else 1
        chunk = smem.k_chunk(k, k_split)
        coef = 0     # merge weights of an input from a split attention
        roles = {"input": op.input, "weight": op.weight, "input2": op.input2, "norm_weight": op.norm_weight,
                 "bias": op.bias, "residual": op.residual, "weight2": op.weight2}
        page_rows = smem.linear_page_rows(rows, op.weight2 is not None)   # gated: both weights' rows
        buffers = {role: self.name_of[v] for role, v in roles.items() if v is not None}
        slots = self.slots([*roles.values(), op.result])
        for role in ("input", "input2", "residual"):
            if buffers.get(role) in self.unmerged and (role != "input" or not merges_in_staging(op)):
                self.combine_attention(buffers[role])     # only a plain input merges the parts itself
        params = {"K": _ivalue(k), "N": _ivalue(n), "prologue": op.prologue, "tile_rows": _ivalue(rows),
                  "k_chunk": _ivalue(chunk),
                  "page_cols": _ivalue(smem.linear_page_cols(page_rows, chunk, self.page_bytes)),
                  "pages": _ivalue(smem.linear_pages(page_rows, chunk, self.page_bytes))}
        if buffers["input"] in self.unmerged:             # the input is the parts of a split attention
            attention, partial = self.unmerged.pop(buffers["input"])
            self.buffers = [b for b in self.buffers if b.sym_name.data != buffers["input"]]   # never written
            buffers["input"] = partial
            params |= {"prologue": StringAttr("attn_combine"), "head_dim": attention.head_dim,
                       "num_heads": attention.num_heads, "parts": attention.k_split}
            coef = merge_weights(op)
        if op.eps is not None:
            params["eps"] = op.eps
        if params["prologue"].data in ("rmsnorm", "none") and buffers["input"] in self.pairs:   # the shadow
            buffers["input"] = self.pairs[buffers["input"]]
            params["paired"] = _ivalue(1)
        pairs = {"pairs": self.pairs[out]} if out in self.pairs else {}       # it writes a shadow too
        footprint = smem.linear_footprint(page_rows, chunk, self.page_bytes, coef, self.batch)
        if k_split == 1:
            buffers |= {"out": out} | pairs
            for r in range(0, n, rows):
                self.task(source, f"{source}.r{r}", "linear", (r, min(r + rows, n)), buffers, params, footprint,
                          slots=slots)
            return
        # K-split: every part writes float partial sums of its columns; the combine tasks add
        # the parts in order and apply the bias and residual once.
        partial = self.unique(f"{source}.partial")
        self.declare(partial, "activation", [k_split, self.batch, n], ACTIVATION, self.per_layer)
        part_buffers = {r: b for r, b in buffers.items() if r not in ("bias", "residual")} | {"out": partial}
        for r in range(0, n, rows):
            end = min(r + rows, n)
            for j in range(k_split):
                self.task(partial, f"{source}.r{r}.k{j}", "linear", (r, end), part_buffers, params, footprint,
                          k_index=j, k_split=k_split, slots=slots)
        combine_buffers = {r: b for r, b in buffers.items() if r in ("bias", "residual")} | {"partial": partial,
                                                                                           "out": out} | pairs
        # (a batch's tasks keep 256 rows: 256 / B rows each made the LM head's combines 8-16x as many
        # tasks, and batch 16's search stopped at its budget, for -0.5% at batch 8: docs/perf.md v37)
        for r in range(0, n, COMBINE_ROWS):
            self.task(source, f"{source}.r{r}", "linear_combine", (r, min(r + COMBINE_ROWS, n)), combine_buffers,
                      {"N": _ivalue(n)}, k_split=k_split, slots=slots)

    def attention(self, op: AttentionOp, out: str):
        nh, nkv, hd = (a.value.data for a in (op.num_heads, op.num_kv_heads, op.head_dim))
        group, max_seq = op.group, op.max_seq_len
        if hd % 8 or hd > 256:
            raise UnsupportedShapeError(f"attention '{out}': head_dim={hd} must be a multiple of 8 and at most 256")
        k_split = op.k_split.value.data if op.k_split is not None else 1
        buffers = {"q": self.name_of[op.q], "k": self.name_of[op.k], "v": self.name_of[op.v],
                   "k_cache": self.name_of[op.k_cache], "v_cache": self.name_of[op.v_cache], "out": out}
        norms = [v for v in (op.q_norm, op.k_norm) if v is not None]      # Qwen3's per-head RMSNorm
        if norms:
            buffers |= {"q_norm": self.name_of[op.q_norm], "k_norm": self.name_of[op.k_norm]}
        slots = self.slots([op.q, op.k, op.v, op.k_cache, op.v_cache, *norms, op.result])
        params = {"head_dim": _ivalue(hd), "group": _ivalue(group), "num_heads": _ivalue(nh),
                  "num_kv_heads": _ivalue(nkv), "max_seq_len": _ivalue(max_seq), "scale": op.scale}
        if op.norm_eps is not None:
            params["norm_eps"] = op.norm_eps
        if op.rope_inv_freq is not None:
            params["rope_inv_freq"] = op.rope_inv_freq
        # its cached rows stream through the SM's ring: pages of page_rows positions
        params |= {"page_rows": _ivalue(smem.attention_page_rows(hd, self.page_bytes)),
                   "pages": _ivalue(smem.attention_pages(max_seq, k_split, hd, self.page_bytes))}
        footprint = smem.attention_footprint(hd, group, self.page_bytes)
        heads = smem.attention_heads_per_task(group)    # query heads of one task: they share its rows
        if k_split == 1:
            if out in self.pairs:                       # its bf16 shadow (a batch's o_proj stages it)
                buffers["pairs"] = self.pairs[out]
            for b in range(self.batch):
                for h in range(0, nh, heads):
                    self.task(out, f"{out}{self.of_sequence(b)}.h{h}", "attention", (h, h + heads), buffers, params,
                              footprint, slots=slots, seq=b)
            return
        # Flash-decoding: part j of a head covers its j-th share of positions 0..pos and
        # writes (acc[hd], max, sum) unnormalised, merged by the reading linear's input staging
        # (merges_in_staging) or else by one combine task per sequence and KV group.
        partial = self.unique(f"{out}.partial")
        self.declare(partial, "activation", [k_split, self.batch, nh, hd + 2], ACTIVATION, self.per_layer)
        for b in range(self.batch):
            for h in range(0, nh, heads):
                for j in range(k_split):
                    self.task(partial, f"{out}{self.of_sequence(b)}.h{h}.s{j}", "attention", (h, h + heads),
                              buffers | {"out": partial}, params, footprint, k_index=j, k_split=k_split,
                              slots=slots, seq=b)
        self.unmerged[out] = (op, partial)
        if op.result.uses.get_length() != 1:  # several readers: merged once, by combine tasks
            self.combine_attention(out)

    def combine_attention(self, out: str):
        """Combine tasks for a split attention whose consumer cannot merge the parts itself: one
        per KV group, adding the parts in order into `out`."""
        op, partial = self.unmerged.pop(out)
        nh, nkv, hd, k_split = (a.value.data for a in (op.num_heads, op.num_kv_heads, op.head_dim, op.k_split))
        group = op.group
        for b in range(self.batch):
            for g in range(nkv):
                self.task(out, f"{out}{self.of_sequence(b)}.g{g}", "attention_combine", (g * group, (g + 1) * group),
                          {"partial": partial, "out": out},
                          {"head_dim": _ivalue(hd), "num_heads": _ivalue(nh)}, k_split=k_split, seq=b)

    def of_sequence(self, b: int) -> str:
        """The part of a per-sequence task's name that names its sequence (none in a batch of one)."""
        return f".b{b}" if self.batch > 1 else ""

    def task(self, source: str, name: str, kind: str, tile, buffers, params, footprint=None, *,
             k_index: int = 0, k_split: int = 1, slots: dict | None = None, seq: int | None = None):
        """Append one task of `source` (the buffer it writes); its deps are the earlier tasks whose
        writes overlap its reads. `slots`: c of a layer-indexed buffer it names other than 0 (task.py:
        the hidden state's, which the loop reads at c = 0 and writes at 1); `seq`: the one sequence of
        the batch it serves (an attention's; None: every sequence)."""
        if len(self.tasks) == MAX_TASKS:
            raise UnsupportedShapeError(f"the step needs more than {MAX_TASKS} tasks (at {quoted(source)}); adamk "
                                        "compiles models up to that size")
        slots = {b: (slots or {}).get(b, 0) for b in dict.fromkeys(buffers.values()) if b in self.layered}
        merged, values = self.params_of(params)
        record = TaskRecord(name, kind, source, tuple(tile), [], dict(buffers), merged, footprint, k_index, k_split,
                            self.loop, slots, seq, values)
        description = task_kind(kind)
        where = lambda buffer: (slots[buffer], self.loop) if buffer in slots else None
        ranges = [self.deps(buffer, b, e, where(buffer)) for buffer, b, e in description.reads(record)]
        record.deps = ranges[0] if len(ranges) == 1 else self.union(ranges)
        self.tasks.append(record)
        for buffer, b, e in description.writes(record):
            self.producers.setdefault(buffer, Writes()).add(len(self.tasks) - 1, b, e, where(buffer))
            self.known_deps.pop(buffer, None)

    def union(self, ranges: list[list[int]]) -> list[int]:
        """The union of several ranges' deps, in order, shared by every task that reads the same ranges
        (the lists `deps` remembers: a batch's task reads each sequence's row, and the tasks of an op
        read the same rows, so this was half the search's tiling time at batch 8). The entry holds the
        lists themselves, so their ids are not reused while the builder lives."""
        key = tuple(map(id, ranges))
        entry = self.unions.get(key)
        if entry is None:
            entry = self.unions[key] = (ranges, list(dict.fromkeys(d for r in ranges for d in r)))
        return entry[1]

    def params_of(self, params: dict) -> tuple[dict, dict]:
        """An op's params with the batch's, and their Python values: built once per op and shared by its
        tasks (read-only; decoding them per task was a sixth of the search's time at batch 8). The
        entry holds `params` itself, so its id is not reused while the builder lives."""
        entry = self.shared_params.get(id(params))
        if entry is None:
            merged = dict(params) | self.batch_param
            entry = self.shared_params[id(params)] = (params, merged, {k: attr_value(a) for k, a in merged.items()})
        return entry[1], entry[2]

    def unique(self, base: str) -> str:
        """`base`, or `base_2`, `base_3`, ...: a buffer name no other buffer has."""
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name
