"""Decode attention tasks: query heads [h0, h1) of one KV head (smem.attention_heads_per_task of
its GQA group, which read the same cached rows) of one sequence of the batch (`seq`) over its
positions 0..pos, or one part of them (flash-decoding), the part 0 task of the group's first head
appending the new k/v; and the combine of the parts for a reader that cannot merge them in its
input staging (csrc/kernels/attention.cuh). q, k, v and out are [batch, heads x head_dim], the
caches [batch, kv_heads, max_seq_len, head_dim], a split attention's parts [parts, batch, heads,
head_dim + 2]."""
from __future__ import annotations

import numpy as np

from .. import smem
from .base import BF16, TAGGED, CombineKind, TaskKind, f32_literal

EMPTY = np.float32(-1e30)   # max score of a part with no positions (attention.cuh kEmpty)


def rope(x: np.ndarray, inv_freq: np.ndarray, pos: int) -> np.ndarray:
    """Rotate-half RoPE of one head vector x[head_dim]."""
    half = x.shape[-1] // 2
    angle = np.float32(pos) * inv_freq.astype(np.float32)
    cos = np.concatenate([np.cos(angle)] * 2).astype(np.float32)
    sin = np.concatenate([np.sin(angle)] * 2).astype(np.float32)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def merge_parts(state: np.ndarray, hd: int) -> np.ndarray:
    """[heads, hd] from the flash-decoding parts' (acc[hd], max, sum) [parts, heads, hd + 2]."""
    m = state[:, :, hd].max(axis=0)
    c = np.exp(state[:, :, hd] - m)                    # [parts, heads]
    num = np.zeros((state.shape[1], hd), np.float32)
    den = np.zeros(state.shape[1], np.float32)
    for j in range(state.shape[0]):                    # in part order, as the kernel
        num = num + state[j, :, :hd] * c[j, :, None]
        den = den + state[j, :, hd + 1] * c[j]
    return num / den[:, None]


def part_heads(op, j: int, b: int, h0: int, h1: int) -> tuple[int, int]:
    """The elements of heads [h0, h1) of sequence b in part j of a split attention's partial sums
    [parts, batch, heads, head_dim + 2] (`op`: a task naming head_dim, num_heads and batch)."""
    stride = op.param("head_dim") + 2
    at = (j * op.param("batch") + b) * op.param("num_heads")
    return (at + h0) * stride, (at + h1) * stride


class Attention(TaskKind):
    name = "attention"
    roles = frozenset({"q", "k", "v", "k_cache", "v_cache", "out"})     # and q_norm, k_norm (Qwen3), pairs
    own_cost = "attention_us"
    page_share = "kv_share"

    def cost(self, op, pos) -> dict:
        # its cached rows at `pos` (K and V), an equal share of 0..pos per part (attention.cuh
        # attention_part), in the first of its pages; the rest, sized for the longest sequence, are
        # empty at `pos`
        rows = min(-(-(pos + 1) // op.parts), pos)
        return {"stage_bytes": 2 * rows * op.param("head_dim") * BF16,
                "loaded_pages": min(op.param("pages"), -(-rows // op.param("page_rows")))}

    def reads(self, op):
        (h0, h1), hd, b = op.tile_range, op.param("head_dim"), op.sequence
        g = h0 // op.param("group")
        q, kv = b * op.param("num_heads") * hd, b * op.param("num_kv_heads") * hd    # its sequence's rows
        return [(op.buffer("q"), q + h0 * hd, q + h1 * hd), (op.buffer("k"), kv + g * hd, kv + (g + 1) * hd),
                (op.buffer("v"), kv + g * hd, kv + (g + 1) * hd)]

    def writes(self, op):
        (h0, h1), hd, nh, b = op.tile_range, op.param("head_dim"), op.param("num_heads"), op.sequence
        if op.parts == 1:     # and the same elements of its bf16 shadow, if it has one (tile.py pair_values)
            return [(o, (b * nh + h0) * hd, (b * nh + h1) * hd) for o in (op.buffer("out"), op.buffer("pairs")) if o]
        return [(op.buffer("out"), *part_heads(op, op.part, b, h0, h1))]   # (acc[hd], max, sum) of each head

    def simulate(self, sim, op) -> None:
        h0, h1 = op.tile_range
        for h in range(h0, h1):
            self.simulate_head(sim, op, h)

    @staticmethod
    def simulate_head(sim, op, h: int) -> None:
        hd, group, b = op.param("head_dim"), op.param("group"), op.sequence
        g, pos = h // group, int(sim.pos[b])            # its sequence's position
        scale = np.float32(op.param("scale"))
        inv_freq = op.params.data.get("rope_inv_freq")
        rotate = (lambda v: rope(v, np.array(inv_freq.get_values(), np.float32), pos)) if inv_freq else (lambda v: v)
        eps = op.params.data.get("norm_eps")

        def rot(v, norm):   # Qwen3: each head's RMSNorm before its RoPE
            if eps is None:
                return rotate(v)
            return rotate(v / np.sqrt(np.mean(v * v, dtype=np.float32) + np.float32(eps.value.data)) * sim.vec(op, norm))
        k_cache, v_cache = sim.buf(op, "k_cache")[b, g], sim.buf(op, "v_cache")[b, g]
        k, v = sim.buf(op, "k")[b], sim.buf(op, "v")[b]
        k_new, v_new = rot(k[g * hd:(g + 1) * hd], "k_norm"), v[g * hd:(g + 1) * hd]
        if h % group == 0 and op.part == 0:   # part 0 of the group's first head appends the row
            k_cache[pos], v_cache[pos] = k_new, v_new
        keys = np.concatenate([k_cache[:pos], k_new[None]])       # row pos from the task itself
        values = np.concatenate([v_cache[:pos], v_new[None]])
        q = rot(sim.buf(op, "q")[b, h * hd:(h + 1) * hd], "q_norm") * scale
        parts, j = op.parts, op.part
        if parts == 1:
            scores = keys @ q
            p = np.exp(scores - scores.max())
            sim.buf(op, "out")[b, h * hd:(h + 1) * hd] = (p @ values) / p.sum()
            if op.buffer("pairs"):        # unrounded, as every shadow in the simulator (kinds/linear.py finish)
                sim.buf(op, "pairs")[b, h * hd:(h + 1) * hd] = sim.buf(op, "out")[b, h * hd:(h + 1) * hd]
            return
        share = (pos + parts) // parts                 # this part's positions, as attention.cuh
        t0 = min(j * share, pos + 1)
        t1 = min(t0 + share, pos + 1)
        state = sim.buf(op, "out")[j, b, h]           # (acc[hd], max, sum), unnormalised
        if t0 == t1:
            state[:hd], state[hd], state[hd + 1] = 0.0, EMPTY, 0.0
            return
        scores = keys[t0:t1] @ q
        m = scores.max()
        p = np.exp(scores - m)
        state[:hd], state[hd], state[hd + 1] = p @ values[t0:t1], m, p.sum()

    def functions(self, em, op, name) -> list[str]:
        hd, rows, pages = op.param("head_dim"), op.param("page_rows"), op.param("pages")
        nh, kvh, batch = op.param("num_heads"), op.param("num_kv_heads"), op.param("batch")
        buf, step, seq = em.buf_of(op), "s", ""
        if batch > 1:       # sequence `seq`'s rows of q, k, v, out and the caches, at its position
            cache = kvh * op.param("max_seq_len") * hd
            strides = {"out": nh * (hd if op.parts == 1 else hd + 2), "pairs": nh * hd, "q": nh * hd, "k": kvh * hd,
                       "v": kvh * hd, "k_cache": cache, "v_cache": cache}
            of = buf
            buf = lambda role, ctype="tagged_t": em.at_seq(of(role, ctype), strides[role]) \
                if role in strides else of(role, ctype)                                      # noqa: E731
            step, seq = "t", ", int seq"
        inv = op.params.data.get("rope_inv_freq")
        table = em.rope_table(inv.get_values()) if inv is not None else "(const float*)nullptr"
        args = ", ".join([buf(r) for r in ("out", "q", "k", "v", "k_cache", "v_cache")]
                         + [table, f32_literal(op.param("scale"))])
        heads = op.tile_range[1] - op.tile_range[0]
        em.asserts.add(f"static_assert(AttentionWork<{hd}, {heads}>::kBytes == "
                       f"{smem.attention_work_bytes(hd, heads)}, \"smem model: attention work area\");")
        em.asserts.add(f"static_assert(AttentionPage<{hd}, {rows}>::kBytes == {smem.attention_page_bytes(hd, rows)}, "
                       "\"smem model: attention page\");")
        norms = ""           # Qwen3: each head's RMSNorm of q and k before RoPE
        if op.buffer("q_norm"):
            norms = (f", {buf('q_norm', 'bf16_t')}, {buf('k_norm', 'bf16_t')}, "
                     f"{f32_literal(op.param('norm_eps'))}")
        flags = ", true" if norms else ""
        if op.buffer("pairs"):   # its bf16 shadow (tile.py pair_values), after the norms' arguments
            assert op.parts == 1, "a shadow of an unsplit attention's output only (tile.py pair_values)"
            flags = f"{flags or ', false'}, true"
            norms = (norms or ", (const bf16_t*)nullptr, (const bf16_t*)nullptr, 0.0f") + \
                f", {buf('pairs', 'paired_t')}"
        at = [f"  const Step t = at_position(s, {em.position('seq')});"] if batch > 1 else []
        return [*em.signature(f"attention_{name}", "int page, int q_head, int split" + seq), *at,
                f"  attention_task<{em.ring}, {hd}, {heads}, {rows}, {pages}{flags}>({step}, task, "
                f"{em.plan.work_offset}, {args}, q_head, {op.param('group')}, {op.param('max_seq_len')}, "
                f"{batch * nh}, split, {op.parts}, page{norms});",     # a part's heads: [parts, batch, heads]
                "}",
                *em.signature(f"produce_{name}", "int page, int q_head, int split" + seq), *at,
                f"  attention_produce<{em.ring}, {hd}, {rows}, {pages}>({step}, {buf('k_cache', 'bf16_t')}, "
                f"{buf('v_cache', 'bf16_t')}, q_head, {op.param('group')}, {op.param('max_seq_len')}, split, "
                f"{op.parts}, page, task);",
                "}"]

    @staticmethod
    def _seq(op) -> tuple:
        """A batch's task names its sequence (its functions' last argument)."""
        return (op.sequence,) if op.param("batch") > 1 else ()

    def produce(self, em, op, page) -> list[str]:
        args = (page, op.tile_range[0], op.part, *self._seq(op))
        return [f"    produce_{em.op_name(op)}({em.args(op)}, {', '.join(map(str, args))});  "
                f"// {em.comment(op)}: its cached rows"]

    def call(self, em, op, page, new_run) -> list[str]:
        begin, part = op.tile_range[0], op.part
        end = op.tile_range[1]
        heads = f"query head {begin}" if end == begin + 1 else f"query heads {begin}..{end - 1}"
        of = f" of sequence {op.sequence}" if op.param("batch") > 1 else ""
        return self.plain_call(em, op, "attention", (page, begin, part, *self._seq(op)),
                               f"{heads}{of}, part {part}, pages {page}..")

    def pages(self, op) -> int:
        return op.param("pages")


class AttentionCombine(CombineKind):
    name = "attention_combine"
    roles = frozenset({"partial", "out"})

    def cost(self, op, pos) -> dict:
        (h0, h1), hd = op.tile_range, op.param("head_dim")
        return {"read_bytes": (h1 - h0) * (hd + 2) * op.parts * TAGGED}

    def reads(self, op):
        (h0, h1), b = op.tile_range, op.sequence
        return [(op.buffer("partial"), *part_heads(op, j, b, h0, h1)) for j in range(op.parts)]

    def writes(self, op):
        (h0, h1), hd, nh, b = op.tile_range, op.param("head_dim"), op.param("num_heads"), op.sequence
        return [(op.buffer("out"), (b * nh + h0) * hd, (b * nh + h1) * hd)]

    def simulate(self, sim, op) -> None:
        h0, h1 = op.tile_range
        hd, b = op.param("head_dim"), op.sequence
        sim.buf(op, "out")[b, h0 * hd:h1 * hd] = merge_parts(sim.buf(op, "partial")[:, b, h0:h1], hd).reshape(-1)

    def functions(self, em, op, name) -> list[str]:
        buf, hd, nh, batch = em.buf_of(op), op.param("head_dim"), op.param("num_heads"), op.param("batch")
        if batch == 1:
            return [*em.signature(f"combine_{name}", "int head_begin, int head_end"),
                    f"  attention_combine<{hd}, {nh}, {op.parts}>(s, task, {buf('out')}, {buf('partial')}, head_begin, "
                    "head_end);",
                    "}"]
        # sequence `seq`'s heads: its row of out, its heads of every part ([parts, batch, heads]: a
        # part's are batch x heads apart, the stride merged() takes as HEADS)
        return [*em.signature(f"combine_{name}", "int head_begin, int head_end, int seq"),
                f"  attention_combine<{hd}, {batch * nh}, {op.parts}>(s, task, {em.at_seq(buf('out'), nh * hd)}, "
                f"{em.at_seq(buf('partial'), nh * (hd + 2))}, head_begin, head_end);",
                "}"]

    def call(self, em, op, page, new_run) -> list[str]:
        begin, end = op.tile_range
        if op.param("batch") == 1:
            return super().call(em, op, page, new_run)
        return self.plain_call(em, op, "combine", (begin, end, op.sequence),
                               f"[{begin}, {end}) of sequence {op.sequence}, sum of parts")
