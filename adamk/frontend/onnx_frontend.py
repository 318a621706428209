"""ONNX frontend: walk an ONNX decoder graph node by node into the shared pattern recogniser.

Weights stay where they are: the model is loaded without external data, and only small
constants (RoPE frequencies, eps, scales, shapes) are read. A weight's existence is still
checked (inline data or its external file), so a missing initializer is an error here,
not on the GPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FrontendError
from .patterns import GraphBuilder, Sym

SMALL = 1 << 16      # elements: initializers up to this size are read (constants); larger ones never are
FOLD_LIMIT = 4096    # elements: nodes whose inputs are all constants this small are evaluated here

_ELEM = {1: "float32", 16: "bfloat16"}


def _load(path):
    import onnx
    from google.protobuf.message import DecodeError
    p = Path(path)
    if not p.exists():
        raise FrontendError(f"{path}: no such file")
    if p.is_dir():
        raise FrontendError(f"{path} is a directory, not an ONNX file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, TypeError) as e:
        raise FrontendError(f"{path} is not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'truncated or corrupt'})") from e
    if not model.graph.node:
        raise FrontendError(f"{path} is not a valid ONNX model (its graph has no nodes)")
    return model


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _external_file(tensor, base: Path) -> Path | None:
    for kv in tensor.external_data:
        if kv.key == "location":
            return base / kv.value
    return None


def _array(tensor, base: Path):
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    if uses_external_data(tensor):
        load_external_data_for_tensor(tensor, str(base))
    return numpy_helper.to_array(tensor)


def import_onnx(path):
    """ONNX file -> graph-level IR (builtin.module with one func.func @decode_step)."""
    model = _load(path)
    g = model.graph
    base = Path(path).resolve().parent
    init = {t.name: t for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    if len(inputs) != 4:
        raise FrontendError(f"expected a decode step with inputs (x, pos, k_cache, v_cache), got {[i.name for i in inputs]}")
    elem = inputs[0].type.tensor_type.elem_type
    if elem in (6, 7):     # int32 / int64 first input: token ids, i.e. a whole model
        raise FrontendError(f"'{inputs[0].name}' is an integer input (token ids): this is a whole model; adamk "
                            "compiles one decoder layer so far (inputs x, pos, k_cache, v_cache)")
    if elem not in _ELEM:
        raise FrontendError(f"unsupported input element type {elem} for '{inputs[0].name}'")
    b = GraphBuilder(_ELEM[elem])
    env: dict = {}
    for i, role in zip(inputs, ("input", "position", "kv_cache", "kv_cache")):
        b.where = f"'{i.name}' (graph input)"
        shape = tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
        if any(d <= 0 for d in shape):
            raise FrontendError(f"input '{i.name}' has a dynamic shape {list(shape)}; export with static shapes")
        env[i.name] = b.input(shape) if role == "input" else b.position() if role == "position" else b.kv_cache(shape)
    for name, t in init.items():
        ext = _external_file(t, base)
        if ext is not None and not ext.is_file():
            raise FrontendError(f"initializer '{name}' lives in external file {ext.name}, which is missing next to {path}")
        n = int(np.prod(t.dims)) if t.dims else 1
        value = _array(t, base) if n <= SMALL else None
        env[name] = b.initializer(name, tuple(t.dims), value)
    consumers: dict[str, list] = {}
    for node in g.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    aliases: dict[str, str] = {}      # Add-of-bias outputs folded into their MatMul's linear
    for node in g.node:
        b.where = f"'{node.name or node.output[0]}' ({node.op_type})"
        if node.output[0] in aliases:
            env[node.output[0]] = env[aliases[node.output[0]]]
            continue
        args = []
        for x in node.input:
            if x == "":
                args.append(None)
            elif x not in env:
                raise FrontendError(f"node {b.where} reads '{x}', which no node, graph input or initializer "
                                    "provides (missing initializer?)")
            else:
                args.append(env[x])
        if node.op_type == "MatMul" and _is_weight_t(args[1]):
            bias = _bias_add(node, consumers, env)
            if bias is not None:
                aliases[bias[0].output[0]] = node.output[0]
            env[node.output[0]] = b.linear(args[0], args[1].f["of"], bias[1] if bias else None)
            continue
        if node.op_type == "Shape":
            at = _attrs(node)
            shape = np.array(args[0].shape, dtype=np.int64)[at.get("start", 0):at.get("end", None)]
            env[node.output[0]] = b.const(shape)
            continue
        if node.op_type == "Constant" or (args and all(_known(a) for a in args)):
            for name, value in zip(node.output, _fold(node, args)):
                env[name] = b.const(value)
            continue
        handler = _OPS.get(node.op_type)
        if handler is None:
            raise FrontendError(f"cannot place op {node.op_type} at node {b.where}")
        out = handler(b, args, _attrs(node))
        for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
            env[name] = value
    outputs = [env[o.name] for o in g.output]
    return b.finish(outputs[-1], [o for o in outputs[:-1]])


def _known(v) -> bool:
    """A constant small enough to fold through: shapes, indices, scalars, RoPE tables; never a weight."""
    return (isinstance(v, Sym) and v.kind in ("const", "init") and v.f.get("value") is not None
            and v.value.size <= FOLD_LIMIT)


def _fold(node, args) -> list:
    """Evaluate a node whose inputs are all constants (shape arithmetic of unoptimised exports)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    names = [f"in{i}" for i in range(len(args))]
    n = helper.make_node(node.op_type, names, list(node.output), domain=node.domain, **_attrs(node))
    feeds = {name: np.asarray(a.value) for name, a in zip(names, args)}
    return ReferenceEvaluator(n).run(None, feeds)


def _is_weight_t(v) -> bool:
    return isinstance(v, Sym) and v.kind == "weight_t"


def _bias_add(matmul, consumers, env):
    """(Add node, bias) when the MatMul's only consumer adds a 1-D initializer to it."""
    users = consumers.get(matmul.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    other = [x for x in users[0].input if x != matmul.output[0]]
    bias = env.get(other[0]) if len(other) == 1 else None
    if isinstance(bias, Sym) and bias.kind == "init" and len(bias.shape) == 1:
        return users[0], bias
    return None


def _ints(b: GraphBuilder, v) -> list[int]:
    if isinstance(v, Sym) and v.f.get("value") is not None:
        return [int(x) for x in np.asarray(v.value).reshape(-1)]
    b.fail(f"a shape or axes operand that is not a constant ({v.kind if isinstance(v, Sym) else v})")


def _gemm(b, args, at):
    a, w, c = (args + [None])[:3]
    if at.get("transA", 0) or not at.get("transB", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
        b.fail(f"Gemm with transA={at.get('transA', 0)}, transB={at.get('transB', 0)}, alpha/beta != 1")
    return b.linear(a, w, c)


def _slice(b, args, at):
    x, starts, ends = args[:3]
    axes = _ints(b, args[3]) if len(args) > 3 and args[3] is not None else [0]
    steps = _ints(b, args[4]) if len(args) > 4 and args[4] is not None else [1]
    if len(axes) != 1 or steps != [1]:
        b.fail(f"Slice over axes {axes} with steps {steps}")
    return b.slice(x, axes[0], _ints(b, starts)[0], min(_ints(b, ends)[0], 2**62))


def _unsqueeze(b, args, at):
    out = args[0]
    for axis in sorted(_ints(b, args[1])):
        out = b.unsqueeze(out, axis)
    return out


def _cast(b, args, at):
    return b.cast(args[0])


_OPS = {
    "Identity": lambda b, a, at: a[0],
    "Cast": _cast,
    "CastLike": _cast,
    "Reshape": lambda b, a, at: b.reshape(a[0], _ints(b, a[1])),
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda b, a, at: b.permute(a[0], at["perm"]),
    "Expand": lambda b, a, at: b.expand(a[0], _ints(b, a[1])),
    "Range": lambda b, a, at: b.arange(_ints(b, a[1])[0]) if _ints(b, a[0]) == [0] and _ints(b, a[2]) == [1]
    else b.fail("Range not starting at 0 with step 1"),
    "Pow": lambda b, a, at: b.pow(a[0], a[1]),
    "ReduceMean": lambda b, a, at: b.mean(a[0], _ints(b, a[1]) if len(a) > 1 else at["axes"], at.get("keepdims", 1)),
    "Add": lambda b, a, at: b.add(a[0], a[1]),
    "Sub": lambda b, a, at: b.sub(a[0], a[1]),
    "Mul": lambda b, a, at: b.mul(a[0], a[1]),
    "Div": lambda b, a, at: b.div(a[0], a[1]),
    "Sqrt": lambda b, a, at: b.sqrt(a[0]),
    "Reciprocal": lambda b, a, at: b.reciprocal(a[0]),
    "Neg": lambda b, a, at: b.neg(a[0]),
    "Cos": lambda b, a, at: b.cos(a[0]),
    "Sin": lambda b, a, at: b.sin(a[0]),
    "Sigmoid": lambda b, a, at: b.sigmoid(a[0]),
    "Slice": _slice,
    "Concat": lambda b, a, at: b.cat(a, at["axis"]),
    "Gemm": _gemm,
    "MatMul": lambda b, a, at: b.matmul(a[0], a[1]),
    "Softmax": lambda b, a, at: b.softmax(a[0], at.get("axis", -1)),
    "ScatterND": lambda b, a, at: b.scatter_nd(a[0], a[1], a[2]),
    "Greater": lambda b, a, at: b.gt(a[0], a[1]),
    "Where": lambda b, a, at: b.select(a[0], a[1], a[2]),
}


def weights_from_onnx(path) -> dict:
    """{initializer name: torch tensor} for binding an ONNX model's weights at load time."""
    import onnx
    import torch
    from onnx import numpy_helper
    model = onnx.load(os.fspath(path), load_external_data=True)
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
