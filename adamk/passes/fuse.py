"""fuse: graph IR -> graph IR in which every elementwise op rides on a linear or the attention.

Reads `adamk.rmsnorm`, `adamk.silu_mul`, `adamk.add` and `adamk.rope`; writes them into
their consumers: rmsnorm and silu_mul become the prologue of the `adamk.linear` that reads
them (the input vector is tiny, so every tile recomputes it instead of waiting on a
separate task), a residual `adamk.add` becomes the linear's epilogue, and the RoPE of q
and k moves into `adamk.attention` (the task that appends k to the cache).
"""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier, PatternRewriter, PatternRewriteWalker, RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.passes import ModulePass

from ..dialects.graph import AddOp, AttentionOp, LinearOp, RMSNormOp, RopeOp, SiluMulOp


def _rebuild(lin: LinearOp, **changes) -> LinearOp:
    """`lin` with some of its operands / prologue replaced."""
    fields = dict(input=lin.input, weight=lin.weight, bias=lin.bias, input2=lin.input2,
                  norm_weight=lin.norm_weight, residual=lin.residual, prologue=lin.prologue.data,
                  eps=lin.eps.value.data if lin.eps is not None else None)
    fields.update(changes)
    return LinearOp(fields.pop("input"), fields.pop("weight"), **fields)


class RMSNormIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: LinearOp, rewriter: PatternRewriter):
        norm = op.input.owner
        if not isinstance(norm, RMSNormOp) or op.prologue.data != "none":
            return
        rewriter.replace_matched_op(_rebuild(op, input=norm.input, norm_weight=norm.weight,
                                             prologue="rmsnorm", eps=norm.eps.value.data))
        if not norm.result.uses.get_length():
            rewriter.erase_op(norm)


class SiluMulIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: LinearOp, rewriter: PatternRewriter):
        act = op.input.owner
        if not isinstance(act, SiluMulOp) or op.prologue.data != "none":
            return
        rewriter.replace_matched_op(_rebuild(op, input=act.gate, input2=act.up, prologue="silu_mul"))
        if not act.result.uses.get_length():
            rewriter.erase_op(act)


class ResidualIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: AddOp, rewriter: PatternRewriter):
        for lin_value, residual in ((op.rhs, op.lhs), (op.lhs, op.rhs)):
            lin = lin_value.owner
            if isinstance(lin, LinearOp) and lin.residual is None and lin.result.has_one_use():
                rewriter.replace_matched_op(_rebuild(lin, residual=residual))
                rewriter.erase_op(lin)
                return


class RopeIntoAttention(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: AttentionOp, rewriter: PatternRewriter):
        q, k = op.q.owner, op.k.owner
        if op.rope_inv_freq is not None or not (isinstance(q, RopeOp) and isinstance(k, RopeOp)):
            return
        if q.inv_freq != k.inv_freq or q.pos != op.pos or k.pos != op.pos:
            return
        rewriter.replace_matched_op(AttentionOp(
            q.input, k.input, op.v, op.k_cache, op.v_cache, op.pos,
            num_heads=op.num_heads.value.data, num_kv_heads=op.num_kv_heads.value.data,
            head_dim=op.head_dim.value.data, scale=op.scale.value.data,
            rope_inv_freq=q.inv_freq.get_values()))
        for rope in {q, k}:
            if not rope.result.uses.get_length():
                rewriter.erase_op(rope)


@dataclass(frozen=True)
class FusePass(ModulePass):
    name = "fuse"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(GreedyRewritePatternApplier([
            RMSNormIntoLinear(), SiluMulIntoLinear(), ResidualIntoLinear(), RopeIntoAttention(),
        ])).rewrite_module(op)
