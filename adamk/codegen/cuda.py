"""Emit the persistent kernel's CUDA C++ from schedule-level IR.

The output is one self-contained, readable `.cu`: the facts it shares with the compiler
(warps per block, max waits: adamk/config.py), the device library headers it uses
(csrc/kernels/*.cuh, pasted in include order so the file compiles on its own), then the
generated part: the `Buffers` pointer table (one field per `adamk.buffer`, in IR order:
the host fills it in the same order; activations are tagged words), the ring type of every
SM and how many of each SM's first pages it streams one at a time (`one_at_a_time`), one
enumerator per counter (the barrier variant's; identifiers are numbered, model names appear
only in comments, escaped by adamk/names.py), static_asserts that the device library's
shared-memory layouts are the model's (smem.py), RoPE tables, the functions of
each op (its constants filled in), and one function per SM. An SM's function has two
straight lines: its producer warp streams the pages of the SM's tasks (a linear's weights, an
attention part's cached rows), page after page, through the ring; its consumer warps run the
tasks in order, staging a linear op's input once per run of its tasks. The schedule's polls need no code of their own: a task's
staging reads exactly the tagged elements its polls name and waits for each (tagged.cuh).
The kernel entry only dispatches on blockIdx.x.
"""
from __future__ import annotations

import math
import re

from xdsl.dialects.builtin import ModuleOp

from .. import __version__
from ..names import c_comment
from ..dialects.schedule import CounterOp, ExecOp, LoopBeginOp, LoopEndOp, SignalOp, WaitOp
from ..dialects.task import BufferOp
from ..errors import UnsupportedOpError
from ..paths import KERNELS_DIR
from ..search.validate import schedule_of
from .. import smem
from ..config import CONSUMER_WARPS, MAX_TILE_ROWS, producer_warps
from ..kinds import kind as task_kind
from ..kinds import NextStepL2Pages, packings
from ..kinds.base import TAGGED_DTYPES, f32_literal, restages
from ..kinds.linear import packed_elements
from ..targets import GPU

KERNEL_NAME = "adamk_decode_step"
HEADERS = ("common.cuh", "error_record.h", "sync.cuh", "tagged.cuh", "ring.cuh", "mma.cuh", "linear.cuh", "linear_mma.cuh",
           "attention.cuh", "embedding.cuh", "argmax.cuh")
CTYPES = {"bf16": "bf16_t", "f32_tagged": "tagged_t", "bf16x2_tagged": "paired_t", "i32": "int"}
RING = "SmRing"   # the generated alias of every SM's Ring<depth, slot bytes, pages in flight>
MAX_WAITS = 4   # waits one task call takes (sync.cuh kMaxWaits static_asserts it)
# The stamps a profiling build records per task, in slot order (sync.cuh kTraceSlots).
TRACE_SLOTS = ("reached", "inputs_in", "end", "data_in")
# The kernel's parameters in order: the runtime packs its arguments in this order (KERNEL_ARGS).
KERNEL_PARAMS = (("buffers", "const adamk::Buffers* __restrict__ b"), ("counters", "u32* counters"),
                 ("error_record", "adamk::ErrorRecord* err"), ("trace", "u64* trace"), ("pos", "int pos"),
                 ("epochs", "u32* epochs"), ("timeout_ns", "u64 timeout_ns"))
KERNEL_ARGS = tuple(name for name, _ in KERNEL_PARAMS)


def max_epoch(module: ModuleOp, queue: bool = False) -> int:
    """The last epoch a launch may run at before the state must be zeroed: counters count
    `per_step` signals a step (the queue's counter n_tasks + n_sms takes) and hold 32 bits. The
    kernel refuses a later epoch (kEpochsExhausted) and the manifest's kernel.max_epoch tells the
    runtimes when to zero the state (adamk/runtime/decode.py, csrc/runtime/session.cpp)."""
    sched = schedule_of(module)
    per_step = [c.per_step.value.data for c in module.ops if isinstance(c, CounterOp)]
    if queue:
        per_step.append(sum(isinstance(o, ExecOp) for sm in sched.sms for o in sm.ops) + sched.num_sms.value.data)
    # and the epoch itself is 32 bits: one past the last must not wrap to 0, the tag of a zeroed word
    return min((2**32 - 1) // max(per_step + [1]), 2**32 - 2)


def _with_waits(ops):
    """(op, the counter waits just before it) for each task and signal of an SM's program;
    waits after an SM's last task guard nothing and are dropped. Polls are the staging's."""
    waits: list[WaitOp] = []
    for op in ops:
        if isinstance(op, WaitOp):
            waits.append(op)
        elif isinstance(op, ExecOp):
            yield op, waits
            waits = []
        elif isinstance(op, SignalOp):
            yield op, []


def _stream(ops, pages) -> list[ExecOp]:
    """The tasks of `ops` (an SM's program, or part of it) whose pages its producer streams, in
    program order (a layer loop's body once)."""
    return [op for op in ops if isinstance(op, ExecOp) and pages(op)]


def _segments(ops) -> tuple[list, list | None, list, int]:
    """(before the layer loop, its body or None, after it, its trip count) of an SM's ops."""
    begin = next((i for i, o in enumerate(ops) if isinstance(o, LoopBeginOp)), None)
    if begin is None:
        return list(ops), None, [], 1
    end = next(i for i, o in enumerate(ops) if isinstance(o, LoopEndOp))
    return list(ops[:begin]), list(ops[begin + 1:end]), list(ops[end + 1:]), ops[begin].layers.value.data


def _page(first: int, per_layer: int, local: int) -> str:
    """The ring page index of a task's first page: `first` + `local`, plus `layer * per_layer` in
    the layer loop (per_layer 0 outside it)."""
    if not per_layer:
        return str(first + local)
    return f"layer * {per_layer} + {first + local}" if first + local else f"layer * {per_layer}"


def slot_elements(buffer, packing: dict | None) -> int:
    """Elements of one slot of a layer-indexed buffer (a packed weight's: its pages, padding
    included; runtime/weights.py pack_pages)."""
    if packing is None:
        return math.prod(buffer.shape.get_values())
    return packed_elements(packing, buffer.shape.get_values()[0])


def one_at_a_time(sms, pages, depth: int) -> list[int]:
    """Per SM, how many of its stream's first pages go one at a time (ring.cuh `fill`): its pages of
    the ops before the step's largest op (by weight pages; the first of equals in program order:
    the MLP's gate/up), that is the latency-bound chain of q/k/v, the attention and o_proj, plus a
    ring's worth after them, the refill that streams while the chain runs. With more pages in
    flight those copies fill the memory system's queues ahead of the chain's small reads (tagged
    words, instruction fetch): measured 1-2 us slower per step on the H200 (docs/perf.md v22).
    In a whole model the ops are the layer loop's and the pages its first layer's (the table is
    per SM, not per layer: a per-layer count measured no faster, docs/perf.md v24; the prologue
    streams nothing)."""
    looped = any(op.in_loop for sm in sms for op in _stream(sm.ops, pages))
    stream = lambda sm: [op for op in _stream(sm.ops, pages) if op.in_loop or not looped]     # noqa: E731
    total: dict[str, int] = {}
    first: dict[str, int] = {}
    for sm in sms:
        for op in stream(sm):
            src = op.source.data
            total[src] = total.get(src, 0) + pages(op)
            first[src] = min(first.get(src, op.task_id.value.data), op.task_id.value.data)
    if not total:
        return [0] * len(sms)
    largest = max(total, key=lambda src: (total[src], -first[src]))
    chain = {src for src in total if first[src] < first[largest]}
    counts = []
    for sm in sms:
        n = 0
        for op in stream(sm):
            if op.source.data not in chain:
                break
            n += pages(op)
        counts.append(n + depth if n else 0)
    return counts


_LITERAL = re.compile(r"(?<![\w.])\d+(?![\w.])")    # an integer literal of a call site (not in a name)


def _looped(units: list[list[str]]) -> list[str]:
    """The lines of consecutive tasks (each unit: one task's lines), every run of units that differ
    only in integer literals, each an arithmetic progression, as one loop over the run: an SM's
    tiles of one op become `for (int t = 0; t < n; ++t) op(..., a + t * d, ...)`, so its code
    grows with its ops, not its tasks (a 128K-row LM head is ~60 tasks per SM). A unit's comment
    names its task; the loop's names the run's first and last."""
    def split(unit):
        code = [line.split("  //")[0] for line in unit]
        return _LITERAL.sub("#", "\n".join(code)), [int(v) for v in _LITERAL.findall("\n".join(code))]

    out, i = [], 0
    keys = [split(u) for u in units]
    while i < len(units):
        skeleton, first = keys[i]
        j = i + 1
        step = None
        while j < len(units) and keys[j][0] == skeleton:
            d = [b - a for a, b in zip(keys[j - 1][1], keys[j][1])]
            if step is None:
                step = d
            elif d != step:
                break
            j += 1
        if j - i < 3:           # two tasks read better written out
            out += units[i]
            i += 1
            continue
        values = iter(f"{a} + t * {d}" if d else str(a) for a, d in zip(first, step))
        body = _LITERAL.sub(lambda _: next(values), "\n".join(line.split("  //")[0] for line in units[i]))
        names = [line.split("  //", 1)[1].split(":")[0].strip() for line in (units[i][-1], units[j - 1][-1])
                 if "  //" in line]
        note = f"  // {names[0]} .. {names[1]}" if len(names) == 2 else ""
        indent = units[i][0][:len(units[i][0]) - len(units[i][0].lstrip())]
        out += [f"{indent}for (int t = 0; t < {j - i}; ++t) {{{note}", *("  " + line for line in body.split("\n")),
                f"{indent}}}"]
        i = j
    return out


def _indented(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


def _in_layer_loop(lines: list[str], layers: int, indent: str) -> list[str]:
    """`lines` (one segment of an SM's line, indented one level) inside the layer loop; nothing if empty."""
    if not lines:
        return []
    return [f"{indent}for (int layer = 0; layer < {layers}; ++layer) {{   // the layer loop", *lines, f"{indent}}}"]


def _signature(name: str, params: str) -> list[str]:
    """The opening line of a per-op function: what every one takes (the layer loop's layer: 0
    outside it), then its own `params`."""
    return [f"__device__ __noinline__ void {name}(const Step& s, const Buffers& b, int task, int layer, {params}) {{"]


class _Emitter:
    def __init__(self, module: ModuleOp, gpu: GPU, profile: bool = False, queue: bool = False):
        self.profile, self.queue = profile, queue
        self.gpu = gpu
        self.buffers = {b.sym_name.data: b for b in module.ops if isinstance(b, BufferOp)}
        self.counters = {c.sym_name.data: c for c in module.ops if isinstance(c, CounterOp)}
        self.schedule = schedule_of(module)
        self.plan = self.schedule.plan()
        self.ring = RING
        self.in_flight = self.schedule.in_flight.value.data
        self.tables: dict[tuple, str] = {}     # rope inv_freq values -> __constant__ name
        self.asserts: set[str] = set()         # the device layouts agree with smem.py, per instantiation
        self.waits: dict[str, int] = {"{0, {}, {}}": 0}   # Waits literal -> index in kWaits
        self.functions: dict[tuple, tuple] = {}           # (kind, op) -> (first task, lines)
        # Identifiers are numbered, never made from names (names are model data: adamk/names.py).
        self.field = {name: f"buf{i}" for i, name in enumerate(self.buffers)}
        self.packing = packings(o for sm in self.schedule.sms for o in sm.ops if isinstance(o, ExecOp))
        self.tagged = {name for name, b in self.buffers.items() if b.dtype.data in TAGGED_DTYPES}   # tagged words
        self.enumerator = {name: f"counter{c.index.value.data}" for name, c in self.counters.items()}
        self.op_number: dict[str, int] = {}               # op (a task's source) -> n of its functions' op<n>
        self.one_at_a_time = ([0] * len(self.schedule.sms) if queue      # the queue variant: tasks go anywhere
                              else one_at_a_time(self.schedule.sms, self.pages, self.plan.depth))
        self.slot_elements = {name: slot_elements(b, self.packing.get(name)) for name, b in self.buffers.items()
                              if b.slots is not None}
        self.whole = any(b.role.data == "tokens" for b in self.buffers.values())
        # sequences decoded per step: a batch's positions are on the device, one per sequence
        self.batch = max((o.param("batch") for sm in self.schedule.sms for o in sm.ops if isinstance(o, ExecOp)),
                         default=1)
        self.position_field = next((self.field[n] for n, b in self.buffers.items() if b.role.data == "position"), None)
        self.n_tasks = sum(isinstance(o, ExecOp) for sm in self.schedule.sms for o in sm.ops)
        self.max_epoch = max_epoch(module, queue)

    def ptr(self, name: str | None, ctype_if_none: str = "tagged_t", op=None) -> str:
        """Buffer `name` as task `op` names it: a layer-indexed one at its slot (task.py), `layer`
        being the per-op function's parameter."""
        if name is None:
            return f"(const {ctype_if_none}*)nullptr"
        c = op.slot(name) if op is not None else None
        if c is None:
            return f"b.{self.field[name]}"
        slot = ("layer" + (f" + {c}" if c else "")) if op.in_loop else str(c)
        return f"(b.{self.field[name]} + (size_t)({slot}) * {self.slot_elements[name]})"

    @staticmethod
    def args(op: ExecOp, layer: str | None = None) -> str:
        """What every per-op function's call for task `op` passes first: the step, the buffers, the
        task, the layer (`layer`, else the loop's variable in the layer loop's body, 0 outside it)."""
        layer = layer if layer is not None else "layer" if op.in_loop else 0
        return f"s, b, {op.task_id.value.data}, {layer}"

    def ctype(self, name: str) -> str:
        """The element type of buffer `name` in kernel.cu."""
        return CTYPES[self.buffers[name].dtype.data]

    def buffer_fields(self) -> list[str]:
        lines = []
        for name, b in self.buffers.items():
            const = "const " if b.role.data in ("weight", "input") else ""
            shape = list(b.shape.get_values())
            lines.append(f"  {const}{CTYPES[b.dtype.data]}* {self.field[name]};  // {b.role.data} {c_comment(name)} {shape}")
        return lines

    def rope_table(self, values) -> str:
        key = tuple(values)
        if key not in self.tables:
            self.tables[key] = f"rope_inv_freq_{len(self.tables)}"
        return self.tables[key]

    def waits_ref(self, waits: list[WaitOp], task_id: int) -> str:
        """kWaits[i], the table entry of this set of waits (entry 0: none)."""
        if len(waits) > MAX_WAITS:
            raise ValueError(f"task {task_id} waits on {len(waits)} counters; the device library takes {MAX_WAITS}")
        counters = ", ".join(self.enumerator[w.counter.data] for w in waits)
        counts = ", ".join(f"{w.count.value.data}u" for w in waits)
        literal = f"{{{len(waits)}, {{{counters}}}, {{{counts}}}}}"
        index = self.waits.setdefault(literal, len(self.waits))
        return f"kWaits[{index}]"

    def op_name(self, op: ExecOp) -> str:
        """`op<n>`, the name of the functions of `op`'s op. Every task of one op shares the op's
        constants (buffers, K, tiling), so they live in small generated functions per op and a
        call site passes only what varies: the task's tile and part and its ring page."""
        kind, source = op.kind.data, op.source.data
        key = (kind, source)
        number = self.op_number.setdefault(source, len(self.op_number))
        if key in self.functions:
            first = self.functions[key][0]
            if (first.buffers, first.params, first.k_split) != (op.buffers, op.params, op.k_split):
                raise ValueError(f"tasks {first.sym_name.data} and {op.sym_name.data} of one op differ in constants")
            return f"op{number}"
        name = f"op{number}"
        body = [f"// {name}: {c_comment(source)}, {kind}", *task_kind(kind).functions(self, op, name)]
        self.functions[key] = (op, body)
        return name

    def produce(self, op: ExecOp, page: int | str) -> list[str]:
        """The producer's lines that stream task `op`'s pages from ring page `page` on (its kind's)."""
        return task_kind(op.kind.data).produce(self, op, page)

    def l2_next(self, sm) -> list[str]:
        """After the SM's last page: the next step's first pages into L2 (kinds.NextStepL2Pages says which
        tasks'), from the ops before the layer loop and its first trip (layer 0's), never past it."""
        rule, lines = NextStepL2Pages(self.plan.depth if self.gpu.next_step_l2 else 0), []
        for op in _stream(NextStepL2Pages.reach(sm.ops), self.pages):
            if not rule.take(op.kind.data, self.pages(op)):
                break
            lines += task_kind(op.kind.data).produce(self, op, 0, l2_next=True)
        return lines

    def consume(self, op: ExecOp, waits: list[WaitOp], page: int | str, new_run: bool) -> list[str]:
        """The consumers' lines for one task: the barrier variant's counter waits, its kind's call,
        stamped in a profiling build."""
        task_id = op.task_id.value.data
        lines = [f"  wait_all(s, {self.waits_ref(waits, task_id)}, {task_id});"] if waits else []
        lines += task_kind(op.kind.data).call(self, op, page, new_run)
        return lines + ([f"  trace_mark(s, {task_id}, 2);"] if self.profile else [])

    # ---- what the kinds' emitters use (adamk/kinds) ---------------------------------------
    def buf_of(self, op: ExecOp):
        """role -> the pointer expression of `op`'s buffer in that role (a typed nullptr if none)."""
        return lambda role, ctype="tagged_t": self.ptr(op.buffer(role), ctype, op)

    signature = staticmethod(_signature)

    def position(self, seq: str) -> str:
        """The position of sequence `seq` (an expression) of a batch: a whole model's in the slot of
        this epoch's parity of its row of the position buffer, a layer's in its element."""
        if self.whole:
            return f"b.{self.position_field}[({seq}) * 2 + (s.epoch & 1u)]"
        return f"b.{self.position_field}[{seq}]"

    @staticmethod
    def at_seq(pointer: str, stride) -> str:
        """`pointer` advanced to the row of sequence `seq` (rows `stride` elements apart); a null
        pointer (an absent buffer) stays null."""
        if pointer.endswith("nullptr"):
            return pointer
        return f"({pointer} + (size_t)seq * {stride})"

    def per_sequence(self, batch: int, call) -> list[str]:
        """A task body's call once per sequence of a batch: `call(at, step, seq)` writes it for
        sequence `seq` (an expression), `at(pointer, stride)` being its row of a buffer (rows
        `stride` elements apart) and `step` its Step, at its own position. One sequence's is the
        call itself, on the launch's step and the buffers as they are (`seq` 0)."""
        if batch == 1:
            return [f"  {call(lambda pointer, stride: pointer, 's', '0')}"]
        step = f"at_position(s, {self.position('seq')})"
        return [f"  for (int seq = 0; seq < {batch}; ++seq)", f"    {call(self.at_seq, step, 'seq')}"]

    def marks(self, task_id: int) -> list[str]:
        """The before/after-waits stamps of a task with no waits (a profiling build)."""
        return [f"  trace_mark(s, {task_id}, 0);", f"  trace_mark(s, {task_id}, 1);"] if self.profile else []

    @staticmethod
    def comment(op: ExecOp) -> str:
        return c_comment(op.sym_name.data)

    @staticmethod
    def pages(op: ExecOp) -> int:
        return task_kind(op.kind.data).pages(op)

    @staticmethod
    def staged(op: ExecOp):
        """What a task's input staging leaves in the work area (its kind says; None: nothing reusable)."""
        return task_kind(op.kind.data).staged(op)

    def sm_function(self, sm) -> list[str]:
        """The SM's two straight lines; a whole model's layer loop is a `for` over layers in both,
        its pages numbered on: the prologue's P0, then Pb per layer, then the epilogue's."""
        pre, body, post, layers = _segments(sm.ops)
        segments = [(pre, False), (body or [], True), (post, False)]
        counts = [sum(self.pages(o) for o in _stream(ops, self.pages)) for ops, _ in segments]
        firsts = [0, counts[0], counts[0] + layers * counts[1]]
        total = firsts[2] + counts[2]
        # A profiling build stamps each layer's tasks in that layer's slice of the trace buffer
        # ([layers][tasks][slots]; the tasks outside the loop in slice 0): its loop moves s.trace.
        per_layer_stamps = self.profile and body
        lines = [f"__device__ __noinline__ void sm_{sm.index}(const Step& {'step' if per_layer_stamps else 's'}, "
                 "const Buffers& b) {",
                 *(["  Step s = step;   // s.trace: the layer's slice of the stamps"] if per_layer_stamps else [])]
        if total:
            lines += [f"  {RING}::init(s);", "  if (is_producer()) {   // the SM's stream"]
            for (ops, in_loop), first, count in zip(segments, firsts, counts):
                local, units = 0, []
                for op in _stream(ops, self.pages):
                    units.append(self.produce(op, _page(first, count if in_loop else 0, local)))
                    local += self.pages(op)
                lines += _in_layer_loop(_indented(_looped(units)), layers, "    ") if in_loop else _looped(units)
            lines += [f"    {RING}::drain(s, {total});", *self.l2_next(sm), "    return;", "  }"]
        else:
            lines += ["  if (is_producer()) return;   // nothing to stream"]
        for (ops, in_loop), first, count in zip(segments, firsts, counts):
            local, staged, units = 0, None, []     # staged: what the work area holds (self.staged)
            for op, waits in _with_waits(ops):   # waits run in the consumers' line; the producer is not held
                if isinstance(op, SignalOp):
                    units.append([f"  signal_counter(s, {self.enumerator[op.counter.data]}, {op.count.value.data}u);"
                                  f"  // {c_comment(op.counter.data)}"])
                    continue
                unit = []
                while len(waits) > MAX_WAITS:    # more producers than one call takes: wait for some first
                    head, waits = waits[:MAX_WAITS], waits[MAX_WAITS:]
                    unit.append(f"  wait_all(s, {self.waits_ref(head, op.task_id.value.data)}, "
                                f"{op.task_id.value.data});")
                key = self.staged(op)    # None after a task that uses the work area otherwise
                unit += self.consume(op, waits, _page(first, count if in_loop else 0, local),
                                     new_run=restages(key, staged))
                units.append(unit)
                staged = key
                local += self.pages(op)
            if in_loop and per_layer_stamps and units:
                units.insert(0, [f"  s.trace = step.trace + (size_t)layer * {self.n_tasks * len(TRACE_SLOTS)};"])
                units.append(["  s.trace = step.trace;"])
            lines += _in_layer_loop(_indented(_looped(units)), layers, "  ") if in_loop else _looped(units)
        return lines + ["}"]

    def queue_function(self) -> list[str]:
        """The dynamic work-queue variant (for the ablation only): one function that runs task
        t, whichever block takes it, from ring page `page` on, and returns the pages it used.
        Each task stages its own input (waiting for it, as every task does); the producer warp
        streams the weights of the task just taken."""
        execs = sorted((o for sm in self.schedule.sms for o in sm.ops if isinstance(o, ExecOp)),
                       key=lambda o: o.task_id.value.data)
        lines = ["__device__ __noinline__ int run_task(const Step& s, const Buffers& b, u32 t, int page) {",
                 "  switch (t) {"]
        for o in execs:
            tid = o.task_id.value.data
            lines.append(f"    case {tid}: {{")
            if self.pages(o):
                lines += ["      if (is_producer()) {", *("  " + line for line in self.produce(o, "page")),
                          f"        return {self.pages(o)};", "      }"]
            else:
                lines.append("      if (is_producer()) return 0;")
            lines += ["    " + line for line in self.consume(o, [], "page", new_run=True)]
            lines.append(f"      return {self.pages(o)};\n    }}")
        return lines + ["  }", "  return 0;", "}"]

    def emit(self) -> str:
        target_name, arch = self.gpu.name, self.gpu.arch
        sched = self.schedule
        n_sms, threads, smem_bytes = (sched.num_sms.value.data, sched.block_threads.value.data,
                                     sched.smem_bytes.value.data)
        n_tasks = self.n_tasks
        if self.queue:
            sm_bodies = self.queue_function() + [""]
        else:
            sm_bodies = [line for sm in sched.sms for line in self.sm_function(sm) + [""]]
        out = [f"// kernel.cu - generated by adamk {__version__}; regenerate with `adamk compile`, do not edit.",
               f"// Target {target_name} (sm_{arch}): {n_sms} blocks x {threads} threads ({CONSUMER_WARPS} consumer "
               f"warps + {producer_warps(arch)} producer), {smem_bytes} B dynamic shared memory, {n_tasks} tasks.",
               "// The compiler's facts, the device library, then the schedule: one function per SM.", "",
               f"#define ADAMK_PROFILE {int(self.profile)}",
               f"#define ADAMK_CONSUMER_WARPS {CONSUMER_WARPS}   // adamk/config.py CONSUMER_WARPS",
               f"#define ADAMK_PRODUCER_WARPS {producer_warps(arch)}   // adamk/config.py producer_warps",
               f"#define ADAMK_MAX_WAITS {MAX_WAITS}   // adamk/codegen/cuda.py MAX_WAITS",
               f"#define ADAMK_MAX_TILE_ROWS {MAX_TILE_ROWS}   // adamk/config.py MAX_TILE_ROWS",
               f"#define ADAMK_TRACE_SLOTS {len(TRACE_SLOTS)}   // adamk/codegen/cuda.py TRACE_SLOTS",
               f"#define ADAMK_ATTENTION_ROWS_PER_LANE {smem.ATTENTION_ROWS_PER_LANE}"
               "   // adamk/smem.py ATTENTION_ROWS_PER_LANE",
               ""]
        for h in HEADERS:
            text = (KERNELS_DIR / h).read_text()
            text = re.sub(r'^#include "[^"]+"\n', "", text, flags=re.M).replace("#pragma once\n", "")
            out += [f"// ===== csrc/kernels/{h} =====", text.rstrip(), ""]
        out += ["// ===== generated schedule =====", "namespace adamk {", "",
                f"static_assert(kThreads == {threads}, \"adamk/config.py block_threads\");", "",
                *([f"// Every SM's ring: {self.plan.depth} pages of {self.plan.slot_bytes} B, {self.in_flight} "
                   "copied at once (smem.SmPlan).",
                   f"using {RING} = Ring<{self.plan.depth}, {self.plan.slot_bytes}, {self.in_flight}>;",
                   f"static_assert({RING}::kBytes == {self.plan.work_offset}, \"smem model: the ring\");", "",
                   "// The pages each SM streams one at a time (codegen/cuda.py one_at_a_time; ring.cuh).",
                   f"__constant__ int kOneAtATime[{len(self.one_at_a_time)}] = "
                   f"{{{', '.join(map(str, self.one_at_a_time))}}};", ""]
                  if self.plan.depth else []),
                "// Device pointers, in the order of the adamk.buffer ops (the host fills them in that order).",
                "struct Buffers {", *self.buffer_fields(), "};", "",
                "enum Counter : int {",
                *[f"  {self.enumerator[n]} = {c.index.value.data},  // {c_comment(n)}: {c.per_step.value.data} signals per step"
                  for n, c in self.counters.items()], "};", "",
                ]
        tables_at = len(out)
        out += ["// The functions of each op: its constants filled in.",
                *[line for _, body in self.functions.values() for line in body + [""]]]
        out += ["// The distinct sets of waits of the schedule's tasks.",
                f"__device__ const Waits kWaits[{len(self.waits)}] = {{",
                *[f"  {literal}," for literal in self.waits], "};", ""]
        out += sm_bodies
        params = ",\n    ".join(p for _, p in KERNEL_PARAMS)
        out += ["}  // namespace adamk", "",
                f'extern "C" __global__ void __launch_bounds__({threads}, 1)',
                f"{KERNEL_NAME}(\n    {params}) {{",
                "  // This launch's epoch: one past the block's last, which the block keeps on the device, so",
                "  // launches need no new argument (a CUDA graph replays one launch for every step).",
                "  const u32 epoch = epochs[blockIdx.x] + 1u;",
                "  // Past the last epoch the counters would wrap: every block refuses the launch (the host",
                "  // zeroes the state first; a graph replayed past it ends here, with the error recorded).",
                f"  if (epoch > {self.max_epoch}u) {{",
                f"    if (threadIdx.x == 0) adamk::report_error(adamk::Step{{counters, err, trace, pos, epoch, timeout_ns}},",
                f"                                              adamk::kEpochsExhausted, 0, 0, {self.max_epoch}u, epoch);",
                "    return;",
                "  }",
                *self.entry(n_tasks, n_sms),
                "  __syncthreads();   // every thread of the block has read this launch's epoch",
                "  if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;", "}", ""]
        tables = [f"__constant__ float {name}[{len(vals)}] = {{{', '.join(f32_literal(v) for v in vals)}}};"
                  for vals, name in self.tables.items()]
        asserts = ["// The device library's shared-memory layouts are the model's (adamk/smem.py):",
                   *sorted(self.asserts), ""] if self.asserts else []
        out[tables_at:tables_at] = asserts + tables + ([""] if tables else [])
        return "\n".join(out)

    def entry(self, n_tasks: int, n_sms: int) -> list[str]:
        """The launch's Step and the dispatch on the block index. A whole model reads its position
        from the device, the slot of this epoch's parity (the last step's argmax wrote it there),
        so launches and graph replays need no host; a position outside the KV cache is an error."""
        dispatch = self.queue_loop(n_tasks, n_sms) if self.queue else [
            "  switch (blockIdx.x) {", *[f"    case {i}: adamk::sm_{i}(s, *b); break;" for i in range(n_sms)], "  }"]
        if not self.whole:
            return ["  const adamk::Step s{counters, err, trace, pos, epoch, timeout_ns};", *dispatch]
        max_seq = self.buffers["tokens"].shape.get_values()[-1] - 1   # [batch, max_seq_len + 1]
        if self.batch == 1:
            head = ["  // A whole model's position: on the device, in the slot of this epoch's parity (the `pos`",
                    "  // argument is not read).",
                    f"  const int at = b->{self.position_field}[epoch & 1u];"]
        else:       # the first sequence's position outside the KV cache, else sequence 0's
            head = ["  // A whole model's positions: on the device, each sequence's in the slot of this epoch's",
                    "  // parity of its row (its tasks read their own: at_position; the `pos` argument is not read).",
                    f"  int at = b->{self.position_field}[epoch & 1u];",
                    f"  for (int seq = 0; seq < {self.batch}; ++seq) {{",
                    f"    const int p = b->{self.position_field}[seq * 2 + (epoch & 1u)];",
                    f"    if (p < 0 || p >= {max_seq}) {{",
                    "      at = p;",
                    "      break;",
                    "    }",
                    "  }"]
        return [*head,
                "  const adamk::Step s{counters, err, trace, at, epoch, timeout_ns};",
                f"  if (at < 0 || at >= {max_seq}) {{",
                f"    if (threadIdx.x == 0) adamk::report_error(s, adamk::kBadPosition, 0, 0, {max_seq}, (u32)at);",
                "  } else {",
                *["  " + line for line in dispatch],
                "  }"]

    def queue_loop(self, n_tasks: int, n_sms: int) -> list[str]:
        """Blocks take task numbers from one atomic counter (after the schedule's counters) until
        they run out; each launch adds n_tasks + one failed take per block to it, so the epoch
        gives this launch's base. The ticket goes to the block through a per-block global slot."""
        queue = len(self.counters)
        return [f"  u32* queue = counters + {queue};        // the work queue's counter",
                f"  u32* ticket = counters + {queue + 1} + blockIdx.x;",
                f"  const u32 base = (epoch - 1u) * {n_tasks + n_sms}u;",
                *([f"  adamk::{RING}::init(s);"] if self.plan.depth else []),
                "  int page = 0;      // the ring page both roles are at",
                "  for (;;) {",
                "    if (threadIdx.x == 0) *(volatile u32*)ticket = atomicAdd(queue, 1u) - base;   // chooses work",
                "    __syncthreads();",
                "    const u32 t = *(volatile u32*)ticket;",
                "    __syncthreads();",
                f"    if (t >= {n_tasks}u) break;",
                "    page += adamk::run_task(s, *b, t, page);",
                "  }",
                *([f"  if (adamk::is_producer()) adamk::{RING}::drain(s, page);"] if self.plan.depth else [])]


def emit_cuda(module: ModuleOp, gpu: GPU, profile: bool = False, queue: bool = False) -> str:
    """`queue=True`: the dynamic work-queue variant of the ablation instead of the schedule's
    straight-line programs (the schedule's placement is then not used)."""
    return _Emitter(module, gpu, profile, queue).emit()
