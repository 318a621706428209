"""ksplit: fused graph IR -> the same ops with their tiling chosen by the shared-memory model.

Reads every `adamk.linear` and `adamk.attention` of `@decode_step`; writes `tile_rows`
and `k_split` on each linear and `k_split` on the attention, the properties the `tile`
pass materialises. A linear keeps `tile_rows` output rows per task and splits its
reduction over K into the fewest parts whose weight stage (tile_rows x K/k_split bf16)
fits `stage_bytes`, so `depth` stages of it stay in flight per SM whatever K is; the
attention splits its sequence (flash-decoding) so that its query heads x parts cover the
SMs. Partial sums are combined in a fixed order by the tasks the tile pass adds.

With `enabled=False` every k_split is 1 and a linear takes as many whole rows (up to
`tile_rows`) as fit `stage_bytes`: the best plan without K-splitting at the same bytes in
flight, the one smem.peak_without_ksplit measures. Either way an op
whose footprint at this depth exceeds the per-block budget is an error naming the op,
its footprint and the budget (smem.py has the model).
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

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        fn = next(o for o in op.ops if isinstance(o, func.FuncOp))
        for o in fn.body.block.ops:
            if isinstance(o, LinearOp):
                k = shape_of(o.weight)[1]
                if self.enabled:
                    rows, parts = self.tile_rows, smem.fewest_k_parts(k, self.tile_rows, self.stage_bytes)
                else:   # the best plan without splitting: as many whole rows as fit a stage
                    rows, parts = smem.unsplit_rows(k, self.stage_bytes, self.tile_rows), 1
                chunk = smem.k_chunk(k, parts)
                what = f"linear '{o.weight.owner.weight_name.data}' ({rows} rows x {chunk} of K={k})"
                self.check(what, smem.Footprint(smem.linear_stage_bytes(rows, chunk), smem.linear_work_bytes(chunk)))
                o.properties["tile_rows"] = IntegerAttr(rows, i64)
                o.properties["k_split"] = IntegerAttr(parts, i64)
            elif isinstance(o, AttentionOp):
                heads, max_seq = o.num_heads.value.data, shape_of(o.k_cache)[2]
                parts = max(1, min(max_seq, self.num_sms // heads)) if self.enabled else 1
                hd = o.head_dim.value.data
                self.check(f"attention (head_dim {hd})", smem.Footprint(0, smem.attention_work_bytes(hd)))
                o.properties["k_split"] = IntegerAttr(parts, i64)

    def check(self, what: str, fp: smem.Footprint):
        need = fp.alone(self.depth)
        if need > self.smem_budget:
            stages = f"{self.depth} weight stages x {fp.stage} B + " if fp.stage else ""
            raise ScheduleError(f"{what} needs {stages}a {fp.work} B work area = {need} B of shared memory per "
                                f"block; {self.gpu} allows {self.smem_budget} B (use fewer stages, a smaller "
                                "stage_bytes or tile_rows)")
