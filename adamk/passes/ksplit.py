"""ksplit: fused graph IR -> the same ops with their tiling chosen by the shared-memory model.

Reads every `adamk.linear` and `adamk.attention` of `@decode_step`; writes `tile_rows`
and `k_split` on each linear and `k_split` on the attention, the properties the `tile`
pass materialises. A linear keeps `tile_rows` output rows per task (a gated linear half as
many, its pages holding them of both weights: smem.gated_tile_rows); its weights stream
through the SM's ring in pages of `stage_bytes` whatever K is, so it is split over K only
into the fewest parts whose work area (the input of a K-chunk) fits the budget with
`depth` pages in flight; a gated linear is never split (silu needs its rows' whole sums).
The attention's cached rows stream through the same ring in pages of `stage_bytes`. The
attention splits its sequence (flash-decoding) so that its tasks (each a KV head's
query heads, smem.attention_heads_per_task) x parts cover the SMs, up to MERGED_PARTS parts
(`attention_parts`). Partial sums are combined in a fixed order by the tasks
the tile pass adds; the DAG search may choose other splits.

With `enabled=False` every k_split is 1: the plan smem.peak_without_ksplit measures. Either
way an op whose footprint at this depth exceeds the per-block budget is an error naming
the op, its footprint and the budget (smem.py has the model).
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, i64
from xdsl.passes import ModulePass

from .. import smem
from ..dialects.graph import AttentionOp, LinearOp, shape_of
from ..errors import ScheduleError
from ..names import quoted
from .tile import merge_weights


MERGED_PARTS = 8    # most sequence parts by default: a reader's staging merges up to 8 in one round trip
                    # (attention.cuh attention_input); the DAG search may choose more


def attention_parts(op: AttentionOp, num_sms: int) -> int:
    """The default sequence parts of an attention: its tasks (of every sequence of the batch) x parts
    cover the SMs, at most MERGED_PARTS, and no more parts than positions."""
    tasks = shape_of(op.q)[0] * op.num_heads.value.data // smem.attention_heads_per_task(op.group)
    return max(1, min(op.max_seq_len, num_sms // tasks, MERGED_PARTS))


@dataclass(frozen=True)
class KSplitPass(ModulePass):
    name = "ksplit"
    tile_rows: int = 16
    depth: int = 2
    stage_bytes: int = 32 * 1024
    smem_budget: int = 99 * 1024
    num_sms: int = 92
    gpu: str = "the target"
    enabled: bool = True
    attention_parts: int | None = None    # every attention's sequence parts (CompileConfig); None: the default

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = next(o for o in op.ops if isinstance(o, func.FuncOp))
        ring = self.depth * (self.stage_bytes + smem.RING_BARRIERS)
        if ring >= self.smem_budget:        # no K-split can help: name the ring, not the first op
            raise ScheduleError(f"{self.depth} ring pages of {self.stage_bytes} B and their barriers take {ring} B of "
                                f"shared memory per block, leaving no work area within {self.gpu}'s "
                                f"{self.smem_budget} B (use fewer stages or a smaller stage_bytes)")
        for o in fn.body.block.ops:
            if isinstance(o, LinearOp):
                k, gated = shape_of(o.weight)[1], o.weight2 is not None
                rows = smem.linear_tile_rows(self.tile_rows, gated)
                page_rows = smem.linear_page_rows(rows, gated)
                batch, coef = shape_of(o.input)[0], merge_weights(o)
                parts = (smem.fewest_k_parts(k, page_rows, self.stage_bytes, self.depth, self.smem_budget, batch, coef)
                         if self.enabled and not gated else 1)      # silu needs a gated row's whole sum
                chunk = smem.k_chunk(k, parts)
                name = quoted(o.weight.owner.weight_name.data)
                of_batch = f", for a batch of {batch}" if batch > 1 else ""
                what = (f"gated linear {name} and {quoted(o.weight2.owner.weight_name.data)} ({rows} rows of each "
                        f"x K={k}{of_batch}, not split over K; --no-gate-up keeps them two linears, which may be)"
                        if gated else f"linear {name} ({rows} rows x {chunk} of K={k}{of_batch})")
                self.check(what, smem.linear_footprint(page_rows, chunk, self.stage_bytes, coef, batch))
                o.properties["tile_rows"] = IntegerAttr(rows, i64)
                o.properties["k_split"] = IntegerAttr(parts, i64)
            elif isinstance(o, AttentionOp):
                hd = o.head_dim.value.data
                parts = (self.attention_parts or attention_parts(o, self.num_sms)) if self.enabled else 1
                if parts > o.max_seq_len:
                    raise ScheduleError(f"attention_parts={parts} exceeds the attention's {o.max_seq_len} positions")
                self.check(f"attention (head_dim {hd})", smem.attention_footprint(hd, o.group, self.stage_bytes))
                o.properties["k_split"] = IntegerAttr(parts, i64)

    def check(self, what: str, fp: smem.Footprint):
        need = fp.alone(self.depth, self.stage_bytes)
        if need > self.smem_budget:
            slot = max(fp.stage, self.stage_bytes)
            stages = f"{self.depth} ring pages x ({slot} B + {smem.RING_BARRIERS} B of barriers) + " \
                if fp.stage else ""
            raise ScheduleError(f"{what} needs {stages}a {fp.work} B work area = {need} B of shared memory per "
                                f"block; {self.gpu} allows {self.smem_budget} B (use fewer stages, a smaller "
                                "stage_bytes or tile_rows)")
