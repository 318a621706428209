"""Emit the persistent kernel's CUDA C++ from schedule-level IR.

The output is one self-contained, readable `.cu`: the device library headers it uses
(csrc/kernels/*.cuh, pasted in include order so the file compiles on its own), then the
generated part: the `Buffers` pointer table (one field per `adamk.buffer`, in IR order:
the host fills it in the same order), one enumerator per counter (identifiers are numbered;
model names appear only in comments, escaped by adamk/names.py), static_asserts that the
device library's shared-memory layouts are the model's (smem.py), RoPE tables, and one
function per SM that is a straight line of weight staging, waits, task calls and signals,
with the shared-memory offsets of the SM's plan. The kernel entry only dispatches on
blockIdx.x.
"""
from __future__ import annotations

import re

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from .. import __version__
from ..names import c_comment
from ..dialects.schedule import CounterOp, ExecOp, SignalOp, WaitOp
from ..dialects.task import BufferOp
from .. import smem
from ..paths import KERNELS_DIR
from ..search.validate import schedule_of
from ..targets import GPU

KERNEL_NAME = "adamk_decode_step"
HEADERS = ("common.cuh", "sync.cuh", "linear.cuh", "attention.cuh")
CTYPES = {"bf16": "bf16_t", "f32": "float"}
PROLOGUES = {"none": "kPlain", "rmsnorm": "kRmsNorm", "silu_mul": "kSiluMul"}
MAX_WAITS = 4   # sync.cuh's kMaxWaits
KERNEL_ARGS = ("buffers", "counters", "error_record", "trace", "pos", "epoch", "timeout_ns")


def f32_literal(v: float) -> str:
    s = str(np.float32(v))
    return s + ("f" if any(c in s for c in ".e") else ".f")


def _with_waits(ops):
    """(op, the waits just before it) for each task and signal of an SM's program; waits
    after an SM's last task guard nothing and are dropped."""
    waits: list[WaitOp] = []
    for op in ops:
        if isinstance(op, WaitOp):
            waits.append(op)
        elif isinstance(op, ExecOp):
            yield op, waits
            waits = []
        elif isinstance(op, SignalOp):
            yield op, []


def _signature(name: str, params: str) -> list[str]:
    """The opening line of a per-op task function: what every kind takes, then its own `params`."""
    return [f"__device__ __noinline__ void {name}(const Step& s, const Buffers& b, const Waits& w, int task, "
            f"{params}) {{"]


class _Emitter:
    def __init__(self, module: ModuleOp, gpu: GPU, profile: bool = False, queue: bool = False):
        self.profile, self.queue = profile, queue
        self.gpu = gpu
        self.buffers = {b.sym_name.data: b for b in module.ops if isinstance(b, BufferOp)}
        self.counters = {c.sym_name.data: c for c in module.ops if isinstance(c, CounterOp)}
        self.schedule = schedule_of(module)
        self.tables: dict[tuple, str] = {}     # rope inv_freq values -> __constant__ name
        self.asserts: set[str] = set()         # the device layouts agree with smem.py, per instantiation
        self.waits: dict[str, int] = {"{0, {}, {}}": 0}   # Waits literal -> index in kWaits
        self.functions: dict[tuple, tuple] = {}           # (kind, op) -> (function name, first task, lines)
        # Identifiers are numbered, never made from names (names are model data: adamk/names.py).
        self.field = {name: f"buf{i}" for i, name in enumerate(self.buffers)}
        self.enumerator = {name: f"counter{c.index.value.data}" for name, c in self.counters.items()}
        self.op_number: dict[str, int] = {}               # op (a task's source) -> n of its functions' op<n>

    def ptr(self, name: str | None, ctype_if_none: str = "float") -> str:
        if name is None:
            return f"(const {ctype_if_none}*)nullptr"
        return f"b.{self.field[name]}"

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

    def op_function(self, op: ExecOp) -> str:
        """The name of the function that runs `op`'s kind of task for its op. Every task of one op
        shares the op's constants (buffers, K, tiling), so they live in one small generated
        function per op and a call site passes only what varies: the task's tile and part and
        its plan's shared-memory offsets."""
        kind, source = op.kind.data, op.source.data
        key = (kind, source)
        if key in self.functions:
            first = self.functions[key][1]
            if (first.buffers, first.params, first.k_split) != (op.buffers, op.params, op.k_split):
                raise ValueError(f"tasks {first.sym_name.data} and {op.sym_name.data} of one op differ in constants")
            return self.functions[key][0]
        number = self.op_number.setdefault(source, len(self.op_number))
        name = f"{kind}_op{number}"
        buf = lambda role, ctype="float": self.ptr(op.buffer(role), ctype)
        split = op.k_split.value.data
        if kind == "linear":
            k, n, rows, chunk = (op.param(p) for p in ("K", "N", "tile_rows", "k_chunk"))
            eps = op.param("eps")
            out = buf("out") + (f" + k_index * {n}" if split > 1 else "")
            body = [f"// op{number}: {c_comment(source)}",
                    *_signature(name, "int stage_offset, int work_offset, int row_begin, int row_end, int k_index"),
                    f"  const int k0 = k_index * {chunk};",
                    f"  linear_task<{chunk}, {rows}, {PROLOGUES[op.param('prologue')]}, "
                    f"{self.schedule.stages.value.data}>(s, w, task, stage_offset, work_offset, {out}, {buf('input')}, "
                    f"{buf('input2')}, {buf('norm_weight', 'bf16_t')}, {f32_literal(eps if eps is not None else 0.0)}, "
                    f"{buf('bias', 'bf16_t')}, {buf('residual')}, {k}, k0, min({chunk}, {k} - k0), row_begin, row_end);",
                    "}",
                    f"__device__ __noinline__ void stage_op{number}(const Step& s, const Buffers& b, int task, "
                    "int stage_offset, int row_begin, int row_end, int k_index) {",
                    f"  const int k0 = k_index * {chunk};",
                    f"  stage_weights<{rows}, {chunk}>(s, stage_offset, {buf('weight', 'bf16_t')}, {k}, row_begin, "
                    f"row_end, k0, min({chunk}, {k} - k0), task);",
                    "}"]
            self.asserts.add(f"static_assert(WeightStage<{rows}, {chunk}>::kBytes == "
                             f"{smem.linear_stage_bytes(rows, chunk)}, \"smem model: linear stage\");")
            self.asserts.add(f"static_assert(LinearWork<{chunk}>::kBytes == {smem.linear_work_bytes(chunk)}, "
                             "\"smem model: linear work area\");")
        elif kind == "linear_combine":
            body = [f"// op{number}: {c_comment(source)}", *_signature(name, "int row_begin, int row_end"),
                    f"  linear_combine(s, w, task, {buf('out')}, {buf('partial')}, {op.param('N')}, {split}, "
                    f"{buf('bias', 'bf16_t')}, {buf('residual')}, row_begin, row_end);",
                    "}"]
        elif kind == "attention":
            hd = op.param("head_dim")
            inv = op.params.data.get("rope_inv_freq")
            table = self.rope_table(inv.get_values()) if inv is not None else "(const float*)nullptr"
            args = ", ".join([buf(r) for r in ("out", "q", "k", "v", "k_cache", "v_cache")]
                             + [table, f32_literal(op.param("scale"))])
            body = [f"// op{number}: {c_comment(source)}", *_signature(name, "int work_offset, int q_head, int split"),
                    f"  attention_task<{hd}>(s, w, task, work_offset, {args}, q_head, {op.param('group')}, "
                    f"{op.param('max_seq_len')}, {op.param('num_heads')}, split, {split});",
                    "}"]
            self.asserts.add(f"static_assert(AttentionWork<{hd}>::kBytes == {smem.attention_work_bytes(hd)}, "
                             "\"smem model: attention work area\");")
        elif kind == "attention_combine":
            body = [f"// op{number}: {c_comment(source)}", *_signature(name, "int head_begin, int head_end"),
                    f"  attention_combine<{op.param('head_dim')}>(s, w, task, {buf('out')}, {buf('partial')}, "
                    f"{op.param('num_heads')}, {split}, head_begin, head_end);",
                    "}"]
        else:
            raise ValueError(f"no task body for kind {c_comment(kind)}")
        self.functions[key] = (name, op, body)
        return name

    def task_call(self, op: ExecOp, waits: list[WaitOp], plan: smem.SmPlan, stage: int | None) -> list[str]:
        begin, end = op.tile_range
        task_id, kind = op.task_id.value.data, op.kind.data
        fn, w = self.op_function(op), self.waits_ref(waits, task_id)
        part = op.k_index.value.data
        if kind == "linear":
            k0, k_len = op.k_range
            args = [plan.stage_offset(stage), plan.work_offset, begin, end, part]
            what = f"rows [{begin}, {end}) x K [{k0}, {k0 + k_len})"
        elif kind == "attention":
            args, what = [plan.work_offset, begin, part], f"query head {begin}, part {part}"
        else:
            args, what = [begin, end], f"[{begin}, {end}), sum of parts"
        call = [f"  {fn}(s, b, {w}, {task_id}, {', '.join(map(str, args))});  // {c_comment(op.sym_name.data)}: {what}"]
        if self.profile:
            marks = [f"  trace_mark(s, {task_id}, 0);", f"  trace_mark(s, {task_id}, 1);"] if not waits else []
            call = marks + call + [f"  trace_mark(s, {task_id}, 2);"]
        return call

    def stage_weights(self, op: ExecOp | None, plan: smem.SmPlan, stage: int) -> str:
        """Start the copy of a linear task's weights into its stage; one cp.async group either way."""
        if op is None:
            return "  commit_group();  // nothing left to stage: one group per linear task all the same"
        self.op_function(op)
        begin, end = op.tile_range
        args = [op.task_id.value.data, plan.stage_offset(stage), begin, end, op.k_index.value.data]
        return (f"  stage_op{self.op_number[op.source.data]}(s, b, {', '.join(map(str, args))});"
                f"  // -> stage {stage % plan.depth}: weights of task {op.task_id.value.data}")

    def sm_function(self, sm) -> list[str]:
        plan = self.schedule.plan(sm)
        linears = [op for op in sm.body.block.ops if isinstance(op, ExecOp) and op.kind.data == "linear"]
        ahead = plan.depth - 1    # stages in flight beyond the running task's
        lines = [f"__device__ __noinline__ void sm_{sm.index.value.data}(const Step& s, const Buffers& b) {{"]
        if linears:
            lines.append(f"  // shared memory: {plan.depth} weight stages x {plan.slot_bytes} B, work area at "
                         f"{plan.work_offset} ({plan.work_bytes} B)")
            lines += [self.stage_weights(linears[i] if i < len(linears) else None, plan, i) for i in range(ahead)]
        next_linear = 0           # index of the next linear task in `linears`
        for op, waits in _with_waits(sm.body.block.ops):   # waits run in the task's body, after it issues
            if isinstance(op, SignalOp):                     # the next weight stage
                lines.append(f"  signal_counter(s, {self.enumerator[op.counter.data]}, {op.count.value.data}u);"
                             f"  // {c_comment(op.counter.data)}")
                continue
            while len(waits) > MAX_WAITS:    # more producers than one task body takes: wait for some first
                head, waits = waits[:MAX_WAITS], waits[MAX_WAITS:]
                lines.append(f"  wait_all(s, {self.waits_ref(head, op.task_id.value.data)}, {op.task_id.value.data});")
            stage = None
            if op.kind.data == "linear":
                stage, next_linear = next_linear, next_linear + 1
                nxt = stage + ahead
                if ahead:
                    lines.append(self.stage_weights(linears[nxt] if nxt < len(linears) else None, plan, nxt))
            lines += self.task_call(op, waits, plan, stage)
        return lines + ["}"]

    def queue_function(self) -> list[str]:
        """The dynamic work-queue variant (for the ablation only): one function that runs task
        t, whichever block takes it. Each task stages its own weights (one stage), waits for
        all of its producer ops, runs, and signals its op's counter."""
        execs = sorted((o for sm in self.schedule.sms for o in sm.body.block.ops if isinstance(o, ExecOp)),
                       key=lambda o: o.task_id.value.data)
        plan = smem.SmPlan(1, max((o.stage_bytes.value.data for o in execs), default=0),
                           max((o.work_bytes.value.data for o in execs), default=0))
        waits_of = {op.task_id.value.data: waits for sm in self.schedule.sms      # it waits before every task
                    for op, waits in _with_waits(sm.body.block.ops) if isinstance(op, ExecOp)}
        lines = ["__device__ __noinline__ void run_task(const Step& s, const Buffers& b, u32 t) {", "  switch (t) {"]
        for o in execs:
            tid = o.task_id.value.data
            lines.append(f"    case {tid}: {{")
            if o.kind.data == "linear":
                lines.append("  " + self.stage_weights(o, plan, 0))
            lines += ["  " + line for line in self.task_call(o, waits_of[tid], plan, 0)]
            if o.source.data + ".done" in self.counters:
                lines.append(f"      signal_counter(s, {self.enumerator[o.source.data + '.done']}, 1u);")
            lines.append("      break;\n    }")
        return lines + ["  }", "}"]

    def emit(self) -> str:
        target_name, arch = self.gpu.name, self.gpu.arch
        sched = self.schedule
        n_sms, threads, smem_bytes = (sched.num_sms.value.data, sched.block_threads.value.data,
                                     sched.smem_bytes.value.data)
        n_tasks = sum(isinstance(o, ExecOp) for sm in sched.sms for o in sm.body.block.ops)
        if self.queue:
            sm_bodies = self.queue_function() + [""]
        else:
            sm_bodies = [line for sm in sched.sms for line in self.sm_function(sm) + [""]]
        out = [f"// kernel.cu - generated by adamk {__version__}; regenerate with `adamk compile`, do not edit.",
               f"// Target {target_name} (sm_{arch}): {n_sms} blocks x {threads} threads, {smem_bytes} B dynamic shared memory, "
               f"{n_tasks} tasks.",
               "// The device library follows, then the schedule: one straight-line function per SM.", "",
               f"#define ADAMK_PROFILE {int(self.profile)}", ""]
        for h in HEADERS:
            text = (KERNELS_DIR / h).read_text()
            text = re.sub(r'^#include "[^"]+"\n', "", text, flags=re.M).replace("#pragma once\n", "")
            out += [f"// ===== csrc/kernels/{h} =====", text.rstrip(), ""]
        out += ["// ===== generated schedule =====", "namespace adamk {", "",
                "// Device pointers, in the order of the adamk.buffer ops (the host fills them in that order).",
                "struct Buffers {", *self.buffer_fields(), "};", "",
                "enum Counter : int {",
                *[f"  {self.enumerator[n]} = {c.index.value.data},  // {c_comment(n)}: {c.per_step.value.data} signals per step"
                  for n, c in self.counters.items()], "};", "",
                ]
        tables_at = len(out)
        out += ["// One function per op and kind of task: the op's constants filled in.",
                *[line for _, _, body in self.functions.values() for line in body + [""]]]
        out += ["// The distinct sets of waits of the schedule's tasks.",
                f"__device__ const Waits kWaits[{len(self.waits)}] = {{",
                *[f"  {literal}," for literal in self.waits], "};", ""]
        out += sm_bodies
        out += ["}  // namespace adamk", "",
                f'extern "C" __global__ void __launch_bounds__({threads}, 1)',
                f"{KERNEL_NAME}(const adamk::Buffers* __restrict__ b, u32* counters, adamk::ErrorRecord* err,",
                "                  u64* trace, int pos, u32 epoch, u64 timeout_ns) {",
                "  extern __shared__ __align__(16) unsigned char smem[];",
                "  const adamk::Step s{counters, err, trace, pos, epoch, timeout_ns, smem};",
                *(self.queue_loop(n_tasks, n_sms) if self.queue else [
                    "  switch (blockIdx.x) {",
                    *[f"    case {i}: adamk::sm_{i}(s, *b); break;" for i in range(n_sms)],
                    "  }"]), "}", ""]
        tables = [f"__constant__ float {name}[{len(vals)}] = {{{', '.join(f32_literal(v) for v in vals)}}};"
                  for vals, name in self.tables.items()]
        asserts = ["// The device library's shared-memory layouts are the model's (adamk/smem.py):",
                   *sorted(self.asserts), ""] if self.asserts else []
        out[tables_at:tables_at] = asserts + tables + ([""] if tables else [])
        return "\n".join(out)


    def queue_loop(self, n_tasks: int, n_sms: int) -> list[str]:
        """Blocks take task numbers from one atomic counter (after the schedule's counters) until
        they run out; each launch adds n_tasks + one failed take per block to it, so the epoch
        gives this launch's base. The ticket goes to the block through a per-block global slot."""
        queue = len(self.counters)
        return [f"  u32* queue = counters + {queue};        // the work queue's counter",
                f"  u32* ticket = counters + {queue + 1} + blockIdx.x;",
                f"  const u32 base = (epoch - 1u) * {n_tasks + n_sms}u;",
                "  for (;;) {",
                "    if (threadIdx.x == 0) *(volatile u32*)ticket = atomicAdd(queue, 1u) - base;   // chooses work",
                "    __syncthreads();",
                "    const u32 t = *(volatile u32*)ticket;",
                "    __syncthreads();",
                f"    if (t >= {n_tasks}u) break;",
                "    adamk::run_task(s, *b, t);",
                "  }"]


def emit_cuda(module: ModuleOp, gpu: GPU, profile: bool = False, queue: bool = False) -> str:
    """`queue=True`: the dynamic work-queue variant of the ablation instead of the schedule's
    straight-line programs (the schedule's placement is then not used)."""
    return _Emitter(module, gpu, profile, queue).emit()
