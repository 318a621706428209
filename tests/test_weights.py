"""Weights from a module, a state_dict, ONNX, safetensors files and sharded Hugging Face
checkpoints (adamk/runtime/weights.py), checked against the manifest; hostile checkpoints
get one clear error."""
import json
import os
import random
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import adamk
from adamk.errors import AdamkError
from adamk.models import PRESETS, DecoderLayer
from adamk.runtime.decode import DecodeStep
from adamk.runtime.weights import INDEX, check_weights, pack_pages, packing_plan, read_weights

MANIFEST = {"weights": [{"name": "a.weight", "shape": [4, 8], "dtype": "bf16"},
                        {"name": "b.weight", "shape": [8], "dtype": "bf16"}]}


def tensors(prefix=""):
    return {f"{prefix}a.weight": torch.randn(4, 8).bfloat16(), f"{prefix}b.weight": torch.randn(8),
            f"{prefix}extra": torch.randn(3)}


def sharded(tmp_path, ts, shards=2):
    names = sorted(ts)
    weight_map = {}
    for i in range(shards):
        part = {n: ts[n] for n in names[i::shards]}
        save_file(part, str(tmp_path / f"model-{i:05d}-of-{shards:05d}.safetensors"))
        weight_map.update({n: f"model-{i:05d}-of-{shards:05d}.safetensors" for n in part})
    (tmp_path / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tmp_path


def same(got, want):
    assert set(got) == set(want)
    for n, t in want.items():
        assert got[n].dtype == t.dtype and torch.equal(got[n], t), n


def test_every_format_gives_the_same_tensors(tmp_path):
    ts = tensors()
    save_file(ts, str(tmp_path / "w.safetensors"))
    (tmp_path / "single").mkdir()
    save_file(ts, str(tmp_path / "single" / "model.safetensors"))
    (tmp_path / "shards").mkdir()
    for source in (ts, tmp_path / "w.safetensors", str(tmp_path / "single"), sharded(tmp_path / "shards", ts)):
        got = check_weights(MANIFEST, read_weights(source))
        same(got, {n: ts[n] for n in ("a.weight", "b.weight")})


def test_prefix_binds_one_layer_of_a_checkpoint(tmp_path):
    ts = {**tensors("model.layers.0."), **tensors("model.layers.1.")}
    weights = read_weights(sharded(tmp_path, ts, shards=3), prefix="model.layers.1.")
    assert sorted(weights) == ["a.weight", "b.weight", "extra"]
    same(check_weights(MANIFEST, weights), {n: ts["model.layers.1." + n] for n in ("a.weight", "b.weight")})
    # an HFDecodeStep artifact names them layer.<name>
    manifest = {"weights": [{**w, "name": "layer." + w["name"]} for w in MANIFEST["weights"]]}
    weights = read_weights(tmp_path, prefix="model.layers.0.", as_prefix="layer.")
    assert sorted(weights) == ["layer.a.weight", "layer.b.weight", "layer.extra"]
    same(check_weights(manifest, weights), {"layer." + n: ts["model.layers.0." + n] for n in ("a.weight", "b.weight")})
    with pytest.raises(KeyError):
        weights["a.weight"]


def test_a_layer_artifact_binds_its_state_dict_from_safetensors(tmp_path):
    layer = DecoderLayer(PRESETS["tiny"], seed=3)
    art = adamk.compile(layer, adamk.CompileConfig(gpu="L20", schedule="round-robin"))
    save_file({n: t.contiguous() for n, t in layer.state_dict().items()}, str(tmp_path / "layer.safetensors"))
    got = check_weights(art.manifest, read_weights(tmp_path / "layer.safetensors"))
    same(got, {w["name"]: layer.state_dict()[w["name"]] for w in art.manifest["weights"]})
    got = check_weights(art.manifest, read_weights(layer))                  # the module itself
    assert list(got) == [w["name"] for w in art.manifest["weights"]]


def test_mismatches_name_the_first_tensor_at_fault(tmp_path):
    ts = tensors()
    with pytest.raises(AdamkError, match=r"^weights are missing 'b.weight'$"):
        check_weights(MANIFEST, {"a.weight": ts["a.weight"]})
    with pytest.raises(AdamkError, match=r"weight 'a.weight' has shape \[8, 4\], the artifact expects \[4, 8\]"):
        check_weights(MANIFEST, {**ts, "a.weight": torch.randn(8, 4)})
    with pytest.raises(AdamkError, match=r"weight 'a.weight' is torch.float16; the artifact takes float32 or bfloat16"):
        check_weights(MANIFEST, {**ts, "a.weight": torch.randn(4, 8).half()})
    with pytest.raises(AdamkError, match=r"weight 'b.weight' holds NaN or Inf values"):
        check_weights(MANIFEST, {**ts, "b.weight": torch.full((8,), float("inf"))})
    with pytest.raises(AdamkError, match=r"weight 'a.weight' is list"):
        check_weights(MANIFEST, {**ts, "a.weight": [1.0]})
    many = {"weights": [{"name": f"w{i}", "shape": [1], "dtype": "bf16"} for i in range(9)]}
    with pytest.raises(AdamkError, match=r"^weights are missing 'w0', 'w1', 'w2', 'w3', 'w4' and 4 more$"):
        check_weights(many, {})


@pytest.mark.parametrize("shard,why", [("../outside.safetensors", "a shard must be a plain file name"),
                                       ("/etc/passwd", "a shard must be a plain file name"),
                                       ("..", "a shard must be a plain file name"),
                                       ("absent.safetensors", "is missing"),
                                       ("dir.safetensors", "is not a regular file")])
def test_an_index_names_only_files_of_its_own_directory(tmp_path, shard, why):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file(tensors(), str(tmp_path / "outside.safetensors"))
    os.symlink(tmp_path, ckpt / "dir.safetensors")          # a link to a directory
    (ckpt / INDEX).write_text(json.dumps({"weight_map": {"a.weight": shard}}))
    with pytest.raises(AdamkError, match=why):
        read_weights(ckpt)


def test_malformed_checkpoints_are_one_clear_error(tmp_path):
    (tmp_path / "garbage.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(AdamkError, match=r"garbage.safetensors' is not a safetensors file"):
        read_weights(tmp_path / "garbage.safetensors")
    bad = tmp_path / "bad"
    bad.mkdir()
    for text, why in (("{not json", "is not JSON"), ("[1, 2]", "has no 'weight_map'"),
                      (json.dumps({"weight_map": {"a.weight": 3}}), "has no 'weight_map'")):
        (bad / INDEX).write_text(text)
        with pytest.raises(AdamkError, match=why):
            read_weights(bad)
    # the index names a tensor its shard does not hold: an error when the tensor is needed
    (tmp_path / "ckpt").mkdir()
    ckpt = sharded(tmp_path / "ckpt", {"b.weight": torch.randn(8)}, 1)
    index = json.loads((ckpt / INDEX).read_text())
    index["weight_map"]["a.weight"] = index["weight_map"]["b.weight"]
    (ckpt / INDEX).write_text(json.dumps(index))
    with pytest.raises(AdamkError, match=r"has no tensor 'a.weight', which its index names"):
        check_weights(MANIFEST, read_weights(ckpt))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdamkError, match="holds neither model.safetensors.index.json nor model.safetensors"):
        read_weights(tmp_path / "empty")
    with pytest.raises(AdamkError, match=r"weights are read from .onnx, .safetensors or a checkpoint directory"):
        read_weights(tmp_path / "w.bin")
    with pytest.raises(AdamkError, match=r"weights must be a torch module, a mapping of names to tensors or a path, "
                                         r"not int"):
        read_weights(3)


def test_an_unknown_launcher_is_refused_before_anything_is_loaded(tmp_path):
    with pytest.raises(AdamkError, match="launcher 'rust' is not one of cuda-bindings, cpp"):
        DecodeStep(tmp_path, {}, launcher="rust")


def test_pack_pages_stores_each_page_contiguous():
    """Page (b, c) of a gated linear's packed weights is rows [4b, 4b + 4) of the gate, then of the
    up weight, x page c's columns (K-chunk c // 2, its page c % 2), zeros past the weight: what the
    producer copies as one span (linear.cuh linear_produce)."""
    n, k, rows, cols, chunk, chunk_pages = 13, 37, 4, 16, 20, 2
    gate, up = torch.randn(n, k), torch.randn(n, k)
    flat = pack_pages([gate, up], rows, cols, chunk, chunk_pages)
    col_pages = -(-k // chunk) * chunk_pages
    blocks = -(-n // rows)
    assert flat.shape == (blocks * col_pages * 2 * rows * cols,)
    padded = [torch.zeros(blocks * rows, col_pages * cols) for _ in range(2)]
    for w, p in zip((gate, up), padded):
        for c0 in range(0, k, chunk):               # each K-chunk starts on a whole page
            width = min(chunk, k - c0)
            p[:n, c0 // chunk * chunk_pages * cols:][:, :width] = w[:, c0:c0 + width]
    for b in range(blocks):
        for c in range(col_pages):
            page = flat[(b * col_pages + c) * 2 * rows * cols:][:2 * rows * cols].view(2 * rows, cols)
            for half, p in enumerate(padded):
                assert torch.equal(page[half * rows:(half + 1) * rows], p[b * rows:(b + 1) * rows, c * cols:(c + 1) * cols])
    assert torch.count_nonzero(flat) == 2 * n * k


def _packed(**change):
    e = {"buffer": "g.weight", "sources": ["g.weight", "u.weight"], "page_rows": 4, "page_cols": 16,
         "k_chunk": 32, "chunk_pages": 2, "col_pages": 2, **change}
    return {"weights": [{"name": n, "shape": [8, 32], "dtype": "bf16"} for n in ("g.weight", "u.weight", "x.weight")]
            + [{"name": "norm.weight", "shape": [32], "dtype": "bf16"}], "packed_weights": [e]}


@pytest.mark.parametrize("change, message", [
    ({"sources": []}, "not an entry with a list of sources"),
    ({"page_rows": 0}, "positive integers"),
    ({"page_cols": True}, "positive integers"),
    ({"sources": ["g.weight", "../etc/passwd"]}, "names '../etc/passwd', which is not a weight"),
    ({"buffer": "u.weight"}, "the first its buffer"),
    ({"sources": ["g.weight", "norm.weight"]}, "2-D weights of one shape"),
    ({"col_pages": 3}, "do not cover K = 32 in 3 pages"),
    ({"chunk_pages": 1, "col_pages": 1}, "do not cover K = 32"),
])
def test_packing_plan_refuses_a_tampered_entry(change, message):
    assert packing_plan(_packed())[0]["sources"] == ["g.weight", "u.weight"]
    with pytest.raises(AdamkError, match=re.escape(message)):
        packing_plan(_packed(**change))


def test_packing_plan_refuses_a_weight_packed_twice():
    m = _packed()
    m["packed_weights"].append({**m["packed_weights"][0], "buffer": "u.weight", "sources": ["u.weight"]})
    with pytest.raises(AdamkError, match="packs 'u.weight' a second time"):
        packing_plan(m)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, np.float32])
def test_all_finite_is_the_elementwise_test(dtype):
    """The one-reduction check (adamk/finite.py) answers as the elementwise test does: a NaN, an
    Inf of either sign or both anywhere is caught, and finite values whose sum overflows pass,
    without a warning (numpy's for Inf - Inf)."""
    from adamk.finite import all_finite

    def make(values):
        if dtype is np.float32:
            return np.asarray(values, dtype=np.float32)
        return torch.tensor(values, dtype=torch.float32).to(dtype)

    values = torch.randn(random.randrange(1, 5000)).tolist()
    assert all_finite(make(values))
    for bad in ([float("nan")], [float("inf")], [float("-inf")], [float("inf"), float("-inf")]):
        spoiled = list(values)
        for v in bad:
            spoiled[random.randrange(len(spoiled))] = v
        assert not all_finite(make(spoiled)), bad
    assert all_finite(make([3e38] * 4 + values))          # its float32 sum is Inf; every element is finite
