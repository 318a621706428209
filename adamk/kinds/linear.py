"""Linear tasks: a tile of rows x one K-chunk of out = prologue(in) @ W^T (+bias) (+residual),
for every sequence of the batch from one read of its weights, streamed through the SM's ring
(csrc/kernels/linear.cuh); and the fixed-order combine of a K-split linear's parts. Activations
are [batch, features] row-major; a split op's partial sums [parts, batch, N]."""
from __future__ import annotations

import numpy as np

from .. import smem
from .attention import merge_parts, part_heads
from .base import BF16, PAIRED, TAGGED, CombineKind, TaskKind, f32_literal, rows, shadow_writes

PROLOGUES = {"none": "kPlain", "rmsnorm": "kRmsNorm", "silu_mul": "kSiluMul"}   # linear.cuh Prologue


def _silu(x):
    return x / (1.0 + np.exp(-x))


def page_rows(op) -> int:
    """Rows of a task's weight pages: its output rows, of both weights for a gated linear."""
    return smem.linear_page_rows(op.param("tile_rows"), op.buffer("weight2") is not None)


class Linear(TaskKind):
    name = "linear"
    roles = frozenset({"input", "weight", "out"})
    same_pages_each_step = True

    def cost(self, op, pos) -> dict:
        # its K-chunk of inputs of each sequence; silu_mul reads two per element; rmsnorm first
        # reads the whole row of K for its sum of squares (every K-part does); attn_combine reads
        # every part's share of each element; the sum of squares over a batch's bf16 shadow half the
        # bytes (`inputs` counts tagged words). A plain input's shadow counts as its tagged words: a
        # trip's time hardly follows its bytes (docs/perf.md v40, trip_bench: 4 to 16 KB a trip, 0.19 to
        # 0.29 us), and counted at half, the search spread a batch of 4's down K-parts over each SM
        # (4-7 stagings an SM instead of one: +18%). A gated task streams two weights' rows.
        prologue, k_len = op.param("prologue"), op.k_range[1]
        per = {"silu_mul": 2, "attn_combine": op.param("parts")}.get(prologue, 1)
        norm = op.param("K") * (PAIRED / TAGGED if op.param("paired") else 1) if prologue == "rmsnorm" else 0
        begin, end = op.tile_range       # the rows it streams (a last tile may be short)
        return {"stage_bytes": smem.linear_page_rows(end - begin, op.buffer("weight2") is not None) * k_len * BF16,
                "inputs": op.param("batch") * (k_len * per + int(norm))}

    def reads(self, op):
        k0, k_len = op.k_range
        prologue, source, k, n = op.param("prologue"), op.buffer("input"), op.param("K"), op.param("N")
        if prologue == "attn_combine":      # every part's (acc, max, sum) of the chunk's heads, of each sequence
            hd = op.param("head_dim")
            h0, h1 = k0 // hd, -(-(k0 + k_len) // hd)
            out = [(source, *part_heads(op, j, b, h0, h1)) for j in range(op.param("parts"))
                   for b in range(op.param("batch"))]
        elif prologue == "rmsnorm":         # the whole row, for its sum of squares
            out = rows(op, source, k, 0, k)
        else:
            out = rows(op, source, k, k0, k0 + k_len) + \
                (rows(op, op.buffer("input2"), k, k0, k0 + k_len) if op.buffer("input2") else [])
        if op.buffer("residual"):
            out += rows(op, op.buffer("residual"), n, *op.tile_range)
        return out

    def writes(self, op):
        n = op.param("N")
        at = op.part * op.param("batch") * n if op.parts > 1 else 0     # a part: its rows of the partial sums
        return rows(op, op.buffer("out"), n, *op.tile_range, at=at) + shadow_writes(op)

    def simulate(self, sim, op) -> None:
        begin, end = op.tile_range
        k0, k_len = op.k_range
        prologue, batch = op.param("prologue"), op.param("batch")
        if prologue == "attn_combine":              # the parts of a split attention, merged as the kernel
            state = sim.buf(op, "input")            # [parts, batch, heads, hd + 2]
            xs = merge_parts(state.reshape(state.shape[0], -1, state.shape[-1]), op.param("head_dim"))
            xs = xs.reshape(batch, -1)
        else:
            xs = sim.buf(op, "input").reshape(batch, -1).astype(np.float32)
        if prologue == "silu_mul":
            xs = _silu(xs) * sim.buf(op, "input2").reshape(batch, -1)
        elif prologue == "rmsnorm":                 # each sequence's row on its own
            eps = np.float32(op.param("eps"))
            scale = np.float32(1.0) / np.sqrt(np.mean(xs * xs, axis=1, keepdims=True, dtype=np.float32) + eps)
            xs = xs * scale * sim.vec(op, "norm_weight")
        x = xs[:, k0:k0 + k_len]                    # [batch, k_len]
        acc = (x @ sim.buf(op, "weight")[begin:end, k0:k0 + k_len].T).astype(np.float32)
        if op.buffer("weight2"):         # gated: silu(x W^T) * (x W2^T)
            acc = _silu(acc) * (x @ sim.buf(op, "weight2")[begin:end, k0:k0 + k_len].T).astype(np.float32)
        if op.parts > 1:                 # a part: its rows of the partial sums
            sim.buf(op, "out")[op.part, :, begin:end] = acc
            return
        finish(sim, op, begin, end, acc)

    def functions(self, em, op, name) -> list[str]:
        k, n, chunk, cols, pages = (op.param(p) for p in ("K", "N", "k_chunk", "page_cols", "pages"))
        rows, paged, batch = page_rows(op), paged_input(op, em.tagged), op.param("batch")
        eps, prologue, wo = op.param("eps"), op.param("prologue"), em.plan.work_offset
        buf = em.buf_of(op)
        xs = pages * cols
        out = buf("out") + (f" + k_index * {batch * n}" if op.parts > 1 else "")   # a part: [parts, batch, N]
        k_len = f"min({chunk}, {k} - k0)"
        seqs = f", {batch}" if batch > 1 else ""       # a batch: the staging's and the work area's sequences
        if prologue == "attn_combine":      # the input is the parts of a split attention
            hd, nh, parts = op.param("head_dim"), op.param("num_heads"), op.param("parts")
            staging = (f"  attention_input<{xs}, {hd}, {nh}, {parts}{seqs}>(s, {wo}, {buf('input')}, k0, {k_len}, "
                       "task);")
            coef = nh * parts
        else:
            in_type = em.ctype(op.buffer("input"))
            staging = (f"  linear_input<{xs}, {k}, {PROLOGUES[prologue]}{f', {in_type}{seqs}' if seqs else ''}>(s, "
                       f"{wo}, {buf('input')}, {buf('input2', in_type)}, {buf('norm_weight', 'bf16_t')}, "
                       f"{f32_literal(eps if eps is not None else 0.0)}, k0, {k_len}, task);")
            coef = 0
        em.asserts.add(f"static_assert(WeightPage<{rows}, {cols}>::kBytes == {op.stage_bytes.value.data}, "
                       "\"smem model: linear page\");")
        em.asserts.add(f"static_assert(LinearWork<{xs}, {coef}, {rows}{f', {batch}' if seqs else ''}>::kBytes == "
                       f"{smem.linear_work_bytes(xs, coef, rows, batch)}, \"smem model: linear work area\");")
        staging_fn = [] if paged else [*em.signature(f"input_{name}", "int k_index"),
                                       f"  const int k0 = k_index * {chunk};", staging, "}"]
        if batch > 1:       # the tensor cores' task (linear_mma.cuh), every sequence's rows from one read
            flags = (", true" if op.buffer("weight2") else "") + (
                f"{'' if op.buffer('weight2') else ', false'}, true" if op.buffer("pairs") else "")
            pairs = f", {buf('pairs', 'paired_t')}" if op.buffer("pairs") else ""
            task = (f"  linear_task_batch<{em.ring}, {xs}, {rows}, {cols}, {pages}, {batch}{flags}>(s, task, {wo}, "
                    f"{out}, {n}, {buf('bias', 'bf16_t')}, {buf('residual')}, row_begin, row_end, {k_len}, page{pairs});")
        else:       # one sequence: linear_task's GATED, PAGED, PAIRS up to the last one set (the input type deduced)
            flags = [bool(op.buffer("weight2")), paged, bool(op.buffer("pairs"))]
            while flags and not flags[-1]:
                flags.pop()
            staged = (f", {buf('input', em.ctype(op.buffer('input')))}, k0, stage" if paged else
                      ", (const tagged_t*)nullptr, 0, false" if op.buffer("pairs") else "")
            pairs = f", {buf('pairs', 'paired_t')}" if op.buffer("pairs") else ""   # its shadow (tile.py pair_values)
            task = (f"  linear_task<{em.ring}, {xs}, {rows}, {cols}, {pages}"
                    f"{''.join(', true' if f else ', false' for f in flags)}>(s, task, {wo}, {out}, "
                    f"{buf('bias', 'bf16_t')}, {buf('residual')}, row_begin, row_end, {k_len}, page{staged}{pairs});")
        return [*staging_fn,
                f"template <typename R = {em.ring}>   // R: the ring, or NextStepL2 (ring.cuh)",
                *em.signature(f"produce_{name}", "int page, int row_begin, int k_index"),
                f"  linear_produce<R, {rows}, {cols}, {pages}{', true' if op.buffer('weight2') else ''}>"
                f"(s, {buf('weight', 'bf16_t')}, {self.packing(op)['col_pages']}, row_begin, k_index, page, task);",
                "}",
                *em.signature(f"linear_{name}", "int page, int row_begin, int row_end, int k_index"
                              + (", bool stage" if paged else "")),
                f"  const int k0 = k_index * {chunk};",
                task,
                "}"]

    def call(self, em, op, page, new_run) -> list[str]:
        """When it starts a run, the op's input staging (which waits for the input); then the task on its pages."""
        begin, end = op.tile_range
        task_id, part = op.task_id.value.data, op.part
        name = em.op_name(op)
        k0, k_len = op.k_range
        paged = paged_input(op, em.tagged)
        if paged and new_run:           # the task stages its input page by page (it stamps "inputs in")
            lines = em.marks(task_id)[:1]
        else:
            lines = [f"  input_{name}({em.args(op)}, {part});"] if new_run else em.marks(task_id)
        what = "rows" if not op.buffer("weight2") else "rows of both weights"
        stage = f", {int(new_run)}" if paged else ""
        return lines + [f"  linear_{name}({em.args(op)}, {page}, {begin}, {end}, {part}{stage});  "
                        f"// {em.comment(op)}: {what} [{begin}, {end}) x K [{k0}, {k0 + k_len}), pages {page}.."]

    def pages(self, op) -> int:
        return op.param("pages")

    def produce(self, em, op, page, l2_next: bool = False) -> list[str]:
        begin, _ = op.tile_range
        if begin % op.param("tile_rows"):
            raise ValueError(f"task {op.task_id.value.data} starts at row {begin}, not a whole page of "
                             f"{op.param('tile_rows')} rows: its packed pages would not be whole")
        args = [page, begin, op.k_index.value.data]
        # l2_next: the next step's first pages into L2, layer 0's (ring.cuh NextStepL2)
        ring, layer, what = (f"<NextStepL2<{em.ring}>>", "0", ": the next step's, into L2") if l2_next else ("", None, "")
        return [f"    produce_{em.op_name(op)}{ring}({em.args(op, layer)}, {', '.join(map(str, args))});  "
                f"// {em.comment(op)}{what}"]

    def packing(self, op) -> dict:
        """How the runtime stores the op's weights for the device (manifest `packed_weights`,
        runtime/weights.py `pack_pages`, linear.cuh `linear_produce`): page by page, each page the
        tile's `page_rows` rows of every source weight x `page_cols` columns, `chunk_pages` pages per
        K-chunk of `k_chunk` columns, `col_pages` pages across K; so every page is one copy."""
        sources = [op.buffer("weight")] + ([op.buffer("weight2")] if op.buffer("weight2") else [])
        chunk, pages = op.param("k_chunk"), op.param("pages")
        return {"buffer": op.buffer("weight"), "sources": sources, "page_rows": op.param("tile_rows"),
                "page_cols": op.param("page_cols"), "k_chunk": chunk, "chunk_pages": pages,
                "col_pages": -(-op.param("K") // chunk) * pages}

    def staged(self, op):
        """Tasks of other ops with the same staged input (q, k and v; gate and up unless gated) stage nothing."""
        return (tuple(op.buffer(r) for r in ("input", "input2", "norm_weight")), op.param("prologue"), op.param("eps"),
                op.k_range, op.param("pages") * op.param("page_cols"))


def packed_elements(packing: dict, rows: int) -> int:
    """Elements of one layer of a packed weight buffer (`packing` its manifest entry, `rows` the
    weights' rows): every row block's pages of every source, padding included (pack_pages)."""
    blocks = -(-rows // packing["page_rows"])
    return blocks * packing["col_pages"] * packing["page_rows"] * packing["page_cols"] * len(packing["sources"])


def paged_input(op, tagged) -> bool:
    """A plain tagged input (`tagged`: the names of the tagged buffers), such as a down
    projection's (the SwiGLU output) or an o_proj's from an unsplit attention, is staged by the
    task itself, page by page, so that its pages are used as their input columns arrive
    (linear.cuh PAGED). Its profiling stamp "inputs in" then means page 0's columns are in. A batch's
    task stages every sequence's chunk at its run's start (linear_mma.cuh has no paged staging)."""
    return op.param("prologue") == "none" and op.buffer("input") in tagged and op.param("batch") == 1


def finish(sim, op, begin: int, end: int, acc: np.ndarray):
    """Rows [begin, end) of a linear's out, `acc` [batch, end - begin]: + bias + residual; and of
    its bf16 shadow, if it has one (float32 here: the simulator checks where every value flows, and
    rounds to bf16 nowhere, as for a batch's staged inputs and the KV cache)."""
    batch = op.param("batch")
    if op.buffer("bias"):
        acc = acc + sim.vec(op, "bias")[begin:end]
    if op.buffer("residual"):
        acc = acc + sim.buf(op, "residual").reshape(batch, -1)[:, begin:end]
    sim.buf(op, "out").reshape(batch, -1)[:, begin:end] = acc
    if op.buffer("pairs"):
        sim.buf(op, "pairs").reshape(batch, -1)[:, begin:end] = acc


class LinearCombine(CombineKind):
    name = "linear_combine"
    roles = frozenset({"partial", "out"})

    def cost(self, op, pos) -> dict:
        begin, end = op.tile_range
        return {"read_bytes": op.param("batch") * (end - begin) * op.parts * TAGGED}

    def reads(self, op):
        n, batch = op.param("N"), op.param("batch")
        out = [r for j in range(op.parts) for r in rows(op, op.buffer("partial"), n, *op.tile_range, at=j * batch * n)]
        return out + (rows(op, op.buffer("residual"), n, *op.tile_range) if op.buffer("residual") else [])

    def writes(self, op):
        return rows(op, op.buffer("out"), op.param("N"), *op.tile_range) + shadow_writes(op)

    def simulate(self, sim, op) -> None:
        begin, end = op.tile_range
        acc = np.zeros((op.param("batch"), end - begin), np.float32)
        for part in sim.buf(op, "partial")[:, :, begin:end]:   # in part order, as the kernel
            acc = acc + part
        finish(sim, op, begin, end, acc)

    def functions(self, em, op, name) -> list[str]:
        buf = em.buf_of(op)
        n, batch = op.param("N"), op.param("batch")
        pairs = (", true", f", {buf('pairs', 'paired_t')}") if op.buffer("pairs") else ("", "")   # and its shadow
        # a batch: every sequence's rows at once ([parts, batch, N]: parts batch x N apart)
        return [*em.signature(f"combine_{name}", "int row_begin, int row_end"),
                f"  linear_combine<{op.parts}, {batch}{pairs[0]}>(s, task, {buf('out')}, {buf('partial')}, {n}, "
                f"{buf('bias', 'bf16_t')}, {buf('residual')}, row_begin, row_end{pairs[1]});",
                "}"]
