"""Weights from the formats people have, checked against an artifact's manifest.

`read_weights` takes a torch module or state_dict, the ONNX file the artifact was compiled
from (its initializers), a Hugging Face safetensors file, or a directory holding
`model.safetensors` or a sharded checkpoint (`model.safetensors.index.json` and its shards);
`prefix` keeps the names under it, with `prefix` replaced by `as_prefix` (`model.layers.0.` ->
`layer.` binds layer 0 of a Hugging Face checkpoint to an artifact compiled from
`HFDecodeStep`, whose weights are named `layer.self_attn.q_proj.weight`, ...). Safetensors are read lazily: only the tensors the manifest
names leave the file. `check_weights` gives every tensor the manifest names, or one clear error
naming the first that is missing, of the wrong shape or dtype, or not finite.

The files are untrusted input like the model: an index names only plain file names of its own
directory (which may be symbolic links to regular files, as in a Hugging Face cache snapshot),
sizes are bounded, and a malformed file is one error naming it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import AdamkError
from ..finite import all_finite
from ..names import quoted

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_INDEX_BYTES = 16 << 20
DTYPES = ("float32", "bfloat16")        # what the kernel's weights may be given as (stored as the manifest says)


class _Safetensors(Mapping):
    """name -> tensor over safetensors files, each opened once, tensors read on access."""

    def __init__(self, where: dict[str, Path]):
        self.where = where            # tensor name -> the file holding it
        self.files: dict[Path, object] = {}

    def _open(self, path: Path):
        if path not in self.files:
            from safetensors import safe_open
            try:
                self.files[path] = safe_open(os.fspath(path), framework="pt")
            except Exception as e:          # safetensors raises its own error types for a malformed file
                raise AdamkError(f"{quoted(str(path))} is not a safetensors file ({str(e).splitlines()[0]})") from None
        return self.files[path]

    def __getitem__(self, name):
        path = self.where[name]
        f = self._open(path)
        if name not in f.keys():
            raise AdamkError(f"{quoted(str(path))} has no tensor {quoted(name)}, which its index names")
        try:
            return f.get_tensor(name)
        except Exception as e:
            raise AdamkError(f"{quoted(str(path))}: tensor {quoted(name)} cannot be read ({str(e).splitlines()[0]})") \
                from None

    def __iter__(self):
        return iter(self.where)

    def __len__(self):
        return len(self.where)


def _single(path: Path) -> _Safetensors:
    weights = _Safetensors({})
    weights.where = {n: path for n in weights._open(path).keys()}   # the file opened once, kept open
    return weights


def _sharded(index: Path) -> _Safetensors:
    if not index.is_file() or index.stat().st_size > MAX_INDEX_BYTES:
        raise AdamkError(f"{quoted(str(index))} is not a regular file of at most {MAX_INDEX_BYTES >> 20} MB")
    try:
        data = json.loads(index.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise AdamkError(f"{quoted(str(index))} is not JSON ({type(e).__name__})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in weight_map.items()):
        raise AdamkError(f"{quoted(str(index))} has no 'weight_map' of tensor names to shard file names")
    where = {}
    for name, shard in weight_map.items():
        # a shard is named by a plain file name beside the index (no path); the entry may be a symbolic
        # link to a regular file, as every file of a Hugging Face cache snapshot is (to its blob)
        if shard in ("", ".", "..") or "/" in shard or "\\" in shard or "\0" in shard:
            raise AdamkError(f"{quoted(str(index))} names shard {quoted(shard)} for {quoted(name)}; a shard must be a "
                             "plain file name in the index's directory")
        path = index.parent / shard
        try:
            regular = path.is_file()
            exists = regular or path.exists()
        except OSError:             # e.g. a link into a directory we may not read: as the C++ runtime's stat
            regular = exists = False
        if not regular:
            raise AdamkError(f"shard {quoted(shard)} of {quoted(str(index))} (for {quoted(name)}) is "
                             f"{'not a regular file' if exists else 'missing'}")
        where[name] = path
    return _Safetensors(where)


def read_weights(source, prefix: str = "", as_prefix: str = "") -> Mapping:
    """The named tensors of `source` (module, mapping, .onnx, .safetensors, or a checkpoint
    directory); with `prefix`, only names under it, `prefix` replaced by `as_prefix`."""
    import torch
    if isinstance(source, torch.nn.Module):
        weights: Mapping = source.state_dict()
    elif isinstance(source, Mapping):
        weights = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            if (path / INDEX).exists():
                weights = _sharded(path / INDEX)
            elif (path / SINGLE).is_file():
                weights = _single(path / SINGLE)
            else:
                raise AdamkError(f"{quoted(str(path))} holds neither {INDEX} nor {SINGLE}")
        elif path.suffix == ".safetensors":
            if not path.is_file():
                raise AdamkError(f"{quoted(str(path))} is not a file")
            weights = _single(path)
        elif path.suffix == ".onnx":
            from ..frontend.onnx_frontend import weights_from_onnx
            weights = weights_from_onnx(path)
        else:
            raise AdamkError(f"{quoted(str(path))}: weights are read from .onnx, .safetensors or a checkpoint "
                             "directory")
    else:
        raise AdamkError(f"weights must be a torch module, a mapping of names to tensors or a path, not "
                         f"{type(source).__name__}")
    return _Renamed(weights, prefix, as_prefix) if prefix or as_prefix else weights


class _Renamed(Mapping):
    """The names of `inner` under `prefix`, with `as_prefix` instead (tensors still read on access)."""

    def __init__(self, inner: Mapping, prefix: str, as_prefix: str):
        self.inner, self.prefix, self.as_prefix = inner, prefix, as_prefix
        self.names = [as_prefix + n[len(prefix):] for n in inner if n.startswith(prefix)]

    def __getitem__(self, name):
        if not name.startswith(self.as_prefix):
            raise KeyError(name)
        return self.inner[self.prefix + name[len(self.as_prefix):]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self):
        return len(self.names)


def check_weights(manifest: dict, weights: Mapping) -> dict:
    """{name: tensor} for every weight the manifest lists, in its order; the first missing,
    misshapen, wrongly typed or non-finite one is one clear error."""
    import torch
    names = set(weights)
    expected = manifest["weights"]
    # a tied weight (an LM head that is the embedding table) under another of its names: a checkpoint
    # written by save_pretrained holds the tensor once
    held = {w["name"]: next((a for a in [w["name"], *w.get("aliases", [])] if isinstance(a, str) and a in names),
                            None) for w in expected}
    missing = [w["name"] for w in expected if held[w["name"]] is None]
    if missing:
        raise AdamkError(f"weights are missing {', '.join(map(quoted, missing[:5]))}"
                         f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    out = {}
    for w in expected:
        t = weights[held[w["name"]]]
        if not isinstance(t, torch.Tensor) or str(t.dtype).removeprefix("torch.") not in DTYPES:
            raise AdamkError(f"weight {quoted(w['name'])} is {getattr(t, 'dtype', type(t).__name__)}; the "
                             "artifact takes float32 or bfloat16 tensors")
        if list(t.shape) != list(w["shape"]):
            raise AdamkError(f"weight {quoted(w['name'])} has shape {list(t.shape)}, the artifact expects {w['shape']}")
        if not all_finite(t):
            raise AdamkError(f"weight {quoted(w['name'])} holds NaN or Inf values")
        out[w["name"]] = t
    return out


_PACKING_INTS = ("page_rows", "page_cols", "k_chunk", "chunk_pages", "col_pages")


def packing_plan(manifest: dict) -> list[dict]:
    """The manifest's `packed_weights`, checked (the manifest is untrusted input): each entry's
    sources are weights it lists, of one 2-D shape, and its page geometry covers them."""
    shapes = {w["name"]: w.get("shape") for w in manifest["weights"] if isinstance(w, dict) and "name" in w}
    plan, packed = [], set()
    for i, e in enumerate(manifest["packed_weights"]):
        where = f"manifest packed_weights[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("sources"), list) or not e["sources"]:
            raise AdamkError(f"{where} is not an entry with a list of sources")
        if any(not isinstance(e.get(f), int) or isinstance(e.get(f), bool) or e[f] < 1 for f in _PACKING_INTS):
            raise AdamkError(f"{where} needs positive integers {', '.join(_PACKING_INTS)}")
        for name in [e.get("buffer"), *e["sources"]]:
            if not isinstance(name, str) or name not in shapes:
                raise AdamkError(f"{where} names {quoted(str(name))}, which is not a weight of the artifact")
            if name in packed:
                raise AdamkError(f"{where} packs {quoted(name)} a second time")
        shape = shapes[e["sources"][0]]
        if (e["buffer"] != e["sources"][0] or any(shapes[s] != shape for s in e["sources"])
                or not isinstance(shape, list) or len(shape) != 2):
            raise AdamkError(f"{where}: its sources must be 2-D weights of one shape, the first its buffer")
        k = shape[1]
        if e["chunk_pages"] * e["page_cols"] < e["k_chunk"] or e["col_pages"] != -(-k // e["k_chunk"]) * e["chunk_pages"]:
            raise AdamkError(f"{where}: {e['chunk_pages']} pages of {e['page_cols']} columns per K-chunk of "
                             f"{e['k_chunk']} do not cover K = {k} in {e['col_pages']} pages")
        packed.update(e["sources"])
        plan.append(e)
    return plan


def pack_pages(sources: list, page_rows: int, page_cols: int, k_chunk: int, chunk_pages: int):
    """A linear's weights as the device streams them (linear.cuh `linear_produce`), flat: page
    (b, c), at page index b * col_pages + c, is rows [b * page_rows, (b + 1) * page_rows) of every
    source in turn (a gated linear's gate rows, then its up rows) x the c-th page of columns (K-chunk
    c // chunk_pages, its page c % chunk_pages), page_cols contiguous per row; zeros past the weight."""
    import torch
    n, k = sources[0].shape
    blocks, chunks = -(-n // page_rows), -(-k // k_chunk)
    width = chunk_pages * page_cols                      # a K-chunk's columns, padded to whole pages
    out = []
    for w in sources:
        cols = torch.zeros(n, chunks * k_chunk, dtype=w.dtype, device=w.device)
        cols[:, :k] = w
        p = torch.zeros(blocks * page_rows, chunks, width, dtype=w.dtype, device=w.device)
        p[:n, :, :k_chunk] = cols.view(n, chunks, k_chunk)
        out.append(p.view(blocks, page_rows, chunks * chunk_pages, page_cols).permute(0, 2, 1, 3))
    return torch.cat(out, dim=2).contiguous().view(-1)
