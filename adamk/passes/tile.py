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
level of their own. A task's tokens are the earlier tasks whose writes overlap its reads (its
kind's `reads` and `writes`, which also give the schedule's polls), so the DAG is exact at the
granularity of the data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, i64
from xdsl.ir import Block
from xdsl.passes import ModulePass

from .. import smem
from ..dialects.graph import AttentionOp, LinearOp, WeightOp, shape_of
from ..dialects.task import BufferOp, JoinOp, TaskOp, attr_value
from ..errors import FrontendError, UnsupportedShapeError
from ..kinds import kind as task_kind
from ..names import label, quoted


ACTIVATION = "f32_tagged"   # storage of every activation: tagged words (csrc/kernels/tagged.cuh)
COMBINE_ROWS = 256   # output rows of one linear_combine task (it reads k_split x that many floats)
MAX_TASKS = 65536    # tasks of one step: bounds the compile's time and memory (the 1B layer has ~1,500)


def _ivalue(v: int):
    return IntegerAttr(v, i64)


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
                                                             r.footprint, r.k_index, r.k_split)))
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
        a = self.params.get(key)
        return None if a is None else attr_value(a)


class TaskBuilder:
    """Tiles the fused `@decode_step` into TaskRecords (program order is topological)."""

    def __init__(self, tile_rows: int, dtype: str, page_bytes: int = 32 * 1024):
        self.tile_rows, self.dtype, self.page_bytes = tile_rows, dtype, page_bytes
        self.buffers: list[BufferOp] = []
        self.tasks: list[TaskRecord] = []
        self.name_of: dict = {}            # SSA value -> buffer name
        self.producers: dict[str, list[tuple[int, int, int]]] = {}   # buffer -> (task index, begin, end) of rows
        self.known_deps: dict[str, dict] = {}                          # buffer -> (begin, end) -> deps
        self.unmerged: dict[str, tuple] = {}   # split attention's out -> (op, partial), parts not yet combined

    def buffer(self, value, name: str, role: str, dtype: str, shape=None):
        if any(b.sym_name.data == name for b in self.buffers):
            raise FrontendError(f"weight {quoted(name)} has the name of the kernel's {name} buffer; rename the weight")
        self.buffers.append(BufferOp(name, role, shape or shape_of(value), dtype))
        self.name_of[value] = name

    def build(self, fn: func.FuncOp):
        args = fn.body.block.args
        if len(args) != 4:
            raise FrontendError(f"@decode_step takes {len(args)} arguments, expected (x, pos, k_cache, v_cache)")
        self.buffer(args[0], "x", "input", self.dtype)
        self.buffer(args[2], "k_cache", "kv_cache", self.dtype)
        self.buffer(args[3], "v_cache", "kv_cache", self.dtype)
        self.pos = args[1]
        returned = fn.body.block.last_op.operands[0]
        weights = [op for op in fn.body.block.ops if isinstance(op, WeightOp)]
        # Activation names are labels of the weight names ([A-Za-z0-9_.], adamk/names.py), unique
        # among every buffer: a weight may be called anything, even "q_proj" or "y.partial".
        self.used = {"x", "k_cache", "v_cache", "y", *(w.weight_name.data for w in weights)}
        for op in fn.body.block.ops:
            if isinstance(op, WeightOp):
                self.buffer(op.result, op.weight_name.data, "weight", self.dtype)
            elif isinstance(op, LinearOp):
                base = label(re.sub(r"\.weight$", "", self.name_of[op.weight]), "linear")
                name = "y" if op.result == returned else self.unique(base)
                role, dtype = ("output", self.dtype) if op.result == returned else ("activation", ACTIVATION)
                self.buffer(op.result, name, role, dtype)
                self.linear(op, name)
            elif isinstance(op, AttentionOp):
                name = self.unique("attention")
                self.buffer(op.result, name, "activation", ACTIVATION)
                self.attention(op, name)
            elif isinstance(op, func.ReturnOp):
                if op.operands[0] not in self.name_of or self.name_of[op.operands[0]] != "y":
                    raise FrontendError("the graph's result must come from a linear (the last projection)")
            else:
                raise FrontendError(f"cannot tile '{op.name}': after fusion every op must be a linear or the "
                                    "attention (this elementwise op has no consumer to fuse into)")
        for out in list(self.unmerged):       # a split attention no linear reads
            self.combine_attention(out)

    def deps(self, buffer: str, begin: int, end: int):
        """Indices of the tasks that write elements [begin, end) of `buffer` (remembered until the
        buffer gets another writer: the tiles of one op mostly read the same range)."""
        known = self.known_deps.setdefault(buffer, {})
        if (begin, end) not in known:
            known[begin, end] = [t for t, b, e in self.producers.get(buffer, []) if b < end and begin < e]
        return known[begin, end]

    def linear(self, op: LinearOp, out: str):
        n, k = shape_of(op.weight)
        if k % 8:
            raise UnsupportedShapeError(f"linear '{out}': K={k} is not a multiple of 8 (rows are read 16 bytes at a time)")
        rows = (op.tile_rows.value.data if op.tile_rows is not None
                else smem.linear_tile_rows(self.tile_rows, op.weight2 is not None))
        k_split = op.k_split.value.data if op.k_split is not None else 1
        chunk = smem.k_chunk(k, k_split)
        coef = 0     # merge weights of an input from a split attention
        roles = {"input": op.input, "weight": op.weight, "input2": op.input2, "norm_weight": op.norm_weight,
                 "bias": op.bias, "residual": op.residual, "weight2": op.weight2}
        page_rows = smem.linear_page_rows(rows, op.weight2 is not None)   # gated: both weights' rows
        buffers = {role: self.name_of[v] for role, v in roles.items() if v is not None}
        for role in ("input", "input2", "residual"):
            if buffers.get(role) in self.unmerged and (role != "input" or op.prologue.data != "none"):
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
            coef = attention.num_heads.value.data * attention.k_split.value.data
        if op.eps is not None:
            params["eps"] = op.eps
        footprint = smem.linear_footprint(page_rows, chunk, self.page_bytes, coef)
        if k_split == 1:
            buffers["out"] = out
            for r in range(0, n, rows):
                self.task(out, f"{out}.r{r}", "linear", (r, min(r + rows, n)), buffers, params, footprint)
            return
        # K-split: every part writes float partial sums of its columns; the combine tasks add
        # the parts in order and apply the bias and residual once.
        partial = self.unique(f"{out}.partial")
        self.buffers.append(BufferOp(partial, "activation", [k_split, n], ACTIVATION))
        part_buffers = {r: b for r, b in buffers.items() if r not in ("bias", "residual")} | {"out": partial}
        for r in range(0, n, rows):
            end = min(r + rows, n)
            for j in range(k_split):
                self.task(partial, f"{out}.r{r}.k{j}", "linear", (r, end), part_buffers, params, footprint,
                          k_index=j, k_split=k_split)
        combine_buffers = {r: b for r, b in buffers.items() if r in ("bias", "residual")} | {"partial": partial,
                                                                                           "out": out}
        for r in range(0, n, COMBINE_ROWS):
            self.task(out, f"{out}.r{r}", "linear_combine", (r, min(r + COMBINE_ROWS, n)), combine_buffers,
                      {"N": _ivalue(n)}, k_split=k_split)

    def attention(self, op: AttentionOp, out: str):
        nh, nkv, hd = (a.value.data for a in (op.num_heads, op.num_kv_heads, op.head_dim))
        group, max_seq = op.group, shape_of(op.k_cache)[2]
        if hd % 8 or hd > 256:
            raise UnsupportedShapeError(f"attention '{out}': head_dim={hd} must be a multiple of 8 and at most 256")
        k_split = op.k_split.value.data if op.k_split is not None else 1
        buffers = {"q": self.name_of[op.q], "k": self.name_of[op.k], "v": self.name_of[op.v],
                   "k_cache": self.name_of[op.k_cache], "v_cache": self.name_of[op.v_cache], "out": out}
        params = {"head_dim": _ivalue(hd), "group": _ivalue(group), "num_heads": _ivalue(nh),
                  "num_kv_heads": _ivalue(nkv), "max_seq_len": _ivalue(max_seq), "scale": op.scale}
        if op.rope_inv_freq is not None:
            params["rope_inv_freq"] = op.rope_inv_freq
        # its cached rows stream through the SM's ring: pages of page_rows positions
        params |= {"page_rows": _ivalue(smem.attention_page_rows(hd, self.page_bytes)),
                   "pages": _ivalue(smem.attention_pages(max_seq, k_split, hd, self.page_bytes))}
        footprint = smem.attention_footprint(hd, group, self.page_bytes)
        heads = smem.attention_heads_per_task(group)    # query heads of one task: they share its rows
        if k_split == 1:
            for h in range(0, nh, heads):
                self.task(out, f"{out}.h{h}", "attention", (h, h + heads), buffers, params, footprint)
            return
        # Flash-decoding: part j of a head covers its j-th share of positions 0..pos and
        # writes (acc[hd], max, sum) unnormalised, merged by the reading linear's input staging
        # or, for several readers, by one combine task per KV group.
        partial = self.unique(f"{out}.partial")
        self.buffers.append(BufferOp(partial, "activation", [k_split, nh, hd + 2], ACTIVATION))
        for h in range(0, nh, heads):
            for j in range(k_split):
                self.task(partial, f"{out}.h{h}.s{j}", "attention", (h, h + heads), buffers | {"out": partial},
                          params, footprint, k_index=j, k_split=k_split)
        self.unmerged[out] = (op, partial)
        if op.result.uses.get_length() != 1:  # several readers: merged once, by combine tasks
            self.combine_attention(out)

    def combine_attention(self, out: str):
        """Combine tasks for a split attention whose consumer cannot merge the parts itself: one
        per KV group, adding the parts in order into `out`."""
        op, partial = self.unmerged.pop(out)
        nh, nkv, hd, k_split = (a.value.data for a in (op.num_heads, op.num_kv_heads, op.head_dim, op.k_split))
        group = op.group
        for g in range(nkv):
            self.task(out, f"{out}.g{g}", "attention_combine", (g * group, (g + 1) * group),
                      {"partial": partial, "out": out},
                      {"head_dim": _ivalue(hd), "num_heads": _ivalue(nh)}, k_split=k_split)

    def task(self, source: str, name: str, kind: str, tile, buffers, params, footprint=None, *,
             k_index: int = 0, k_split: int = 1):
        """Append one task of `source` (the buffer it writes); its deps are the earlier tasks whose
        writes overlap its reads."""
        if len(self.tasks) == MAX_TASKS:
            raise UnsupportedShapeError(f"the step needs more than {MAX_TASKS} tasks (at {quoted(source)}); adamk "
                                        "compiles models up to that size")
        record = TaskRecord(name, kind, source, tuple(tile), [], dict(buffers), dict(params), footprint, k_index,
                            k_split)
        description = task_kind(kind)
        ranges = [self.deps(buffer, b, e) for buffer, b, e in description.reads(record)]
        # one range: its (shared, duplicate-free) list; several: their union, in order
        record.deps = ranges[0] if len(ranges) == 1 else list(dict.fromkeys(d for r in ranges for d in r))
        self.tasks.append(record)
        for buffer, b, e in description.writes(record):
            self.producers.setdefault(buffer, []).append((len(self.tasks) - 1, b, e))
            self.known_deps.pop(buffer, None)

    def unique(self, base: str) -> str:
        """`base`, or `base_2`, `base_3`, ...: a buffer name no other buffer has."""
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name
