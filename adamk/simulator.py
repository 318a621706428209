"""CPU simulator: executes schedule-level IR task by task in numpy (float32).

It walks the SMs' programs with the schedule validator's interleaving (so a deadlock is
found the same way), and runs each `adamk.exec` with the same tiling as the GPU: a linear
task computes only its rows (and its K-part's columns) from the prologue-applied input
vector, an attention task handles one query head (or its part of the sequence), the
group's first rotating and appending k/v at `pos`; combine tasks add the parts in order.
Activations start as NaN, so a read of something no task wrote shows up in the result. It
is the first oracle for the passes, before any GPU.
"""
from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from .dialects.schedule import ExecOp
from .dialects.task import BufferOp
from .search.validate import walk


EMPTY = np.float32(-1e30)   # max score of a part with no positions (attention.cuh kEmpty)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _rope(x: np.ndarray, inv_freq: np.ndarray, pos: int) -> np.ndarray:
    """Rotate-half RoPE of one head vector x[head_dim]."""
    half = x.shape[-1] // 2
    angle = np.float32(pos) * inv_freq.astype(np.float32)
    cos = np.concatenate([np.cos(angle)] * 2).astype(np.float32)
    sin = np.concatenate([np.sin(angle)] * 2).astype(np.float32)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Simulator:
    def __init__(self, module: ModuleOp, weights: dict[str, np.ndarray]):
        self.module = module
        self.decls = {b.sym_name.data: b for b in module.ops if isinstance(b, BufferOp)}
        self.mem: dict[str, np.ndarray] = {}
        for name, b in self.decls.items():
            shape = tuple(b.shape.get_values())
            if b.role.data == "weight":
                w = np.asarray(weights[name], dtype=np.float32)
                if w.shape != shape:
                    raise ValueError(f"weight '{name}' has shape {w.shape}, the schedule expects {shape}")
                self.mem[name] = w
            elif b.role.data == "kv_cache":
                self.mem[name] = np.zeros(shape, np.float32)
        self.counters = None
        self.epoch = 0

    def step(self, x: np.ndarray, pos: int) -> np.ndarray:
        for name, b in self.decls.items():
            if b.role.data in ("activation", "output"):
                self.mem[name] = np.full(tuple(b.shape.get_values()), np.nan, np.float32)
        self.mem["x"] = np.asarray(x, np.float32).reshape(tuple(self.decls["x"].shape.get_values()))
        self.pos = int(pos)
        self.epoch += 1
        self.counters = walk(self.module, self.exec, epoch=self.epoch, counters=self.counters)
        return self.mem["y"].copy()

    def exec(self, op: ExecOp):
        getattr(self, f"_{op.kind.data}")(op)

    def _vec(self, op: ExecOp, role: str) -> np.ndarray:
        return self.mem[op.buffer(role)].reshape(-1)

    def _linear(self, op: ExecOp):
        begin, end = op.tile_range
        k0, k_len = op.k_range
        prologue = op.param("prologue")
        if prologue == "attn_combine":              # the parts of a split attention, merged as the kernel
            state = self.mem[op.buffer("input")]
            xs = _merge_parts(state, op.param("head_dim")).reshape(-1)
        else:
            xs = self._vec(op, "input").astype(np.float32)
        if prologue == "silu_mul":
            xs = _silu(xs) * self._vec(op, "input2")
        elif prologue == "rmsnorm":
            eps = np.float32(op.param("eps"))
            xs = xs * (np.float32(1.0) / np.sqrt(np.mean(xs * xs, dtype=np.float32) + eps)) * self._vec(op, "norm_weight")
        w = self.mem[op.buffer("weight")][begin:end, k0:k0 + k_len]
        acc = (w @ xs[k0:k0 + k_len]).astype(np.float32)
        if op.k_split.value.data > 1:                 # a part: its row of the partial sums
            self.mem[op.buffer("out")][op.k_index.value.data, begin:end] = acc
            return
        self._finish(op, begin, end, acc)

    def _finish(self, op: ExecOp, begin: int, end: int, acc: np.ndarray):
        if op.buffer("bias"):
            acc = acc + self._vec(op, "bias")[begin:end]
        if op.buffer("residual"):
            acc = acc + self._vec(op, "residual")[begin:end]
        self._vec(op, "out")[begin:end] = acc

    def _linear_combine(self, op: ExecOp):
        begin, end = op.tile_range
        acc = np.zeros(end - begin, np.float32)
        for part in self.mem[op.buffer("partial")][:, begin:end]:   # in part order, as the kernel
            acc = acc + part
        self._finish(op, begin, end, acc)

    def _attention(self, op: ExecOp):
        h, _ = op.tile_range
        hd, group = op.param("head_dim"), op.param("group")
        g = h // group
        scale = np.float32(op.param("scale"))
        inv_freq = op.params.data.get("rope_inv_freq")
        rope = (lambda v: _rope(v, np.array(inv_freq.get_values(), np.float32), self.pos)) if inv_freq else (lambda v: v)
        k_cache, v_cache = self.mem[op.buffer("k_cache")][0, g], self.mem[op.buffer("v_cache")][0, g]
        k_new, v_new = rope(self._vec(op, "k")[g * hd:(g + 1) * hd]), self._vec(op, "v")[g * hd:(g + 1) * hd]
        if h % group == 0 and op.k_index.value.data == 0:   # part 0 of the group's first head appends the row
            k_cache[self.pos], v_cache[self.pos] = k_new, v_new
        keys = np.concatenate([k_cache[: self.pos], k_new[None]])       # row pos from the task itself
        values = np.concatenate([v_cache[: self.pos], v_new[None]])
        q = rope(self._vec(op, "q")[h * hd:(h + 1) * hd]) * scale
        parts, j = op.k_split.value.data, op.k_index.value.data
        if parts == 1:
            scores = keys @ q
            p = np.exp(scores - scores.max())
            self._vec(op, "out")[h * hd:(h + 1) * hd] = (p @ values) / p.sum()
            return
        share = (self.pos + parts) // parts                 # this part's positions, as attention.cuh
        t0 = min(j * share, self.pos + 1)
        t1 = min(t0 + share, self.pos + 1)
        state = self.mem[op.buffer("out")][j, h]             # (acc[hd], max, sum), unnormalised
        if t0 == t1:
            state[:hd], state[hd], state[hd + 1] = 0.0, EMPTY, 0.0
            return
        scores = keys[t0:t1] @ q
        m = scores.max()
        p = np.exp(scores - m)
        state[:hd], state[hd], state[hd + 1] = p @ values[t0:t1], m, p.sum()

    def _attention_combine(self, op: ExecOp):
        h0, h1 = op.tile_range
        hd = op.param("head_dim")
        self._vec(op, "out")[h0 * hd:h1 * hd] = _merge_parts(self.mem[op.buffer("partial")][:, h0:h1], hd).reshape(-1)


def _merge_parts(state: np.ndarray, hd: int) -> np.ndarray:
    """[heads, hd] from the flash-decoding parts' (acc[hd], max, sum) [parts, heads, hd + 2]."""
    m = state[:, :, hd].max(axis=0)
    c = np.exp(state[:, :, hd] - m)                    # [parts, heads]
    num = np.zeros((state.shape[1], hd), np.float32)
    den = np.zeros(state.shape[1], np.float32)
    for j in range(state.shape[0]):                    # in part order, as the kernel
        num = num + state[j, :, :hd] * c[j, :, None]
        den = den + state[j, :, hd + 1] * c[j]
    return num / den[:, None]
