"""fuse: graph IR -> graph IR in which every elementwise op rides on a linear or the attention.

Reads `adamk.rmsnorm`, `adamk.silu_mul`, `adamk.add`, `adamk.rope` and `adamk.head_rmsnorm`;
writes them into their consumers: rmsnorm becomes the prologue of the `adamk.linear` that reads it (the input
vector is tiny, so every tile recomputes it instead of waiting on a separate task), a
residual `adamk.add` becomes the linear's epilogue, and the RoPE of q and k moves into
`adamk.attention` (the task that appends k to the cache), and so does Qwen3's per-head RMSNorm of
q and k before it (`adamk.head_rmsnorm`). Then the SwiGLU: silu(gate) * up of
two linears of one input (same prologue, no bias or residual) becomes one gated linear
(`weight2`), whose task computes a row of both and writes the product, so no task stages the
two 8192-wide vectors; any other silu_mul becomes the prologue of the linear that reads it.
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

from ..dialects.graph import AddOp, AttentionOp, HeadRMSNormOp, LinearOp, RMSNormOp, RopeOp, SiluMulOp, shape_of


def _eps(lin: LinearOp) -> float | None:
    return lin.eps.value.data if lin.eps is not None else None


def _rebuild(lin: LinearOp, **changes) -> LinearOp:
    """`lin` with some of its operands / prologue replaced."""
    fields = dict(input=lin.input, weight=lin.weight, bias=lin.bias, input2=lin.input2,
                  norm_weight=lin.norm_weight, residual=lin.residual, weight2=lin.weight2, prologue=lin.prologue.data,
                  eps=_eps(lin))
    fields.update(changes)
    return LinearOp(fields.pop("input"), fields.pop("weight"), **fields)


class RMSNormIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: LinearOp, rewriter: PatternRewriter):
        norm = op.input.owner
        if not isinstance(norm, RMSNormOp) or op.prologue.data != "none":
            return
        rewriter.replace(op, _rebuild(op, input=norm.input, norm_weight=norm.weight,
                                      prologue="rmsnorm", eps=norm.eps.value.data))
        if not norm.result.uses.get_length():
            rewriter.erase(norm)


def _gate_up(act: SiluMulOp):
    """(gate, up) linears that one gated linear can compute, or None."""
    gate, up = act.gate.owner, act.up.owner
    if not (isinstance(gate, LinearOp) and isinstance(up, LinearOp)) or gate is up:
        return None
    if (gate.input != up.input or gate.input2 != up.input2 or gate.norm_weight != up.norm_weight
            or gate.prologue.data != up.prologue.data or _eps(gate) != _eps(up)):
        return None
    if any(v is not None for v in (gate.bias, up.bias, gate.residual, up.residual, gate.weight2, up.weight2)):
        return None
    if shape_of(gate.weight) != shape_of(up.weight) or not (gate.result.has_one_use() and up.result.has_one_use()):
        return None
    return gate, up


class GateUpIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: SiluMulOp, rewriter: PatternRewriter):
        pair = _gate_up(op)
        if pair is None:
            return
        gate, up = pair
        rewriter.replace(op, _rebuild(gate, weight2=up.weight))
        rewriter.erase(gate)
        rewriter.erase(up)


class SiluMulIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: LinearOp, rewriter: PatternRewriter):
        act = op.input.owner
        if not isinstance(act, SiluMulOp) or op.prologue.data != "none":
            return
        rewriter.replace(op, _rebuild(op, input=act.gate, input2=act.up, prologue="silu_mul"))
        if not act.result.uses.get_length():
            rewriter.erase(act)


class ResidualIntoLinear(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: AddOp, rewriter: PatternRewriter):
        for lin_value, residual in ((op.rhs, op.lhs), (op.lhs, op.rhs)):
            lin = lin_value.owner
            if isinstance(lin, LinearOp) and lin.residual is None and lin.result.has_one_use():
                rewriter.replace(op, _rebuild(lin, residual=residual))
                rewriter.erase(lin)
                return


class RopeIntoAttention(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: AttentionOp, rewriter: PatternRewriter):
        q, k = op.q.owner, op.k.owner
        if op.rope_inv_freq is not None or not (isinstance(q, RopeOp) and isinstance(k, RopeOp)):
            return
        if op.q_norm is not None:      # a fused norm runs before the RoPE: this RoPE came first
            return
        if q.inv_freq != k.inv_freq or q.pos != op.pos or k.pos != op.pos:
            return
        rewriter.replace(op, op.rebuilt(q=q.input, k=k.input, rope_inv_freq=q.inv_freq.get_values()))
        for rope in {q, k}:
            if not rope.result.uses.get_length():
                rewriter.erase(rope)


def _head_norm(value, head_dim: int):
    """The per-head RMSNorm producing `value` (weight [head_dim]), or None. With a single head (a
    GQA model's one KV head) the frontend saw a plain RMSNorm over head_dim values: the same op."""
    norm = value.owner
    if isinstance(norm, (HeadRMSNormOp, RMSNormOp)) and shape_of(norm.weight) == (head_dim,):
        if isinstance(norm, HeadRMSNormOp) or shape_of(norm.input)[-1] == head_dim:
            return norm
    return None


class HeadNormIntoAttention(RewritePattern):
    """Qwen3's per-head RMSNorm of q and k, applied before their RoPE, into the attention (which
    then normalises, then rotates). A norm of an already rotated q or k stays, and the tile pass
    names it: the attention rotates after it normalises."""
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: AttentionOp, rewriter: PatternRewriter):
        hd = op.head_dim.value.data
        q, k = _head_norm(op.q, hd), _head_norm(op.k, hd)
        if op.q_norm is not None or q is None or k is None or q.eps != k.eps:
            return
        if isinstance(q.input.owner, RopeOp) or isinstance(k.input.owner, RopeOp):
            return
        rewriter.replace(op, op.rebuilt(q=q.input, k=k.input, q_norm=q.weight, k_norm=k.weight,
                                        norm_eps=q.eps.value.data))
        for norm in {q, k}:
            if not norm.result.uses.get_length():
                rewriter.erase(norm)


@dataclass(frozen=True)
class FusePass(ModulePass):
    name = "fuse"
    gate_up: bool = True     # False: silu_mul only as a prologue (the plan before gated linears, for ablations)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        # first the prologues and epilogues, so that gate and up show their final form; then the
        # SwiGLU, the gated form first (it visits the silu_mul before its consumer)
        PatternRewriteWalker(GreedyRewritePatternApplier([
            RMSNormIntoLinear(), ResidualIntoLinear(), RopeIntoAttention(), HeadNormIntoAttention(),
        ])).rewrite_module(op)
        swiglu = [GateUpIntoLinear()] if self.gate_up else []
        PatternRewriteWalker(GreedyRewritePatternApplier([*swiglu, SiluMulIntoLinear()])).rewrite_module(op)
