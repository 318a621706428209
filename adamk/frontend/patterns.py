"""Pattern recogniser shared by the torch and ONNX frontends.

A frontend walks its graph in order and calls one method per primitive (`mul`, `pow`,
`linear`, ...). Each call returns a symbolic value: either a tensor already placed in
the graph IR (`act`), or a partial pattern (`normed`, `rot`, `scores`, ...) that only
becomes IR once it completes. RMSNorm (of the hidden state, or of each head of q and k as
Qwen3 does), RoPE, GQA attention with a KV cache and SwiGLU are recognised in their
decomposed forms; anything else stops with the op and node named. Both frontends share this
code, so they build the same IR for the same model.

A whole model (token ids in, logits out) is the layers' patterns in sequence between an
embedding and the LM head; its KV caches are one stack per K and V, whose layer i a
decoder layer reads as a view (`select_layer`; ONNX: `gather`) and writes back
(`select_scatter`; ONNX: `scatter_elements`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, bf16, f32, i64
from xdsl.ir import Block, Region

from ..dialects.graph import (
    AddOp, ArgmaxOp, AttentionOp, EmbeddingOp, HeadRMSNormOp, LinearOp, RMSNormOp, RopeOp, SiluMulOp, WeightOp,
)
from ..errors import FrontendError
from ..names import quoted

ELEMENT_TYPES = {"float32": f32, "bfloat16": bf16}


@dataclasses.dataclass
class Sym:
    """A symbolic value: `kind` says what pattern it is; `ssa` is set for placed tensors."""
    kind: str
    shape: tuple[int, ...] = ()
    ssa: object = None
    f: dict = dataclasses.field(default_factory=dict)

    def __getattr__(self, key):
        try:
            return self.__dict__["f"][key]
        except KeyError:
            raise AttributeError(key) from None


def _described(a) -> str:
    """A value in an error: its kind and shape, and the weight of the linear that made it (a weight
    of the wrong shape shows up where its output is reshaped into heads)."""
    if not isinstance(a, Sym):
        return str(a)
    text = f"{a.kind} {list(a.shape)}"
    owner = getattr(a.ssa, "owner", None)
    weight = getattr(getattr(owner, "weight", None), "owner", None)
    if owner is not None and getattr(owner, "name", "") == "adamk.linear" and hasattr(weight, "weight_name"):
        text += f" (the output of linear {quoted(weight.weight_name.data)} {list(weight.result.type.get_shape())})"
    return text


def _is(v, *kinds):
    """An ONNX initializer ("init") can serve as a weight or as a constant, by use."""
    if not isinstance(v, Sym):
        return False
    return v.kind in kinds or (v.kind == "init" and bool({"const", "weight"} & set(kinds)))


def _known_const(v) -> bool:
    return _is(v, "const") and v.f.get("value") is not None


def _scalar(v) -> float | None:
    if _is(v, "const") and v.f.get("value") is not None and v.value.size == 1:
        return float(v.value.reshape(()))
    return None


def _vector(v) -> tuple | None:
    if _is(v, "const") and v.f.get("value") is not None and v.value.ndim == 1:
        return tuple(float(x) for x in v.value)
    return None


class GraphBuilder:
    """Accumulates graph-level ops; `where` names the current source node for errors."""

    def __init__(self, dtype: str):
        if dtype not in ELEMENT_TYPES:
            raise FrontendError(f"unsupported model dtype {dtype}; expected one of {sorted(ELEMENT_TYPES)}")
        self.elem = ELEMENT_TYPES[dtype]
        self.ops: list = []
        self.args: list = []
        self.weights: dict[str, Sym] = {}
        self.uses: dict[str, str] = {}          # weight name -> what it is used as
        self.where = "?"
        self.block = Block()

    # ---- leaves ------------------------------------------------------------------------
    def _arg(self, type):
        return self.block.insert_arg(type, len(self.block.args))

    def input(self, shape) -> Sym:
        if len(shape) != 2:
            raise FrontendError(f"hidden-state input must be [batch, hidden], got {list(shape)} ({self.where})")
        if shape[0] != 1:
            raise FrontendError(f"the model was traced at batch {shape[0]}: trace one sequence ([1, hidden]); "
                                f"CompileConfig.batch_size sets the batch ({self.where})")
        return Sym("act", tuple(shape), self._arg(TensorType(self.elem, list(shape))))

    def token(self, shape) -> Sym:
        """A whole model's first input: the id of the token at `pos`, which `embedding` turns
        into the hidden state."""
        if tuple(shape) != (1,):
            raise FrontendError(f"token ids must be [1] (one token per decode step), got {list(shape)} ({self.where})")
        return Sym("token", (1,), self._arg(TensorType(i64, [1])))

    def position(self) -> Sym:
        """The step's position: a scalar in the traced model, [batch] in the graph (one per
        sequence; the batch pass widens the traced batch of 1)."""
        return Sym("pos", (), self._arg(TensorType(i64, [1])))

    def kv_cache(self, shape) -> Sym:
        """One layer's cache [batch, kv_heads, max_seq_len, head_dim], or every layer's stacked
        [layers, ...] (a whole model): `appended` maps a layer to the KV append that
        `select_scatter` put back into the stack."""
        if len(shape) not in (4, 5):
            raise FrontendError(f"KV cache must be [batch, kv_heads, max_seq_len, head_dim] or stacked per layer "
                                f"[layers, batch, kv_heads, max_seq_len, head_dim], got {list(shape)} ({self.where})")
        ssa = self._arg(TensorType(self.elem, list(shape)))
        if len(shape) == 4:
            return Sym("cache", tuple(shape), ssa)
        return Sym("cache_stack", tuple(shape), ssa, {"appended": {}})

    def weight(self, name: str, shape, check=None, aliases=()) -> Sym:
        """`check()` runs if the tensor is used as a weight (its dtype, finite values); `aliases`:
        other names of the same tensor (a tied embedding), under which a checkpoint may hold it."""
        return Sym("weight", tuple(shape), None, {"name": name, "check": check, "aliases": tuple(aliases)})

    def const(self, value) -> Sym:
        a = np.asarray(value)
        a = a if a.dtype.kind in "iub" else a.astype(np.float64)     # shapes and indices stay integers
        return Sym("const", a.shape, None, {"value": a})

    def initializer(self, name: str, shape, value=None, check=None) -> Sym:
        """A named tensor that is a weight or a constant depending on its use (ONNX).
        `value` is given for small tensors only; weights are never read at compile time.
        `check()` runs if it is used as a weight."""
        value = None if value is None else np.asarray(value)
        return Sym("init", tuple(shape), None, {"name": name, "value": value, "check": check})

    def _placed_weight(self, w: Sym, use: str):
        """The IR value of weight `w`, placed once; `use` says what it serves as. One tensor with two
        uses (tied embeddings: the LM head's weight is the embedding table) is refused: the device
        stores an embedding table by rows, a linear weight by pages, so each use needs its own
        name (the torch frontend names a tied parameter by each module using it)."""
        first = self.uses.setdefault(w.name, use)
        if first != use:
            self.fail(f"weight {quoted(w.name)} as the {use}: it is already the {first} (tied weights?); the "
                      f"device stores the two differently, so each use needs a tensor of its own name")
        if w.name not in self.weights:
            if w.f.get("check") is not None:
                w.check()
            op = WeightOp(w.name, TensorType(self.elem, list(w.shape)), aliases=w.f.get("aliases"))
            self.ops.append(op)
            self.weights[w.name] = op.result
        return self.weights[w.name]

    def _emit(self, op, shape):
        self.ops.append(op)
        return Sym("act", tuple(shape), op.result)

    def fail(self, what: str):
        raise FrontendError(f"cannot place {what} at node {self.where}")

    def finite(self, value, what: str, positive: bool = False):
        """`value` (a scalar or a vector the kernel is built with) must be finite (and > 0)."""
        v = np.asarray(value, np.float64)
        if not np.isfinite(v).all() or (positive and not (v > 0).all()):
            raise FrontendError(f"{what} is {v.tolist() if v.size <= 4 else 'a vector with NaN, Inf or zeros'} at node "
                                f"{self.where}; it must be {'positive and ' if positive else ''}finite")
        return value

    # ---- shape-only ops ----------------------------------------------------------------
    def cast(self, a):
        if _is(a, "pos"):
            return Sym("posf", (), a.ssa)
        return a

    def item(self, a):
        """A tensor as a Python number: only the position is one (an index, e.g. k_caches[pos])."""
        if _is(a, "pos"):
            return a
        self.fail(f"item of {_kind(a)}")

    def reshape(self, a, shape):
        shape = [int(s) for s in shape]
        if _known_const(a):
            return self.const(a.value.reshape(shape))
        if -1 in shape and isinstance(a, Sym):          # ONNX and torch both allow one inferred extent
            known = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = math.prod(a.shape) // max(known, 1)
        shape = tuple(shape)
        if _is(a, "act") and math.prod(shape) == math.prod(a.shape):
            return Sym("act", shape, a.ssa)
        if _is(a, "cos", "sin", "causal_bias") and math.prod(shape) == math.prod(a.shape):
            return Sym(a.kind, shape, None, dict(a.f))        # broadcast views of RoPE tables / the mask
        if _is(a, "expanded") and len(shape) == 4 and shape[1] == a.cache.shape[1] * a.group:
            return Sym("repeated", shape, None, {"cache": a.cache, "new": a.new, "group": a.group})
        if _is(a, "pos", "posf", "token") and math.prod(shape) == 1:      # token ids [1] as HF's input_ids [1, 1]
            return Sym(a.kind, shape, a.ssa, dict(a.f))
        self.fail(f"reshape of {_described(a)} to {list(shape)}")

    def transpose(self, a, d0, d1):
        if not isinstance(a, Sym):
            self.fail("transpose")
        perm = list(range(len(a.shape)))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return self.permute(a, perm)

    def permute(self, a, perm):
        """Only moves of size-1 dims: they keep the memory order, so the value is a view.
        A KV cache may be permuted around a scatter (ONNX writes index_copy that way)."""
        perm = [int(p) % len(a.shape) for p in perm] if isinstance(a, Sym) else perm
        if _known_const(a) and a.kind == "const":    # not an initializer: its transpose may be W^T of a MatMul
            return self.const(np.transpose(a.value, perm))
        if _is(a, "freqs"):
            return Sym("freqs", tuple(a.shape[d] for d in perm), None, dict(a.f))
        if a.kind in ("init", "weight") and perm == [1, 0]:
            return Sym("weight_t", tuple(reversed(a.shape)), None, {"of": a})   # W^T feeding a MatMul
        if _is(a, "cache"):
            return Sym("cache_t", tuple(a.shape[d] for d in perm), None, {"cache": a, "perm": perm})
        if _is(a, "appended_t") and [a.perm[d] for d in perm] == list(range(len(perm))):
            return Sym("appended", a.cache.shape, None, {"cache": a.cache, "new": a.new})
        if _is(a, "repeated") and perm == [0, 1, 3, 2]:
            return Sym("keys_t", a.shape, None, dict(a.f))
        if _is(a, "act"):
            kept = [d for d in perm if a.shape[d] != 1]
            if kept == sorted(kept):
                return Sym("act", tuple(a.shape[d] for d in perm), a.ssa, dict(a.f))
        self.fail(f"permute {list(perm)} of {_kind(a)}")

    # ---- arithmetic --------------------------------------------------------------------
    def pow(self, a, exponent):
        exponent = _scalar(exponent) if isinstance(exponent, Sym) else exponent
        if _is(a, "act") and exponent == 2.0:
            return Sym("sq", a.shape, None, {"x": a})
        self.fail(f"pow(**{exponent})")

    def mean(self, a, dims, keepdim):
        if _is(a, "sq") and [d % len(a.shape) for d in dims] == [len(a.shape) - 1] and keepdim:
            return Sym("meansq", a.shape[:-1] + (1,), None, dict(a.f))
        self.fail("mean")

    def rsqrt(self, a):
        if _is(a, "meansq_eps"):
            return Sym("invrms", a.shape, None, dict(a.f))
        self.fail("rsqrt")

    def sqrt(self, a):
        if _is(a, "meansq_eps"):
            return Sym("rms", a.shape, None, dict(a.f))
        self.fail("sqrt")

    def reciprocal(self, a):
        if _is(a, "rms"):
            return Sym("invrms", a.shape, None, dict(a.f))
        self.fail("reciprocal")

    def neg(self, a):
        if _is(a, "half") and a.upper:
            return Sym("neghi", a.shape, None, dict(a.f))
        self.fail("neg")

    def cos(self, a):
        if _is(a, "emb"):
            return Sym("cos", a.shape, None, dict(a.f))
        self.fail("cos")

    def sin(self, a):
        if _is(a, "emb"):
            return Sym("sin", a.shape, None, dict(a.f))
        self.fail("sin")

    def sigmoid(self, a):
        if _is(a, "act"):
            return Sym("sigmoid", a.shape, None, {"x": a})
        self.fail("sigmoid")

    def silu(self, a):
        if _is(a, "act"):
            return Sym("silu", a.shape, None, {"x": a})
        self.fail("silu")

    def add(self, a, b):
        for x, y in ((a, b), (b, a)):
            if _is(x, "meansq") and _scalar(y) is not None:
                eps = self.finite(_scalar(y), "the RMSNorm epsilon")
                if eps < 0:
                    self.fail(f"an RMSNorm with a negative epsilon {eps}")
                return Sym("meansq_eps", x.shape, None, {**x.f, "eps": eps})
            if _is(x, "rope_cos") and _is(y, "rot_sin") and x.x.ssa is y.x.ssa and x.inv_freq is y.inv_freq:
                hd = 2 * len(x.inv_freq)
                return self._emit(RopeOp(_flat(self, x.x), self._pos, hd, x.inv_freq), x.x.shape)
            if _is(x, "scaled") and _is(y, "causal_bias") and y.n == x.keys.cache.shape[2]:
                return Sym("masked", x.shape, None, dict(x.f))
        if _is(a, "act") and _is(b, "act"):
            if math.prod(a.shape) != math.prod(b.shape):
                self.fail(f"add of shapes {list(a.shape)} and {list(b.shape)}")
            return self._emit(AddOp(a.ssa, b.ssa), _shape2(a))
        self.fail(f"add({_kind(a)}, {_kind(b)})")

    def sub(self, a, b):
        self.fail(f"sub({_kind(a)}, {_kind(b)})")

    def mul(self, a, b):
        for x, y in ((a, b), (b, a)):
            if _scalar(y) == 1.0 and isinstance(x, Sym) and x.kind != "const":
                return x                                     # HF's attention_scaling of 1.0
            if _is(x, "act") and _is(y, "invrms") and y.x.ssa is x.ssa:
                return Sym("normed", x.shape, None, dict(y.f))
            if _is(x, "weight") and _is(y, "normed") and x.shape == y.x.shape[-1:]:
                if x.shape[0] < y.x.ssa.type.get_shape()[-1]:     # each head of a [.., heads, head_dim] view
                    return self._emit(HeadRMSNormOp(y.x.ssa, self._placed_weight(x, "head RMSNorm weight"), y.eps),
                                      y.x.shape)
                return self._emit(RMSNormOp(y.x.ssa, self._placed_weight(x, "RMSNorm weight"), y.eps), y.x.shape)
            if _is(x, "posf") and _vector(y) is not None:
                self._pos = x.ssa
                return Sym("freqs", y.shape, None, {"inv_freq": self.finite(_vector(y), "the RoPE inv_freq")})
            if _is(x, "act") and _is(y, "cos"):
                return Sym("rope_cos", x.shape, None, {"x": _with_flat(x), "inv_freq": y.inv_freq})
            if _is(x, "rot") and _is(y, "sin") and x.inv_len == len(y.inv_freq):
                return Sym("rot_sin", x.shape, None, {"x": x.x, "inv_freq": y.inv_freq})
            if _is(x, "scores") and _scalar(y) is not None:
                return Sym("scaled", x.shape, None, {**x.f, "scale": self.finite(_scalar(y), "the attention scale",
                                                                                 positive=True)})
            if _is(x, "silu") and _is(y, "act"):
                return self._emit(SiluMulOp(x.x.ssa, y.ssa), _shape2(x.x))
            if _is(x, "sigmoid") and _is(y, "act") and x.x.ssa is y.ssa:
                return Sym("silu", y.shape, None, {"x": y})
        self.fail(f"mul({_kind(a)}, {_kind(b)})")

    def div(self, a, b):
        if _scalar(b) is not None:    # x / d runs in float32 whatever d's source precision: round d first
            d = float(np.float32(self.finite(_scalar(b), "a divisor")))
            if d == 0.0:
                self.fail(f"a division of {_kind(a)} by zero")
            return self.mul(a, self.const(1.0 / d))
        if _scalar(a) == 1.0 and _is(b, "rms"):
            return Sym("invrms", b.shape, None, dict(b.f))
        self.fail(f"div({_kind(a)}, {_kind(b)})")

    # ---- structure ---------------------------------------------------------------------
    def slice(self, a, dim, start, end):
        if _known_const(a):
            index = [slice(None)] * a.value.ndim
            index[dim] = slice(start, min(end, a.value.shape[dim]))
            return self.const(a.value[tuple(index)])
        if _is(a, "act"):
            nd, last = len(a.shape), a.shape[-1]
            end = min(end, last)
            if dim % nd == nd - 1 and 2 * (end - start) == last and start in (0, last // 2):
                return Sym("half", a.shape[:-1] + (last // 2,), None,
                           {"x": _with_flat(a), "upper": start != 0})
        self.fail(f"slice(dim={dim}, {start}:{end}) of {_kind(a)}")

    def cat(self, parts, dim):
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            x, y = parts
            if _is(x, "freqs") and _is(y, "freqs") and x.inv_freq == y.inv_freq:
                return Sym("emb", (2 * x.shape[0],), None, dict(x.f))
            if _is(x, "neghi") and _is(y, "half") and not y.upper and x.x.ssa is y.x.ssa:
                return Sym("rot", x.x.shape, None, {"x": x.x, "inv_len": x.x.shape[-1] // 2})
        self.fail(f"cat of {[_kind(p) for p in parts]}")

    def linear(self, a, w, bias=None):
        """y = a @ w^T (+ bias); w is [out_features, in_features] as torch stores it."""
        if not (_is(a, "act") and _is(w, "weight") and len(w.shape) == 2):
            self.fail(f"linear({_kind(a)}, {_kind(w)})")
        if a.shape[-1] != w.shape[1]:
            self.fail(f"linear with input features {a.shape[-1]} and weight {list(w.shape)}")
        b = None
        if bias is not None:
            if not _is(bias, "weight"):
                self.fail(f"linear bias that is a {_kind(bias)}")
            b = self._placed_weight(bias, "linear bias")
        batch = math.prod(a.shape[:-1])
        return self._emit(LinearOp(_flat(self, a), self._placed_weight(w, "linear weight"), bias=b),
                          (batch, w.shape[0]))

    def index_copy(self, cache, dim, index, value):
        if _is(cache, "cache") and _is(index, "pos") and _is(value, "act") and dim % 4 == 2:
            self._pos = index.ssa
            return Sym("appended", cache.shape, None, {"cache": cache, "new": _with_flat(value)})
        self.fail(f"index_copy into {_kind(cache)} at {_kind(index)}")

    def select_layer(self, stack, dim, index):
        """Layer `index` of a stacked KV cache (k_caches[i]): a cache whose ssa is the stack's and
        that remembers its `layer`; once `select_scatter` put the layer's append back, the append
        itself (torch reads an index_copy_ into k_caches[i] back out of the updated stack)."""
        if not (_is(stack, "cache_stack") and dim % 5 == 0):
            self.fail(f"select(dim={dim}) of {_kind(stack)}")
        if not isinstance(index, int):
            self.fail(f"select of KV cache layer {_kind(index)}: the layer index must be a constant")
        layer = index % stack.shape[0]
        if layer in stack.appended:
            return stack.appended[layer]
        return Sym("cache", stack.shape[1:], stack.ssa, {"layer": layer})

    def select_scatter(self, stack, src, dim, index):
        """Layer `index` of a stacked KV cache replaced (torch's functional index_copy_ into
        k_caches[i]): only by that layer's append, which gives the stack again."""
        layer = index % stack.shape[0] if _is(stack, "cache_stack") and isinstance(index, int) else None
        if layer is None or dim % 5 != 0 or not _is(src, "appended") or src.cache.ssa is not stack.ssa \
                or src.cache.f.get("layer") != layer:
            at = index if isinstance(index, int) else _kind(index)
            self.fail(f"select_scatter of {_kind(src)} into {_kind(stack)} (dim {dim}, index {at}): only the KV "
                      "cache append of a layer of the stack goes back into that layer")
        return Sym("cache_stack", stack.shape, stack.ssa, {"appended": {**stack.appended, layer: src}})

    def scatter_elements(self, data, indices, updates, axis):
        """ONNX's select_scatter (an index_copy_ into k_caches[i]): a layer's append, unsqueezed to
        [1, ...], scattered into the stack along axis 0 at indices that are all that layer `i`."""
        if _is(updates, "appended_unsq") and updates.axis == 0 and axis % 5 == 0 and _known_const(indices) \
                and indices.value.shape == updates.shape and indices.value.dtype.kind in "iu":
            layers = np.unique(indices.value)
            if len(layers) == 1:
                append = Sym("appended", updates.shape[1:], None, {k: v for k, v in updates.f.items() if k != "axis"})
                return self.select_scatter(data, append, axis, int(layers[0]))
        self.fail(f"scatter of {_kind(updates)} into {_kind(data)} along axis {axis} at {_kind(indices)}: only a "
                  "layer's KV cache append goes back into its layer of the stack, at indices that are all that layer")

    def gather(self, data, indices, axis):
        """ONNX's Gather: the embedding table's row of the token id, or a layer of a stacked KV
        cache at a constant scalar index (k_caches[i])."""
        if _is(indices, "token") and axis % 2 == 0:
            return self.embedding(data, indices)
        if not _is(data, "cache_stack"):
            self.fail(f"gather of {_kind(data)} at {_kind(indices)} (axis {axis})")
        if _known_const(indices) and indices.value.ndim == 0 and indices.value.dtype.kind in "iu":
            return self.select_layer(data, axis, int(indices.value))
        return self.select_layer(data, axis, indices)      # which names what it cannot select

    def embedding(self, table, token):
        """Row `token` of `table` [vocab, hidden]: a whole model's hidden state entering layer 0."""
        if not (_is(token, "token") and _is(table, "weight") and len(table.shape) == 2):
            self.fail(f"embedding of {_kind(token)} in {_kind(table)}")
        return self._emit(EmbeddingOp(token.ssa, self._placed_weight(table, "embedding table")),
                          (*token.shape, table.shape[1]))

    def repeat_interleave(self, a, repeats, dim):
        if _is(a, "appended") and dim % 4 == 1:
            return Sym("repeated", a.shape, None, {**a.f, "group": int(repeats)})
        self.fail(f"repeat_interleave of {_kind(a)}")

    def scatter_nd(self, data, indices, updates):
        """ONNX's index_copy: the cache permuted to put the sequence axis first, row `pos` replaced."""
        if _is(data, "cache_t") and data.perm[0] == 2 and _is(indices, "pos") and _is(updates, "act"):
            self._pos = indices.ssa
            return Sym("appended_t", data.shape, None, {"cache": data.cache, "perm": data.perm,
                                                        "new": _with_flat(updates)})
        self.fail(f"scatter into {_kind(data)} at {_kind(indices)}")

    def unsqueeze(self, a, axis: int):
        if _known_const(a):
            return self.const(np.expand_dims(a.value, axis))
        if _is(a, "pos", "posf"):
            return Sym(a.kind, tuple(_unsqueezed(a.shape, axis)), a.ssa, dict(a.f))
        if _is(a, "cos", "sin", "causal_bias"):
            return self.reshape(a, _unsqueezed(a.shape, axis))
        if _is(a, "appended") and axis % 5 in (0, 2):    # GQA's new head axis; ONNX's select_scatter's layer axis
            return Sym("appended_unsq", tuple(_unsqueezed(a.shape, axis)), None, {**a.f, "axis": axis % 5})
        if _is(a, "act"):
            return self.reshape(a, _unsqueezed(a.shape, axis))
        self.fail(f"unsqueeze of {_kind(a)}")

    def expand(self, a, shape):
        """GQA as ONNX writes repeat_interleave: unsqueeze, expand the new axis, merge it."""
        if _known_const(a):
            shape = [d if d != -1 else a.shape[i - len(shape) + a.value.ndim] for i, d in enumerate(shape)]
            return self.const(np.broadcast_to(a.value, np.broadcast_shapes(a.value.shape, tuple(shape))))
        if _is(a, "act") and math.prod(np.broadcast_shapes(a.shape, tuple(shape))) == math.prod(a.shape):
            return self.reshape(a, np.broadcast_shapes(a.shape, tuple(shape)))      # a no-op broadcast
        if _is(a, "appended_unsq") and a.axis == 2 and len(shape) == 5:
            shape = np.broadcast_shapes(a.shape, tuple(int(s) for s in shape))   # Expand broadcasts
            return Sym("expanded", tuple(shape), None, {**a.f, "group": int(shape[2])})
        self.fail(f"expand of {_kind(a)}")

    def select(self, cond, x, y):
        if _is(cond, "future") and _scalar(x) == -math.inf:
            return self.masked_fill(y, cond, -math.inf)
        self.fail(f"where({_kind(cond)}, {_kind(x)}, {_kind(y)})")

    def arange(self, n):
        return Sym("arange", (int(n),), None, {"n": int(n)})

    def gt(self, a, b):
        if _is(a, "arange") and _is(b, "pos", "posf"):
            return Sym("future", a.shape, None, {"n": a.n})
        v = _vector(a)
        if v is not None and v == tuple(float(i) for i in range(len(v))) and _is(b, "pos", "posf"):
            return Sym("future", a.shape, None, {"n": len(v)})
        self.fail(f"gt({_kind(a)}, {_kind(b)})")

    def masked_fill(self, a, mask, value):
        if _is(a, "const") and _is(mask, "future") and value == -math.inf and a.f.get("value") is not None \
                and not np.any(a.value):
            return Sym("causal_bias", a.shape, None, {"n": mask.n})     # HF's additive mask: 0 / -inf
        if _is(a, "scaled") and _is(mask, "future") and value == -math.inf and mask.n == a.keys.cache.shape[2]:
            return Sym("masked", a.shape, None, dict(a.f))
        self.fail(f"masked_fill of {_kind(a)} with {_kind(mask)}")

    def softmax(self, a, dim):
        if _is(a, "masked") and dim % len(a.shape) == len(a.shape) - 1:
            return Sym("probs", a.shape, None, dict(a.f))
        if _is(a, "scaled"):
            self.fail("softmax over the KV cache without a causal mask")
        self.fail(f"softmax of {_kind(a)}")

    def matmul(self, a, b):
        if _known_const(a) and a.value.shape[-1] == 1 and _is(b, "posf") and math.prod(b.shape) == 1:
            self._pos = b.ssa           # HF's rotary: inv_freq[None, :, None] @ position_ids[:, None, :]
            inv = tuple(float(v) for v in a.value.reshape(-1))
            return Sym("freqs", a.value.shape[:-1] + (1,), None, {"inv_freq": self.finite(inv, "the RoPE inv_freq")})
        if _is(a, "act") and _is(b, "keys_t") and len(a.shape) == 4:
            return Sym("scores", a.shape[:-1] + (b.shape[2],), None, {"q": _with_flat(a), "keys": b})
        if _is(a, "probs") and _is(b, "repeated"):
            return self._attention(a, b)
        self.fail(f"matmul({_kind(a)}, {_kind(b)})")

    def _attention(self, probs, values):
        keys = probs.keys
        kcache, vcache = keys.cache, values.cache
        q = probs.q
        _, nkv, _, hd = kcache.shape
        nh = nkv * keys.group
        if q.shape_flat[-1] != nh * hd or keys.group != values.group:
            self.fail(f"attention with q of {q.shape_flat[-1]} features for {nh} heads x {hd}")
        layer = kcache.f.get("layer")            # set for a layer of stacked caches
        if vcache.f.get("layer") != layer:
            self.fail(f"attention over the keys of KV cache layer {layer} and the values of layer "
                      f"{vcache.f.get('layer')}")
        op = AttentionOp(_flat(self, q), _flat(self, keys.new), _flat(self, values.new), kcache.ssa, vcache.ssa,
                         self._pos, num_heads=nh, num_kv_heads=nkv, head_dim=hd, scale=probs.scale, layer=layer)
        self.ops.append(op)
        return Sym("act", (1, nh, 1, hd), op.result)

    # ---- result ------------------------------------------------------------------------
    def finish(self, output: Sym, mutated: list[Sym]) -> ModuleOp:
        """A layer returns its output; a whole model (it placed an embedding) the argmax of its
        logits, the next token. The mutated inputs are the KV caches: a layer's append, or a
        stack with its layers' appends put back. Only an `adamk.attention` writes a cache, so
        each append must be one that an attention reads."""
        if not _is(output, "act"):
            self.fail(f"graph output that is a {_kind(output)}")
        if any(not _is(m, "appended", "cache_stack") for m in mutated):
            self.fail("a mutated input that is not a KV cache append")
        attended = {(cache, None if op.layer is None else op.layer.value.data)
                    for op in self.ops if isinstance(op, AttentionOp) for cache in (op.k_cache, op.v_cache)}
        for append in (a for m in mutated for a in ([m] if _is(m, "appended") else m.appended.values())):
            if (append.cache.ssa, append.cache.f.get("layer")) not in attended:
                self.fail("a KV cache append that no attention reads")
        result = _flat(self, output)
        if any(isinstance(op, EmbeddingOp) for op in self.ops):
            self.ops.append(ArgmaxOp(result))
            result = self.ops[-1].result
        ret = func.ReturnOp(result)
        self.block.add_ops([*self.ops, ret])
        fn = func.FuncOp("decode_step", ([a.type for a in self.block.args], [ret.operands[0].type]),
                         Region(self.block))
        module = ModuleOp([fn])
        module.verify()
        return module


def _unsqueezed(shape, axis: int) -> list:
    shape = list(shape)
    shape.insert(axis % (len(shape) + 1), 1)
    return shape


def _kind(v):
    return v.kind if isinstance(v, Sym) else type(v).__name__


def _shape2(a: Sym):
    return (a.shape[0], math.prod(a.shape[1:]))


def _with_flat(a: Sym) -> Sym:
    a.f.setdefault("shape_flat", _shape2(a))
    return a


def _flat(builder: GraphBuilder, a: Sym):
    """The rank-2 IR value of an activation (views are free at the graph level)."""
    if a.kind != "act":
        builder.fail(f"use of a {a.kind} as a tensor")
    return a.ssa
