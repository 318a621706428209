"""torch frontend: `torch.export` a decoder module, then feed its functional aten graph,
node by node, to the shared pattern recogniser (`patterns.GraphBuilder`).

The module is one decoder layer, forward(x, pos, k_cache, v_cache) -> y, or a whole model,
forward(token, pos, k_caches, v_caches) -> logits with the caches stacked per layer (its
integer first input tells them apart)."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import FrontendError
from ..finite import all_finite
from ..names import quoted
from .patterns import GraphBuilder

aten = torch.ops.aten

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _passthrough(b, a, *rest, **kw):
    return b.cast(a)


# aten op -> how it becomes recogniser calls. Arguments arrive already mapped to Syms.
_ATEN = {
    aten._assert_tensor_metadata.default: None,
    aten.item.default: lambda b, a: b.item(a),
    aten.to.dtype: _passthrough,
    aten._to_copy.default: _passthrough,
    aten.clone.default: _passthrough,
    aten.contiguous.default: _passthrough,
    aten.alias.default: _passthrough,
    aten.view.default: lambda b, a, shape: b.reshape(a, shape),
    aten.reshape.default: lambda b, a, shape: b.reshape(a, shape),
    aten._unsafe_view.default: lambda b, a, shape: b.reshape(a, shape),
    aten.unsqueeze.default: lambda b, a, d: b.unsqueeze(a, d),
    aten.expand.default: lambda b, a, shape, implicit=False: b.expand(a, shape),
    aten.dropout.default: lambda b, a, p, train: b.cast(a) if not train or p == 0 else b.fail("dropout in training mode"),
    aten.zeros.default: lambda b, shape, **kw: b.const(np.zeros(shape)),
    aten.transpose.int: lambda b, a, d0, d1: b.transpose(a, d0, d1),
    aten.permute.default: lambda b, a, perm: b.permute(a, perm),
    aten.pow.Tensor_Scalar: lambda b, a, e: b.pow(a, e),
    aten.mean.dim: lambda b, a, dims, keepdim=False, **kw: b.mean(a, dims, keepdim),
    aten.add.Tensor: lambda b, x, y, alpha=1: b.add(_c(b, x), _c(b, y)),
    aten.sub.Tensor: lambda b, x, y, alpha=1: b.sub(_c(b, x), _c(b, y)),
    aten.mul.Tensor: lambda b, x, y: b.mul(_c(b, x), _c(b, y)),
    aten.div.Tensor: lambda b, x, y: b.div(_c(b, x), _c(b, y)),
    aten.rsqrt.default: lambda b, a: b.rsqrt(a),
    aten.sqrt.default: lambda b, a: b.sqrt(a),
    aten.reciprocal.default: lambda b, a: b.reciprocal(a),
    aten.neg.default: lambda b, a: b.neg(a),
    aten.cos.default: lambda b, a: b.cos(a),
    aten.sin.default: lambda b, a: b.sin(a),
    aten.sigmoid.default: lambda b, a: b.sigmoid(a),
    aten.silu.default: lambda b, a: b.silu(a),
    aten.slice.Tensor: lambda b, a, dim=0, start=0, end=None, step=1: b.slice(
        a, dim, start or 0, end if end is not None else 2**62),
    aten.cat.default: lambda b, parts, dim=0: b.cat(parts, dim),
    aten.linear.default: lambda b, a, w, bias=None: b.linear(a, w, bias),
    aten.matmul.default: lambda b, x, y: b.matmul(x, y),
    aten.softmax.int: lambda b, a, dim, dtype=None: b.softmax(a, dim),
    aten._softmax.default: lambda b, a, dim, half_to_float: b.softmax(a, dim),
    aten.index_copy.default: lambda b, c, dim, idx, v: b.index_copy(c, dim, idx, v),
    aten.select.int: lambda b, a, dim, index: b.select_layer(a, dim, index),
    aten.select_scatter.default: lambda b, a, src, dim, index: b.select_scatter(a, src, dim, index),
    aten.embedding.default: lambda b, table, token, *flags: b.embedding(table, token),
    aten.repeat_interleave.self_int: lambda b, a, r, dim=None, **kw: b.repeat_interleave(a, r, dim),
    aten.arange.default: lambda b, n, **kw: b.arange(n),
    aten.gt.Tensor: lambda b, x, y: b.gt(x, y),
    aten.gt.Scalar: lambda b, x, y: b.gt(x, y),
    aten.masked_fill.Scalar: lambda b, a, m, v: b.masked_fill(a, m, v),
}


def export(module: torch.nn.Module, example_inputs) -> torch.export.ExportedProgram:
    try:
        ep = torch.export.export(module, tuple(example_inputs))
    except Exception as e:  # torch's own message says what failed to trace
        raise FrontendError(f"torch.export failed: {str(e).splitlines()[0]}") from e
    with warnings.catch_warnings():
        # torch 2.13's run_decompositions deep-copies its own module call graph, whose pytree
        # specs warn that torch's `LeafSpec` check is deprecated: torch's code, not the user's
        # module, so it is not theirs to see on every compile
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        return ep.run_decompositions({})


def import_module(module: torch.nn.Module, example_inputs):
    """torch module -> graph-level IR (builtin.module with one func.func @decode_step)."""
    ep = export(module, example_inputs)
    sig = ep.graph_signature
    state = {**dict(ep.named_parameters()), **dict(ep.named_buffers()), **ep.constants}
    tensors = {**sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    user_inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in sig.user_inputs]
    if len(user_inputs) != 4:
        raise FrontendError(f"expected a decode step taking (x, pos, k_cache, v_cache) or (token, pos, k_caches, "
                            f"v_caches), got {len(user_inputs)} inputs "
                            f"({', '.join(quoted(n.name) for n in user_inputs[:6])})")
    first = user_inputs[0].meta["val"].dtype
    whole = not first.is_floating_point          # token ids: a whole model
    if whole and first != torch.int64:
        raise FrontendError(f"{quoted(user_inputs[0].name)} holds token ids of dtype {first}; adamk takes int64 ids")
    elem = user_inputs[2 if whole else 0].meta["val"].dtype     # the activations' dtype: the caches' in a whole model
    dtype = _DTYPES.get(elem)
    if dtype is None:
        raise FrontendError(f"unsupported input dtype {elem}")
    b = GraphBuilder(dtype)
    env: dict = {}
    leaves = {"input": b.input, "token": b.token, "position": lambda shape: b.position(), "kv_cache": b.kv_cache}
    roles = ["token" if whole else "input", "position", "kv_cache", "kv_cache"]
    for node, role in zip(user_inputs, roles):
        b.where = f"{quoted(node.name)} (placeholder)"
        env[node.name] = leaves[role](tuple(node.meta["val"].shape))

    tied = _tied_names(sig.inputs_to_parameters.values(), state)

    def weight(name):
        return b.weight(name, tuple(state[name].shape), check=lambda: _check_weight(name, state[name]),
                        aliases=[n for n in tied.get(name, []) if n != name])
    for node in ep.graph.nodes:
        b.where = f"{quoted(node.name)} ({quoted(node.target)})"
        if node.op == "placeholder":
            if node.name in sig.inputs_to_parameters:         # bound at load time, never read here
                env[node.name] = weight(sig.inputs_to_parameters[node.name])
            elif node.name in tensors:                         # buffers and constants: a weight or a constant by use
                target = tensors[node.name]
                val = state[target].detach()
                env[node.name] = b.initializer(target, tuple(val.shape),
                                               val.float().numpy() if val.numel() <= 1 << 16 else None,
                                               check=lambda t=target: _check_weight(t, state[t]))
            continue
        if node.op == "output":
            outs = [env.get(a.name) if hasattr(a, "name") else a for a in node.args[0]]
            mutated = outs[:len(sig.buffers_to_mutate) + len(sig.user_inputs_to_mutate)]
            return b.finish(outs[-1], mutated), ep
        if node.target not in _ATEN:
            raise FrontendError(f"cannot place op {quoted(node.target)} at node {quoted(node.name)}")
        fn = _ATEN[node.target]
        if fn is None:
            continue
        user = _module_path(node)

        def value(n):
            return _named_by_user(env[n.name], tied, user, weight)
        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "pin_memory", "layout", "dtype", "memory_format")}
        env[node.name] = fn(b, *args, **kwargs)
    raise FrontendError("exported graph has no output node")


def _tied_names(names, state) -> dict[str, list[str]]:
    """name -> every name of its tensor, for the parameters that have several (tied embeddings:
    HF's `lm_head.weight` is `model.embed_tokens.weight`; torch.export keeps one placeholder)."""
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(id(state[name]), []).append(name)
    return {n: group for group in groups.values() if len(group) > 1 for n in group}


def _module_path(node) -> str | None:
    """The qualified name of the innermost module whose forward made `node` (e.g. `lm_head`)."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def _named_by_user(value, tied, user, weight):
    """A tied parameter named, at a use, by the module using it: the embedding reads
    `model.embed_tokens.weight`, the LM head `lm_head.weight`. Each name becomes a buffer of its
    own, as it must: the device stores an embedding table by rows and a linear weight by pages."""
    if getattr(value, "kind", None) != "weight" or value.name not in tied or user is None:
        return value
    own = [n for n in tied[value.name] if n.rpartition(".")[0] == user]
    return weight(own[0]) if own else value


def _check_weight(name: str, tensor):
    """Weights are float32 or bfloat16 (never silently converted) and finite."""
    if tensor.dtype not in _DTYPES:
        raise FrontendError(f"weight {quoted(name)} is {tensor.dtype}; adamk takes float32 or bfloat16 weights")
    if not all_finite(tensor):
        raise FrontendError(f"weight {quoted(name)} holds NaN or Inf values")


def _c(b: GraphBuilder, a):
    """A Python number in a tensor position (add(x, eps)) becomes a constant."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return b.const(a)
    return a
