"""Graph level of the `adamk` dialect: whole-tensor decoder ops.

Activations are rank-2 tensors ``[batch, features]``; weights are `adamk.weight` ops
named after the source model's parameters; the KV caches are function arguments of
shape ``[batch, kv_heads, max_seq_len, head_dim]`` that `adamk.attention` appends to, and
``pos`` ``[batch]`` holds each sequence's position. A frontend writes a batch of 1 (one traced
sequence); the batch pass widens it to the deployment's (passes/batch.py): the sequences of a
batch share the weights and nothing else.
After fusion, `adamk.linear` carries its prologue (rmsnorm or silu_mul of its inputs),
bias and residual epilogue, and `adamk.attention` carries the RoPE of q and k (and, for Qwen3,
their per-head RMSNorm).

A whole model takes the token ids (`adamk.embedding` gathers the hidden state), keeps every
layer's KV cache in one stacked argument ``[layers, batch, kv_heads, max_seq_len, head_dim]``
(an attention names its `layer`), and ends in `adamk.argmax` of the LM head's logits. The
`layers` pass folds its identical decoder layers into one: the ops between `adamk.layer_input`
and `adamk.layer_output` then run once per layer, on layer-indexed weights (`layer_names`),
caches and activations (passes/layers.py).
"""
from __future__ import annotations

from typing import ClassVar

from xdsl.dialects.builtin import ArrayAttr, DenseArrayBase, FloatAttr, IntegerAttr, StringAttr, TensorType, f32, i64
from xdsl.irdl import (
    AttrSizedOperandSegments, IRDLOperation, irdl_op_definition, operand_def, opt_operand_def,
    opt_prop_def, prop_def, result_def,
)
from xdsl.utils.exceptions import VerifyException

from ..config import CONSUMER_WARPS, MAX_TILE_ROWS

PROLOGUES = ("none", "rmsnorm", "silu_mul")


def shape_of(value) -> tuple[int, ...]:
    return tuple(value.type.get_shape())


def _check_positions(op, pos, batch: int):
    if shape_of(pos) != (batch,):
        raise VerifyException(f"{op.name}: pos has shape {list(shape_of(pos))}, expected [{batch}] (one position per "
                              "sequence of the batch)")


def _features(op, value, what: str) -> int:
    shape = shape_of(value)
    if len(shape) != 2:
        raise VerifyException(f"{op.name}: {what} must be [batch, features], got {list(shape)}")
    return shape[1]


@irdl_op_definition
class WeightOp(IRDLOperation):
    """A model parameter bound at load time; `weight_name` is its state_dict key. Inside a layer
    loop, `layer_names` names the parameter of every layer in turn (the first is `weight_name`)."""
    name = "adamk.weight"
    weight_name = prop_def(StringAttr)
    layer_names = opt_prop_def(ArrayAttr)
    aliases = opt_prop_def(ArrayAttr)      # other names of the same tensor in the source (tied embeddings)
    result = result_def(TensorType)

    def __init__(self, weight_name: str, type: TensorType, layer_names=None, aliases=None):
        props = {"weight_name": StringAttr(weight_name)}
        if layer_names is not None:
            props["layer_names"] = ArrayAttr([StringAttr(n) for n in layer_names])
        if aliases:
            props["aliases"] = ArrayAttr([StringAttr(n) for n in aliases])
        super().__init__(properties=props, result_types=[type])

    @property
    def alias_names(self) -> list[str]:
        return [n.data for n in self.aliases.data] if self.aliases is not None else []

    @property
    def names(self) -> list[str]:
        """The parameter's name per layer (one name outside a layer loop)."""
        if self.layer_names is None:
            return [self.weight_name.data]
        return [n.data for n in self.layer_names.data]

    def verify_(self):
        names = self.names
        if names[0] != self.weight_name.data or len(set(names)) != len(names):
            raise VerifyException(f"adamk.weight '{self.weight_name.data}': layer_names must start with its "
                                  "weight_name and name each layer's parameter once")


class _RMSNorm(IRDLOperation):
    """An RMSNorm's operands: the input, its weight and eps; the result has the input's shape."""
    input = operand_def(TensorType)
    weight = operand_def(TensorType)
    eps = prop_def(FloatAttr)
    result = result_def(TensorType)

    def __init__(self, input, weight, eps: float):
        super().__init__(operands=[input, weight], properties={"eps": FloatAttr(eps, f32)},
                         result_types=[input.type])


@irdl_op_definition
class RMSNormOp(_RMSNorm):
    """y = x * rsqrt(mean(x^2) + eps) * weight, over the feature axis."""
    name = "adamk.rmsnorm"

    def verify_(self):
        n = _features(self, self.input, "input")
        if shape_of(self.weight) != (n,):
            raise VerifyException(f"adamk.rmsnorm: weight has shape {list(shape_of(self.weight))}, "
                                  f"expected [{n}] to match input features")


@irdl_op_definition
class LinearOp(IRDLOperation):
    """y = prologue(input[, input2]) @ weight^T (+ bias) (+ residual); with `weight2` (a gated
    linear) y = silu(x @ weight^T) * (x @ weight2^T), x = prologue(input[, input2]).

    prologue "rmsnorm" normalises `input` with `norm_weight` (eps); "silu_mul" feeds
    silu(input) * input2. The `fuse` pass fuses both, and a SwiGLU's gate and up projections
    of one input into one gated linear (its tasks stream both weights' rows and write
    silu(gate) * up, so the down projection stages one vector, not two).
    """
    name = "adamk.linear"
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    input = operand_def(TensorType)
    weight = operand_def(TensorType)
    input2 = opt_operand_def(TensorType)
    norm_weight = opt_operand_def(TensorType)
    bias = opt_operand_def(TensorType)
    residual = opt_operand_def(TensorType)
    weight2 = opt_operand_def(TensorType)
    prologue = prop_def(StringAttr)
    eps = opt_prop_def(FloatAttr)
    tile_rows = opt_prop_def(IntegerAttr)   # set by the ksplit pass: output rows of one task
    k_split = opt_prop_def(IntegerAttr)     # set by the ksplit pass: parts of the reduction over K
    result = result_def(TensorType)

    def __init__(self, input, weight, *, bias=None, input2=None, norm_weight=None, residual=None, weight2=None,
                 prologue: str = "none", eps: float | None = None):
        batch = shape_of(input)[0]
        out = TensorType(input.type.get_element_type(), [batch, shape_of(weight)[0]])
        props = {"prologue": StringAttr(prologue)}
        if eps is not None:
            props["eps"] = FloatAttr(eps, f32)
        opt = lambda v: [v] if v is not None else []
        super().__init__(operands=[input, weight, opt(input2), opt(norm_weight), opt(bias), opt(residual),
                                   opt(weight2)],
                         properties=props, result_types=[out])

    def verify_(self):
        k = _features(self, self.input, "input")
        w = shape_of(self.weight)
        if len(w) != 2 or w[1] != k:
            raise VerifyException(f"adamk.linear: weight has shape {list(w)}, expected [N, {k}] "
                                  f"to match input features {k}")
        out = shape_of(self.result)
        if out != (shape_of(self.input)[0], w[0]):
            raise VerifyException(f"adamk.linear: result shape {list(out)} != [batch, {w[0]}]")
        p = self.prologue.data
        if p not in PROLOGUES:
            raise VerifyException(f"adamk.linear: unknown prologue '{p}', expected one of {PROLOGUES}")
        if (p == "rmsnorm") != (self.norm_weight is not None) or (p == "rmsnorm") != (self.eps is not None):
            raise VerifyException("adamk.linear: prologue 'rmsnorm' needs norm_weight and eps, and only it")
        if (p == "silu_mul") != (self.input2 is not None):
            raise VerifyException("adamk.linear: prologue 'silu_mul' needs input2, and only it")
        _verify_tiling(self, k)
        if self.input2 is not None and shape_of(self.input2) != shape_of(self.input):
            raise VerifyException(f"adamk.linear: input2 shape {list(shape_of(self.input2))} != input shape")
        if self.norm_weight is not None and shape_of(self.norm_weight) != (k,):
            raise VerifyException(f"adamk.linear: norm_weight shape {list(shape_of(self.norm_weight))} != [{k}]")
        if self.bias is not None and shape_of(self.bias) != (w[0],):
            raise VerifyException(f"adamk.linear: bias shape {list(shape_of(self.bias))} != [{w[0]}]")
        if self.residual is not None and shape_of(self.residual) != out:
            raise VerifyException(f"adamk.linear: residual shape {list(shape_of(self.residual))} != result {list(out)}")
        if self.weight2 is not None:
            if shape_of(self.weight2) != w:
                raise VerifyException(f"adamk.linear: weight2 has shape {list(shape_of(self.weight2))}, expected "
                                      f"{list(w)} (the gate's)")
            if self.bias is not None or self.residual is not None:
                raise VerifyException("adamk.linear: a gated linear (weight2) takes no bias or residual")
            if self.k_split is not None and self.k_split.value.data != 1:
                raise VerifyException(f"adamk.linear: a gated linear is not split over K (k_split "
                                      f"{self.k_split.value.data}): silu needs the whole sum")
            if self.tile_rows is not None and 2 * self.tile_rows.value.data > MAX_TILE_ROWS:
                raise VerifyException(f"adamk.linear: a gated linear's tile_rows {self.tile_rows.value.data} gives pages "
                                      f"of {2 * self.tile_rows.value.data} rows (of both weights), over "
                                      f"{MAX_TILE_ROWS}")
            if self.tile_rows is not None and self.tile_rows.value.data % CONSUMER_WARPS:
                raise VerifyException(f"adamk.linear: a gated linear's tile_rows {self.tile_rows.value.data} is not a "
                                      f"multiple of {CONSUMER_WARPS} (each warp pairs a gate row with its up row)")


@irdl_op_definition
class RopeOp(IRDLOperation):
    """Rotary embedding (rotate-half form) of every head of `input` at position `pos`."""
    name = "adamk.rope"
    input = operand_def(TensorType)
    pos = operand_def(TensorType)
    head_dim = prop_def(IntegerAttr)
    inv_freq = prop_def(DenseArrayBase)
    result = result_def(TensorType)

    def __init__(self, input, pos, head_dim: int, inv_freq):
        super().__init__(operands=[input, pos], result_types=[input.type], properties={
            "head_dim": IntegerAttr(head_dim, i64),
            "inv_freq": DenseArrayBase.from_list(f32, [float(f) for f in inv_freq])})

    def verify_(self):
        n, hd = _features(self, self.input, "input"), self.head_dim.value.data
        if hd <= 0 or hd % 2 or n % hd:
            raise VerifyException(f"adamk.rope: head_dim {hd} must be even and divide input features {n}")
        if len(self.inv_freq.get_values()) != hd // 2:
            raise VerifyException(f"adamk.rope: inv_freq has {len(self.inv_freq.get_values())} entries, expected {hd // 2}")
        _check_positions(self, self.pos, shape_of(self.input)[0])


@irdl_op_definition
class HeadRMSNormOp(_RMSNorm):
    """RMSNorm of every head of `input` on its own: y[h] = x[h] * rsqrt(mean(x[h]^2) + eps) * weight
    (Qwen3's q_norm and k_norm, before RoPE). The fuse pass moves it into `adamk.attention`."""
    name = "adamk.head_rmsnorm"

    def verify_(self):
        n, w = _features(self, self.input, "input"), shape_of(self.weight)
        if len(w) != 1 or w[0] <= 0 or n % w[0]:
            raise VerifyException(f"adamk.head_rmsnorm: weight has shape {list(w)}, expected [head_dim] with "
                                  f"head_dim dividing the input's {n} features")


@irdl_op_definition
class AttentionOp(IRDLOperation):
    """GQA decode attention of each sequence b of the batch for its token at `pos[b]`: appends
    k, v at `pos[b]` to its caches, then attends q over its cache positions 0..pos[b]. With
    `rope_inv_freq` set, q and k are rotated first (fused RoPE)."""
    name = "adamk.attention"
    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    q = operand_def(TensorType)
    k = operand_def(TensorType)
    v = operand_def(TensorType)
    k_cache = operand_def(TensorType)
    v_cache = operand_def(TensorType)
    pos = operand_def(TensorType)
    q_norm = opt_operand_def(TensorType)    # fused per-head RMSNorm of q and k (before RoPE): [head_dim]
    k_norm = opt_operand_def(TensorType)
    num_heads = prop_def(IntegerAttr)
    num_kv_heads = prop_def(IntegerAttr)
    head_dim = prop_def(IntegerAttr)
    scale = prop_def(FloatAttr)
    rope_inv_freq = opt_prop_def(DenseArrayBase)
    layer = opt_prop_def(IntegerAttr)       # stacked caches [layers, ...]: the layer it reads and appends to
    k_split = opt_prop_def(IntegerAttr)     # set by the ksplit pass: parts of the sequence (flash-decoding)
    norm_eps = opt_prop_def(FloatAttr)      # of q_norm and k_norm
    result = result_def(TensorType)

    def __init__(self, q, k, v, k_cache, v_cache, pos, *, num_heads, num_kv_heads, head_dim, scale,
                 rope_inv_freq=None, layer=None, q_norm=None, k_norm=None, norm_eps=None):
        props = {"num_heads": IntegerAttr(num_heads, i64), "num_kv_heads": IntegerAttr(num_kv_heads, i64),
                 "head_dim": IntegerAttr(head_dim, i64), "scale": FloatAttr(scale, f32)}
        if rope_inv_freq is not None:
            props["rope_inv_freq"] = DenseArrayBase.from_list(f32, [float(f) for f in rope_inv_freq])
        if layer is not None:
            props["layer"] = IntegerAttr(layer, i64)
        if norm_eps is not None:
            props["norm_eps"] = FloatAttr(norm_eps, f32)
        opt = lambda v: [v] if v is not None else []     # noqa: E731
        super().__init__(operands=[q, k, v, k_cache, v_cache, pos, opt(q_norm), opt(k_norm)], properties=props,
                         result_types=[q.type])

    def rebuilt(self, **changes) -> "AttentionOp":
        """This op with some operands or properties replaced (the fuse pass's rewrites)."""
        get = lambda a: a.value.data if a is not None else None     # noqa: E731
        fields = dict(q=self.q, k=self.k, v=self.v, k_cache=self.k_cache, v_cache=self.v_cache, pos=self.pos,
                      num_heads=get(self.num_heads), num_kv_heads=get(self.num_kv_heads),
                      head_dim=get(self.head_dim), scale=get(self.scale),
                      rope_inv_freq=self.rope_inv_freq.get_values() if self.rope_inv_freq is not None else None,
                      layer=get(self.layer), q_norm=self.q_norm, k_norm=self.k_norm, norm_eps=get(self.norm_eps))
        fields.update(changes)
        operands = [fields.pop(n) for n in ("q", "k", "v", "k_cache", "v_cache", "pos")]
        op = AttentionOp(*operands, **fields)
        if self.k_split is not None:
            op.properties["k_split"] = self.k_split
        return op

    @property
    def group(self) -> int:
        """Query heads per KV head (the GQA group; verify_ checks it divides)."""
        return self.num_heads.value.data // self.num_kv_heads.value.data

    def verify_(self):
        nh, nkv, hd = (a.value.data for a in (self.num_heads, self.num_kv_heads, self.head_dim))
        if nkv <= 0 or nh % nkv:
            raise VerifyException(f"adamk.attention: num_heads {nh} is not a multiple of num_kv_heads {nkv}")
        for value, name, heads in ((self.q, "q", nh), (self.k, "k", nkv), (self.v, "v", nkv)):
            if _features(self, value, name) != heads * hd:
                raise VerifyException(f"adamk.attention: {name} has {shape_of(value)[1]} features, "
                                      f"expected {heads} heads x {hd}")
        stacked = self.layer is not None       # [layers, batch, kv_heads, max_seq_len, head_dim]
        batch = shape_of(self.q)[0]
        for value, name in ((self.k, "k"), (self.v, "v")):
            if shape_of(value)[0] != batch:
                raise VerifyException(f"adamk.attention: {name} has batch {shape_of(value)[0]}, q {batch}")
        _check_positions(self, self.pos, batch)
        for value, name in ((self.k_cache, "k_cache"), (self.v_cache, "v_cache")):
            s = shape_of(value)
            s = s[1:] if stacked else s
            if len(s) != 4 or s[0] != batch or s[1] != nkv or s[3] != hd:
                raise VerifyException(f"adamk.attention: {name} has shape {list(shape_of(value))}, expected "
                                      f"[{'layers, ' if stacked else ''}{batch}, {nkv}, max_seq_len, {hd}]")
            if stacked and not 0 <= self.layer.value.data < shape_of(value)[0]:
                raise VerifyException(f"adamk.attention: layer {self.layer.value.data} outside {name}'s "
                                      f"{shape_of(value)[0]} layers")
        if self.rope_inv_freq is not None and len(self.rope_inv_freq.get_values()) != hd // 2:
            raise VerifyException(f"adamk.attention: rope_inv_freq needs {hd // 2} entries")
        norms = (self.q_norm is not None, self.k_norm is not None, self.norm_eps is not None)
        if any(norms) and not all(norms):
            raise VerifyException("adamk.attention: q_norm, k_norm and norm_eps come together")
        for value, name in ((self.q_norm, "q_norm"), (self.k_norm, "k_norm")):
            if value is not None and shape_of(value) != (hd,):
                raise VerifyException(f"adamk.attention: {name} has shape {list(shape_of(value))}, expected [{hd}]")
        _verify_tiling(self, self.max_seq_len)

    @property
    def max_seq_len(self) -> int:
        return shape_of(self.k_cache)[-2]


def _verify_tiling(op, reduction: int):
    """tile_rows / k_split, where the ksplit pass set them, name a tiling the tasks can take."""
    rows = getattr(op, "tile_rows", None)
    if rows is not None and rows.value.data <= 0:
        raise VerifyException(f"{op.name}: tile_rows {rows.value.data} is not positive")
    if op.k_split is not None and not 1 <= op.k_split.value.data <= reduction:
        raise VerifyException(f"{op.name}: k_split {op.k_split.value.data} outside 1..{reduction} "
                              "(the extent of the reduction)")


class _SameShapeBinary(IRDLOperation):
    """Two tensors of one shape in, one of that shape out; NAMES name the operands in errors."""
    NAMES: ClassVar[tuple[str, str]] = ("lhs", "rhs")

    def __init__(self, a, b):
        super().__init__(operands=[a, b], result_types=[a.type])

    def verify_(self):
        a, b = self.operands
        if shape_of(a) != shape_of(b):
            raise VerifyException(f"{self.name}: {self.NAMES[0]} {list(shape_of(a))} and {self.NAMES[1]} "
                                  f"{list(shape_of(b))} differ in shape")


@irdl_op_definition
class SiluMulOp(_SameShapeBinary):
    """silu(gate) * up, elementwise (the SwiGLU activation)."""
    name = "adamk.silu_mul"
    NAMES: ClassVar[tuple[str, str]] = ("gate", "up")
    gate = operand_def(TensorType)
    up = operand_def(TensorType)
    result = result_def(TensorType)


@irdl_op_definition
class AddOp(_SameShapeBinary):
    """Elementwise sum (the residual connections before fusion)."""
    name = "adamk.add"
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)


@irdl_op_definition
class EmbeddingOp(IRDLOperation):
    """The hidden state of `token` [batch] (each sequence's id at its `pos`): row `token[b]` of
    `table` [vocab, hidden]. On the device the ids live in one buffer per sequence, which the
    step's `adamk.argmax` extends, so consecutive steps need no host (passes/tile.py)."""
    name = "adamk.embedding"
    token = operand_def(TensorType)
    table = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, token, table):
        super().__init__(operands=[token, table], result_types=[
            TensorType(table.type.get_element_type(), [shape_of(token)[0], shape_of(table)[1]])])

    def verify_(self):
        if len(shape_of(self.table)) != 2:
            raise VerifyException(f"adamk.embedding: table must be [vocab, hidden], got {list(shape_of(self.table))}")
        if len(shape_of(self.token)) != 1:
            raise VerifyException(f"adamk.embedding: token must be [batch], got {list(shape_of(self.token))}")
        if shape_of(self.result) != (shape_of(self.token)[0], shape_of(self.table)[1]):
            raise VerifyException(f"adamk.embedding: result {list(shape_of(self.result))} != [batch, hidden]")


@irdl_op_definition
class ArgmaxOp(IRDLOperation):
    """Greedy sampling: per sequence, the index of the largest of `logits` [batch, vocab] (the lowest
    on ties), the id of its token at pos + 1."""
    name = "adamk.argmax"
    logits = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, logits):
        super().__init__(operands=[logits], result_types=[TensorType(i64, [shape_of(logits)[0]])])

    def verify_(self):
        _features(self, self.logits, "logits")
        if shape_of(self.result) != shape_of(self.logits)[:1]:
            raise VerifyException(f"adamk.argmax: result {list(shape_of(self.result))} != [batch] of the logits "
                                  f"{list(shape_of(self.logits))}")


@irdl_op_definition
class LayerInputOp(IRDLOperation):
    """Opens a layer loop of `layers` iterations: the hidden state entering layer l, `input` for
    l = 0 and the `adamk.layer_output` operand of layer l - 1 after. The ops up to that
    layer_output are the loop's body; their weights and caches are layer-indexed."""
    name = "adamk.layer_input"
    input = operand_def(TensorType)
    layers = prop_def(IntegerAttr)
    result = result_def(TensorType)

    def __init__(self, input, layers: int):
        super().__init__(operands=[input], properties={"layers": IntegerAttr(layers, i64)},
                         result_types=[input.type])

    def verify_(self):
        if self.layers.value.data < 1:
            raise VerifyException(f"adamk.layer_input: layers {self.layers.value.data} must be at least 1")


@irdl_op_definition
class LayerOutputOp(IRDLOperation):
    """Closes the layer loop: `input` is the body's output, carried into the next layer; the
    result is the last layer's."""
    name = "adamk.layer_output"
    input = operand_def(TensorType)
    result = result_def(TensorType)

    def __init__(self, input):
        super().__init__(operands=[input], result_types=[input.type])


GRAPH_OPS = [WeightOp, RMSNormOp, LinearOp, RopeOp, HeadRMSNormOp, AttentionOp, SiluMulOp, AddOp, EmbeddingOp, ArgmaxOp,
             LayerInputOp, LayerOutputOp]
