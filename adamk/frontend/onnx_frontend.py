"""ONNX frontend: walk an ONNX decoder graph node by node into the shared pattern recogniser.

The graph is one decoder layer (inputs x, pos, k_cache, v_cache) or a whole model (int64
token ids, pos, and the caches stacked per layer), as examples/export_onnx.py writes them.

Weights stay where they are: the model is loaded without external data, and only small
constants (RoPE frequencies, eps, scales, shapes) and the integer indices of a cache
write-back are read. A weight's existence is still checked (inline data, or an external
file inside the model's directory that is long enough), so a missing initializer is an
error here, not on the GPU. Inline weights are checked to be finite (they are in memory
anyway); external ones when they are bound.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import FrontendError
from ..finite import all_finite
from ..names import quoted
from .patterns import GraphBuilder, Sym

SMALL = 1 << 16      # elements: initializers up to this size are read (constants); larger ones never are
FOLD_LIMIT = 4096    # elements: nodes whose inputs are all constants this small are evaluated here
MAX_ONNX_BYTES = 2 << 30   # protobuf's limit: larger models keep their weights in external data

_ELEM = {1: "float32", 16: "bfloat16"}
# Ops whose output size a (small) constant input decides: folded only if that size is small.
_GENERATED_SIZE = {
    "ConstantOfShape": lambda v: math.prod(int(d) for d in v[0].reshape(-1)),
    "Expand": lambda v: math.prod(np.broadcast_shapes(v[0].shape, tuple(int(d) for d in v[1].reshape(-1)))),
    "Tile": lambda v: v[0].size * math.prod(int(d) for d in v[1].reshape(-1)),
    "Range": lambda v: math.ceil((float(v[1]) - float(v[0])) / float(v[2])) if float(v[2]) else math.inf,
}


def _load(path):
    import onnx
    from google.protobuf.message import DecodeError
    p = Path(path)
    if not p.exists():
        raise FrontendError(f"{path}: no such file")
    if p.is_dir():
        raise FrontendError(f"{path} is a directory, not an ONNX file")
    if not stat.S_ISREG(p.stat().st_mode):
        raise FrontendError(f"{path} is not a regular file (a device, FIFO or socket), not an ONNX file")
    if p.stat().st_size > MAX_ONNX_BYTES:
        raise FrontendError(f"{path} is {p.stat().st_size} bytes, over protobuf's 2 GiB: keep the weights in "
                            "external data")
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


def _check_external(tensor, base: Path, path):
    """An initializer's external data must be a regular file inside the model's directory,
    not a symlink, holding at least the tensor's bytes at its offset."""
    from onnx.helper import tensor_dtype_to_np_dtype
    info = {kv.key: kv.value for kv in tensor.external_data}
    where = f"initializer {quoted(tensor.name)}"
    location = info.get("location", "")
    if not location or os.path.isabs(location) or ".." in Path(location).parts:
        raise FrontendError(f"{where}: external data location {quoted(location)} is not a file name inside the "
                            "model's directory")
    f = base / location
    if f.is_symlink():
        raise FrontendError(f"{where}: external data file {quoted(location)} is a symbolic link; adamk reads only "
                            "files inside the model's directory")
    if not f.is_file():
        raise FrontendError(f"initializer {quoted(tensor.name)} lives in external file {quoted(location)}, which "
                            f"is missing next to {path}")
    try:
        offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
        need = math.prod(tensor.dims) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (ValueError, KeyError, TypeError):
        raise FrontendError(f"{where}: unreadable external data entry (offset {quoted(info.get('offset'))}, "
                            f"length {quoted(info.get('length'))}, data type {tensor.data_type})") from None
    if offset < 0 or (length is not None and length != need) or f.stat().st_size < offset + need:
        raise FrontendError(f"{where}: external file {quoted(location)} holds {f.stat().st_size} bytes; the tensor "
                            f"needs {need} bytes at offset {offset}")


def _array(tensor, base: Path):
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    try:
        if uses_external_data(tensor):
            load_external_data_for_tensor(tensor, str(base))
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, OSError) as e:
        raise FrontendError(f"initializer {quoted(tensor.name)} with dims {list(tensor.dims)} cannot be read: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _check_weight_data(tensor, base: Path):
    """Weights are float32 or bfloat16 (never silently converted) and, when inline, finite."""
    from onnx.external_data_helper import uses_external_data
    if tensor.data_type not in _ELEM:
        from onnx.helper import tensor_dtype_to_string
        shown = tensor_dtype_to_string(tensor.data_type).removeprefix("TensorProto.")
        raise FrontendError(f"weight {quoted(tensor.name)} is {shown}; adamk "
                            "takes float32 or bfloat16 weights (convert them before export)")
    if not uses_external_data(tensor) and not all_finite(_array(tensor, base).astype(np.float32)):
        raise FrontendError(f"weight {quoted(tensor.name)} holds NaN or Inf values")


MIN_OPSET = 13      # the forms the handlers read: Unsqueeze's axes and Slice's bounds as inputs, Softmax over one axis


def _check_opset(model):
    """The standard domain's opset in MIN_OPSET..the installed onnx's newest, and every node of it:
    an op of another domain (a vendor's or a custom one) is not the standard op of that name."""
    from onnx.defs import onnx_opset_version
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    opset = versions.get("ai.onnx")
    if opset is None:
        raise FrontendError("the model imports no version of the standard ONNX opset (opset_import has no ai.onnx "
                            "entry)")
    if not MIN_OPSET <= opset <= onnx_opset_version():
        raise FrontendError(f"the model's ONNX opset is {opset}; adamk reads opsets {MIN_OPSET}..{onnx_opset_version()} "
                            "(export with opset_version=18)")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise FrontendError(f"node {quoted(node.name or node.output[0])} ({quoted(node.op_type)}) is of domain "
                                f"{quoted(node.domain)}; adamk reads the standard ONNX domain only")


def _check_unique_names(g):
    """Every initializer and node output a distinct name, none a graph input's: with two tensors of
    one name the compile and the weights bound at load time could read different ones. (An
    initializer named like a graph input has its own error in import_onnx.)"""
    seen = {i.name for i in g.input}
    initializers: set[str] = set()
    for t in g.initializer:
        if t.name in initializers:
            raise FrontendError(f"initializer name {quoted(t.name)} is not unique in the graph")
        initializers.add(t.name)
    seen |= initializers
    for node in g.node:
        for name in node.output:
            if not name:                     # an optional output left out
                continue
            if name in seen:
                raise FrontendError(f"node output name {quoted(name)} is not unique in the graph")
            seen.add(name)


def import_onnx(path):
    """ONNX file -> graph-level IR (builtin.module with one func.func @decode_step)."""
    model = _load(path)
    _check_opset(model)
    g = model.graph
    base = Path(path).resolve().parent
    _check_unique_names(g)
    init = {t.name: t for t in g.initializer}
    shadowed = [i.name for i in g.input if i.name in init]
    if shadowed:       # ONNX reads such an initializer as the input's default: never what a decode step means
        raise FrontendError(f"initializer {quoted(shadowed[0])} has the name of a graph input; rename it")
    inputs = list(g.input)
    if len(inputs) != 4:
        raise FrontendError(f"expected a decode step with inputs (x, pos, k_cache, v_cache) or (token, pos, k_caches, "
                            f"v_caches), got {len(inputs)} inputs ({', '.join(quoted(i.name) for i in inputs[:6])})")
    first = inputs[0].type.tensor_type.elem_type
    whole = first in (6, 7)         # int32 / int64 token ids: a whole model
    if first == 6:
        raise FrontendError(f"{quoted(inputs[0].name)} holds token ids of type int32; adamk takes int64 ids")
    elem = inputs[2 if whole else 0].type.tensor_type.elem_type     # the activations': the caches' in a whole model
    if elem not in _ELEM:
        raise FrontendError(f"unsupported input element type {elem} for {quoted(inputs[2 if whole else 0].name)}")
    b = GraphBuilder(_ELEM[elem])
    env: dict = {}
    leaves = {"input": b.input, "token": b.token, "position": lambda shape: b.position(), "kv_cache": b.kv_cache}
    for i, role in zip(inputs, ("token" if whole else "input", "position", "kv_cache", "kv_cache")):
        b.where = f"{quoted(i.name)} (graph input)"
        shape = tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
        if any(d <= 0 for d in shape):
            raise FrontendError(f"input {quoted(i.name)} has a dynamic shape {list(shape)}; export with static shapes")
        env[i.name] = leaves[role](shape)
    from onnx.external_data_helper import uses_external_data
    for name, t in init.items():
        if any(d < 0 for d in t.dims):
            raise FrontendError(f"initializer {quoted(name)} has negative dims {list(t.dims)}")
        if uses_external_data(t):
            _check_external(t, base, path)
        n = math.prod(t.dims)
        value = _array(t, base) if n <= SMALL else None
        env[name] = b.initializer(name, tuple(t.dims), value, check=lambda t=t: _check_weight_data(t, base))
    consumers: dict[str, list] = {}
    for node in g.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    aliases: dict[str, str] = {}      # Add-of-bias outputs folded into their MatMul's linear
    for node in g.node:
        b.where = f"{quoted(node.name or node.output[0])} ({quoted(node.op_type)})"
        if node.output[0] in aliases:
            env[node.output[0]] = env[aliases[node.output[0]]]
            continue
        args = []
        for x in node.input:
            if x == "":
                args.append(None)
            elif x not in env:
                raise FrontendError(f"node {b.where} reads {quoted(x)}, which no node, graph input or initializer "
                                    "provides (missing initializer?)")
            else:
                args.append(env[x])
        if node.op_type == "MatMul" and _is_weight_t(args[1]):
            bias = _bias_add(node, consumers, env)
            if bias is not None:
                aliases[bias[0].output[0]] = node.output[0]
            env[node.output[0]] = b.linear(args[0], args[1].f["of"], bias[1] if bias else None)
            continue
        if node.op_type == "ScatterElements" and len(node.input) == 3 and _unread_indices(node.input[1], init):
            # torch's select_scatter writes its (all equal) indices as a tensor the size of a cache layer:
            # integers, never a weight, so read whatever their size (one at a time, not kept)
            args[1] = b.const(_array(init[node.input[1]], base))
        if node.op_type == "Shape":
            at = _attrs(node)
            shape = np.array(args[0].shape, dtype=np.int64)[at.get("start", 0):at.get("end", None)]
            env[node.output[0]] = b.const(shape)
            continue
        if node.op_type == "Constant" or (args and all(_known(a) for a in args) and _small_output(node, args)
                                          and not _weight_transpose(node, args)):
            for name, value in zip(node.output, _fold(b, node, args)):
                env[name] = b.const(value)
            continue
        handler = _OPS.get(node.op_type)
        if handler is None:
            raise FrontendError(f"cannot place op {quoted(node.op_type)} at node {b.where}")
        out = handler(b, args, _attrs(node))
        for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
            env[name] = value
    missing = [o.name for o in g.output if o.name not in env]
    if missing or not g.output:
        raise FrontendError(f"graph output {quoted(missing[0])} is produced by no node" if missing
                            else "the graph declares no output")
    outputs = [env[o.name] for o in g.output]
    return b.finish(outputs[-1], [o for o in outputs[:-1]])


def _known(v) -> bool:
    """A constant small enough to fold through: shapes, indices, scalars, RoPE tables; never a weight."""
    return (isinstance(v, Sym) and v.kind in ("const", "init") and v.f.get("value") is not None
            and v.value.size <= FOLD_LIMIT)


def _weight_transpose(node, args) -> bool:
    """A Transpose of an initializer is a weight's W^T feeding a MatMul (exports without the
    optimiser write linears so), never folded however small the weight: a toy model's k_proj
    would otherwise become an unnamed constant."""
    return node.op_type == "Transpose" and isinstance(args[0], Sym) and args[0].kind == "init"


def _small_output(node, args) -> bool:
    """Ops that make a tensor of a size their inputs give are folded only when it is small
    (a ConstantOfShape [1e5, 1e5] must not allocate 37 GiB); a large Range stays symbolic."""
    if node.op_type not in _GENERATED_SIZE:
        return True
    try:
        return _GENERATED_SIZE[node.op_type]([np.asarray(a.value) for a in args]) <= FOLD_LIMIT
    except (ValueError, TypeError, IndexError, OverflowError):
        return False


def _fold(b: GraphBuilder, node, args) -> list:
    """Evaluate a node whose inputs are all constants (shape arithmetic of unoptimised exports)."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    values = [np.asarray(a.value) for a in args]
    names = [f"in{i}" for i in range(len(args))]
    try:
        n = helper.make_node(node.op_type, names, list(node.output), domain=node.domain, **_attrs(node))
        return ReferenceEvaluator(n).run(None, dict(zip(names, values)))
    except Exception as e:       # the reference evaluator's own message names what it refused
        b.fail(f"constant {node.op_type} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


def _unread_indices(name: str, init) -> bool:
    """Whether `name` is an integer initializer too large to have been read with the small ones."""
    return name in init and init[name].data_type in (6, 7) and math.prod(init[name].dims) > SMALL


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


def _scatter_elements(b, args, at):
    reduction = at.get("reduction", b"none")
    if reduction not in (b"none", "none"):
        b.fail(f"ScatterElements with reduction {reduction!r}")
    return b.scatter_elements(args[0], args[1], args[2], at.get("axis", 0))


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
    "ScatterElements": _scatter_elements,
    "Gather": lambda b, a, at: b.gather(a[0], a[1], at.get("axis", 0)),
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
