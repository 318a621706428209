"""Emit the persistent kernel's CUDA C++ from schedule-level IR.

The output is one self-contained, readable `.cu`: the device library headers it uses
(csrc/kernels/*.cuh, pasted in include order so the file compiles on its own), then the
generated part: the `Buffers` pointer table (one field per `adamk.buffer`, in IR order:
the host fills it in the same order), one enumerator per counter, RoPE tables, and one
function per SM that is a straight line of waits, task calls and signals. The kernel
entry only dispatches on blockIdx.x.
"""
from __future__ import annotations

import re

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from .. import __version__
from ..dialects.schedule import CounterOp, ExecOp, SignalOp, WaitOp
from ..dialects.task import BufferOp
from ..paths import KERNELS_DIR
from ..search.validate import schedule_of
from ..targets import GPU

KERNEL_NAME = "adamk_decode_step"
HEADERS = ("common.cuh", "sync.cuh", "linear.cuh", "attention.cuh")
CTYPES = {"bf16": "bf16_t", "f32": "float"}
PROLOGUES = {"none": "kPlain", "rmsnorm": "kRmsNorm", "silu_mul": "kSiluMul"}
MAX_WAITS = 4   # sync.cuh's kMaxWaits
KERNEL_ARGS = ("buffers", "counters", "error_record", "trace", "pos", "epoch", "timeout_ns")


def c_name(name: str) -> str:
    return re.sub(r"\W", "_", name)


def f32_literal(v: float) -> str:
    s = str(np.float32(v))
    return s + ("f" if any(c in s for c in ".e") else ".f")


class _Emitter:
    def __init__(self, module: ModuleOp, gpu: GPU, profile: bool = False):
        self.profile = profile
        # bytes of upcoming weights each SM keeps in flight into L2: its share of a quarter of L2
        self.prefetch_budget = min(256 * 1024, gpu.l2_bytes // 4 // gpu.num_sms)
        self.gpu = gpu
        self.buffers = {b.sym_name.data: b for b in module.ops if isinstance(b, BufferOp)}
        self.counters = {c.sym_name.data: c for c in module.ops if isinstance(c, CounterOp)}
        self.schedule = schedule_of(module)
        self.tables: dict[tuple, str] = {}     # rope inv_freq values -> __constant__ name
        names = [c_name(n) for n in self.buffers]
        if len(set(names)) != len(names):
            raise ValueError(f"buffer names collide once made C identifiers: {sorted(names)}")

    def ptr(self, name: str | None, ctype_if_none: str = "float") -> str:
        if name is None:
            return f"(const {ctype_if_none}*)nullptr"
        return f"b.{c_name(name)}"

    def buffer_fields(self) -> list[str]:
        lines = []
        for name, b in self.buffers.items():
            const = "const " if b.role.data in ("weight", "input") else ""
            shape = list(b.shape.get_values())
            lines.append(f"  {const}{CTYPES[b.dtype.data]}* {c_name(name)};  // {b.role.data} '{name}' {shape}")
        return lines

    def rope_table(self, values) -> str:
        key = tuple(values)
        if key not in self.tables:
            self.tables[key] = f"rope_inv_freq_{len(self.tables)}"
        return self.tables[key]

    def waits_literal(self, waits: list[WaitOp], task_id: int) -> str:
        if len(waits) > MAX_WAITS:
            raise ValueError(f"task {task_id} waits on {len(waits)} counters; the device library takes {MAX_WAITS}")
        counters = ", ".join(c_name(w.counter.data) for w in waits)
        counts = ", ".join(f"{w.count.value.data}u" for w in waits)
        return f"Waits{{{len(waits)}, {{{counters}}}, {{{counts}}}, {task_id}}}"

    def task_call(self, op: ExecOp, waits: list[WaitOp]) -> list[str]:
        begin, end = op.tile_range
        task_id = op.task_id.value.data
        head = f"  // task {task_id}: {op.sym_name.data}"
        w = self.waits_literal(waits, task_id)
        if op.kind.data == "linear":
            k = op.param("K")
            eps = op.param("eps")
            args = ["s", w, self.ptr(op.buffer("out")), self.ptr(op.buffer("weight")), self.ptr(op.buffer("input")),
                    self.ptr(op.buffer("input2")), self.ptr(op.buffer("norm_weight"), "bf16_t"),
                    f32_literal(eps if eps is not None else 0.0), self.ptr(op.buffer("bias"), "bf16_t"),
                    self.ptr(op.buffer("residual")), str(begin), str(end)]
            tmpl = f"{k}, {op.param('tile_rows')}, {PROLOGUES[op.param('prologue')]}"
            call = [f"{head}, rows [{begin}, {end}) of {op.source.data}",
                    f"  linear_task<{tmpl}>({', '.join(args)});"]
        elif op.kind.data == "attention":
            inv = op.params.data.get("rope_inv_freq")
            table = self.rope_table(inv.get_values()) if inv is not None else "(const float*)nullptr"
            args = ["s", w] + [self.ptr(op.buffer(r)) for r in ("out", "q", "k", "v", "k_cache", "v_cache")]
            args += [table, f32_literal(op.param("scale")), str(begin), str(op.param("group")),
                     str(op.param("max_seq_len"))]
            call = [f"{head}, query head {begin} of {op.source.data}",
                    f"  attention_task<{op.param('head_dim')}>({', '.join(args)});"]
        else:
            raise ValueError(f"no task body for kind '{op.kind.data}'")
        if self.profile:
            marks = [f"  trace_mark(s, {task_id}, 0);", f"  trace_mark(s, {task_id}, 1);"] if not waits else []
            call = call[:1] + marks + call[1:] + [f"  trace_mark(s, {task_id}, 2);"]
        return call

    def weight_bytes(self, op: ExecOp) -> int:
        begin, end = op.tile_range
        return (end - begin) * op.param("K") * 2 if op.kind.data == "linear" else 0

    def prefetch(self, op: ExecOp) -> str:
        begin, end = op.tile_range
        k = op.param("K")
        return (f"  prefetch_l2({self.ptr(op.buffer('weight'))} + {begin * k}, {(end - begin) * k * 2});"
                f"  // L2 <- weights of task {op.task_id.value.data}")

    def sm_function(self, sm) -> list[str]:
        lines = [f"__device__ __noinline__ void sm_{sm.index.value.data}(const Step& s, const Buffers& b) {{"]
        waits: list[WaitOp] = []
        execs = [op for op in sm.body.block.ops if isinstance(op, ExecOp)]
        ahead = 1           # execs[:ahead] have their weights requested already (the first loads its own)
        for op in sm.body.block.ops:
            if isinstance(op, WaitOp):
                waits.append(op)          # a task's waits run inside its body, after its weight loads
            elif isinstance(op, ExecOp):
                # Keep the weights of the next tasks streaming into L2 while this one runs, up
                # to this SM's share of the prefetch budget: DRAM never idles at task boundaries.
                i = execs.index(op)
                while ahead < len(execs) and (ahead == i + 1 or sum(
                        self.weight_bytes(t) for t in execs[i + 1:ahead + 1]) <= self.prefetch_budget):
                    if self.weight_bytes(execs[ahead]):
                        lines.append(self.prefetch(execs[ahead]))
                    ahead += 1
                lines += self.task_call(op, waits)
                waits = []
            elif isinstance(op, SignalOp):
                lines.append(f"  signal_counter(s, {c_name(op.counter.data)}, {op.count.value.data}u);")
        return lines + ["}"]

    def emit(self) -> str:
        target_name, arch = self.gpu.name, self.gpu.arch
        sched = self.schedule
        n_sms, threads, smem = (sched.num_sms.value.data, sched.block_threads.value.data, sched.smem_bytes.value.data)
        n_tasks = sum(isinstance(o, ExecOp) for sm in sched.sms for o in sm.body.block.ops)
        sm_bodies = [line for sm in sched.sms for line in self.sm_function(sm) + [""]]
        out = [f"// kernel.cu - generated by adamk {__version__}; regenerate with `adamk compile`, do not edit.",
               f"// Target {target_name} (sm_{arch}): {n_sms} blocks x {threads} threads, {smem} B dynamic shared memory, "
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
                *[f"  {c_name(n)} = {c.index.value.data},  // {c.per_step.value.data} signals per step"
                  for n, c in self.counters.items()], "};", "",
                ]
        tables_at = len(out)
        out += sm_bodies
        out += ["}  // namespace adamk", "",
                f'extern "C" __global__ void __launch_bounds__({threads}, 1)',
                f"{KERNEL_NAME}(const adamk::Buffers* __restrict__ b, u32* counters, adamk::ErrorRecord* err,",
                "                  u64* trace, int pos, u32 epoch, u64 timeout_ns) {",
                "  extern __shared__ __align__(16) float smem[];",
                "  const adamk::Step s{counters, err, trace, pos, epoch, timeout_ns, smem};",
                "  switch (blockIdx.x) {",
                *[f"    case {i}: adamk::sm_{i}(s, *b); break;" for i in range(n_sms)],
                "  }", "}", ""]
        tables = [f"__constant__ float {name}[{len(vals)}] = {{{', '.join(f32_literal(v) for v in vals)}}};"
                  for vals, name in self.tables.items()]
        out[tables_at:tables_at] = tables + ([""] if tables else [])
        return "\n".join(out)


def emit_cuda(module: ModuleOp, gpu: GPU, profile: bool = False) -> str:
    return _Emitter(module, gpu, profile).emit()
