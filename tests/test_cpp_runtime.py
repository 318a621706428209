"""The C++ runtime (csrc/runtime, built by the top-level CMakeLists.txt with a C++17 compiler
alone) on the CPU: it reads the compiler's artifacts and refuses what the Python runtime refuses
(a tampered, missing or extra file, another manifest format, a malformed manifest), each with
one `error:` line naming the problem; the CUDA driver is loaded only when a GPU is asked for."""
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

import adamk
from adamk.artifact import MANIFEST_FORMAT
from adamk.config import MAX_BATCH
from adamk.codegen.cuda import KERNEL_ARGS
from adamk.models import PRESETS, DecoderLayer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    """The built `adamk-runtime-check` (a fresh CMake build of the repository's runtime)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path_factory.mktemp("build")
    for cmd in (["cmake", "-S", ROOT, "-B", build], ["cmake", "--build", build, "-j2"]):
        result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    return build / "adamk-runtime-check"


def run(check, *args):
    r = subprocess.run([str(check), *map(str, args)], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def layer_dir(tmp_path_factory):
    layer = DecoderLayer(PRESETS["tiny"], seed=random.randrange(2**31))
    return adamk.compile(layer, adamk.CompileConfig(gpu="L20")).save(tmp_path_factory.mktemp("a") / "layer")


def copy(src, tmp_path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(src, dst)
    return dst


def refused(check, path, match):
    code, out, err = run(check, path)
    assert code == 1 and out == "", (code, out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
    return err


def test_reads_what_the_compiler_wrote(check, layer_dir, tmp_path):
    code, out, err = run(check, layer_dir)
    assert code == 0, err
    m = json.loads((layer_dir / "manifest.json").read_text())
    k = m["kernel"]
    assert out.startswith(f"ok: layer artifact for L20 (sm_89): kernel {k['name']}, {k['grid']} blocks x "
                          f"{k['block_threads']} threads, {k['smem_bytes']} B shared memory, {len(m['buffers'])} "
                          f"buffers"), out
    assert f"{len(k['args'])} kernel arguments" in out
    art = copy(layer_dir, tmp_path)                   # the manifest is not among the hashed files
    m["model"].update(whole_model=True, vocab_size=256)
    (art / "manifest.json").write_text(json.dumps(m))
    code, out, err = run(check, art)
    assert code == 0 and out.startswith("ok: whole-model artifact for L20 (sm_89)"), err


def test_reads_a_batch_artifact(check, tmp_path):
    """A layer compiled for a batch of 3 sequences: read, and said to be a batch's."""
    layer = DecoderLayer(PRESETS["tiny"], seed=random.randrange(2**31))
    art = adamk.compile(layer, adamk.CompileConfig(gpu="L20", batch_size=3)).save(tmp_path / "b3")
    code, out, err = run(check, art)
    assert code == 0 and out.startswith("ok: layer artifact for L20 (sm_89, a batch of 3): kernel "), err


def test_a_tampered_file_is_named(check, layer_dir, tmp_path):
    art = copy(layer_dir, tmp_path)
    cubin = art / "kernel.sm_89.cubin" if (art / "kernel.sm_89.cubin").exists() else art / "kernel.ptx"
    data = bytearray(cubin.read_bytes())
    data[len(data) // 2] ^= 1
    cubin.write_bytes(bytes(data))
    (art / "notes.txt").write_text("mine")
    (art / "kernel.cu").unlink()
    err = refused(check, art, f"artifact {art} fails its sha256 check: ")
    assert f"'{cubin.name}' modified" in err and "'kernel.cu' missing" in err and "'notes.txt' unexpected" in err


@pytest.mark.parametrize("fmt,word", [(MANIFEST_FORMAT + 1, "a newer"), (MANIFEST_FORMAT - 1, "an older")])
def test_another_manifest_format_is_refused(check, layer_dir, tmp_path, fmt, word):
    art = copy(layer_dir, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    m["format"] = fmt
    (art / "manifest.json").write_text(json.dumps(m))
    refused(check, art, f"is manifest format {fmt}, made by {word} adamk; this one reads format "
                        f"{MANIFEST_FORMAT}: recompile the model")


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("kernel"), "has no field 'kernel'"),
    (lambda m: m["kernel"].update(grid="132"), "field 'kernel' field 'grid' is not of type int"),
    (lambda m: m["target"].update(arch="sm_9x"), "field 'target' field 'arch' is 'sm_9x', not sm_<number>"),
    (lambda m: m["files"].update({"../etc/passwd": "0" * 64}),
     "lists '../etc/passwd', which is not a plain file name in the artifact directory"),
    (lambda m: m["files"].update({"kernel.cu": 7}), "gives no sha256 for 'kernel.cu'"),
    (lambda m: m["buffers"][0].update(name="\x1b[31mred", shape=[0]), "'\\x1b[31mred' has a bad shape"),
    (lambda m: m["kernel"].pop("max_epoch"), "field 'kernel' has no field 'max_epoch'"),
    (lambda m: m["kernel"]["args"].append("extra"), "takes an argument 'extra' this runtime does not pass"),
    (lambda m: m["kernel"]["args"].pop(), "lacks arguments this runtime passes"),
    (lambda m: m["kernel"]["args"].__setitem__(1, m["kernel"]["args"][0]), "names its argument 'buffers' twice"),
    (lambda m: m["buffers"][0].update(dtype="q4"), "has dtype 'q4', which this runtime does not know"),
    (lambda m: m["buffers"][0].update(shape=[2**45]), "is larger than the runtime takes"),
    (lambda m: m["kernel"].update(grid=2**60), "an integer too large for the runtime"),
    (lambda m: m["weights"][0].update(shape=[3, 3]), "is not a slot of a weight buffer of its shape"),
    (lambda m: m["packed_weights"][0].update(col_pages=99), "do not cover K ="),
    (lambda m: m["packed_weights"][0].update(sources=["nope"]), "its sources must be 2-D weights of one shape"),
    (lambda m: m["config"].update(batch_size=0), f"field 'config' has a batch_size 0 outside 1..{MAX_BATCH}"),
    (lambda m: m["config"].update(batch_size=MAX_BATCH + 1),
     f"has a batch_size {MAX_BATCH + 1} outside 1..{MAX_BATCH}"),
    (lambda m: m["config"].update(batch_size="4"), "field 'config' field 'batch_size' is not of type int"),
    (lambda m: m["model"].pop("hidden_size"), "field 'model' has no field 'hidden_size'"),
    (lambda m: m["model"].update(whole_model=1), "field 'model' field 'whole_model' is not of type bool"),
    (lambda m: m["model"].update(hidden_size=10**400), "is not valid JSON: a number past a double's range"),
])
def test_a_malformed_manifest_is_one_clear_error(check, layer_dir, tmp_path, edit, match):
    art = copy(layer_dir, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    edit(m)
    (art / "manifest.json").write_text(json.dumps(m))
    err = refused(check, art, match)
    assert "\x1b" not in err


@pytest.mark.parametrize("text,match", [("{\"format\": 3,", "is not valid JSON: unexpected end"),
                                        ("[" * 100 + "]" * 100, "is not valid JSON: nested too deeply"),
                                        ('{"a": 1, "a": 2}', "is not valid JSON: duplicate key")])
def test_not_json(check, layer_dir, tmp_path, text, match):
    art = copy(layer_dir, tmp_path)
    (art / "manifest.json").write_text(text)
    refused(check, art, match)


def test_not_an_artifact(check, tmp_path):
    refused(check, tmp_path, f"{tmp_path} is not an adamk artifact (no manifest.json)")


def test_the_example_refuses_before_it_needs_a_gpu(check, layer_dir, tmp_path):
    """examples/cpp adamk-decode (built with the runtime): a layer artifact or an unreadable
    checkpoint is one `error:` line; on a machine without a driver, so is a whole model."""
    decode = check.parent / "examples" / "cpp" / "adamk-decode"
    r = subprocess.run([str(decode), str(layer_dir), str(tmp_path / "w.safetensors")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == "error: this artifact is one decoder layer; adamk-decode runs a whole model\n"
    r = subprocess.run([str(decode)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("usage: adamk-decode ARTIFACT_DIR WEIGHTS")
    art = copy(layer_dir, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    m["model"].update(whole_model=True, vocab_size=256)
    (art / "manifest.json").write_text(json.dumps(m))
    r = subprocess.run([str(decode), str(art), str(tmp_path / "w.safetensors")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        assert "CUDA driver" in r.stderr, r.stderr


def test_what_it_prints_of_a_manifest_is_escaped(check, layer_dir, tmp_path):
    art = copy(layer_dir, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    m["target"]["gpu"] = "\x1b[31mEVIL\x1b[0m\n"
    (art / "manifest.json").write_text(json.dumps(m))
    code, out, err = run(check, art)
    assert code == 0 and out.startswith("ok: layer artifact for \\x1b[31mEVIL\\x1b[0m\\x0a (sm_89)"), (out, err)
    assert "\x1b" not in out and out.count("\n") == 1


@pytest.mark.parametrize("device", ["x", "-1", "3x"])
def test_a_bad_device_ordinal_is_one_clear_error(check, layer_dir, device):
    code, out, err = run(check, layer_dir, "--device", device)
    assert code == 1 and err == f"error: --device '{device}' is not a GPU ordinal\n", err


def test_the_driver_is_loaded_only_for_a_gpu(check, layer_dir):
    """Reading an artifact needs no driver; asking for a GPU loads it: on a machine without one,
    one clear error."""
    code, out, err = run(check, layer_dir, "--device", "0")
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        assert code == 1 and out.startswith("ok: layer artifact")
        assert err.startswith("error: cannot load the CUDA driver (libcuda.so.1): ") or \
            err.startswith("error: the CUDA driver finds no GPU"), err
    else:
        assert code == 0, err
        assert "driver " in out and ("loads kernel.ptx" in out or "loads kernel.sm_89.cubin" in out), out


def test_the_python_module_checks_as_the_python_runtime_does(layer_dir, tmp_path):
    """adamk._runtime (pybind11, built by `pip install .`): the same artifact, the same buffers as
    the manifest, and a tampered copy refused with the Python runtime's own words."""
    from adamk import _runtime
    from adamk.artifact import load_files
    from adamk.errors import AdamkError
    assert _runtime.MANIFEST_FORMAT == MANIFEST_FORMAT
    assert _runtime.KERNEL_ARGS == KERNEL_ARGS
    a = _runtime.Artifact.open(str(layer_dir))
    m = json.loads((layer_dir / "manifest.json").read_text())
    assert (a.gpu, a.arch, a.whole_model) == ("L20", "sm_89", False)
    assert a.kernel == {k: m["kernel"][k] for k in ("name", "grid", "block_threads", "smem_bytes", "args")}
    assert [(b.name, b.role, b.dtype, list(b.shape), b.slots) for b in a.buffers] == \
        [(b["name"], b["role"], b["dtype"], b["shape"], b.get("slots", 1)) for b in m["buffers"]]
    art = copy(layer_dir, tmp_path)
    (art / "kernel.cu").write_text("// edited\n")
    (art / "zz.txt").write_text("mine")
    with pytest.raises(AdamkError) as theirs:
        load_files(art)
    with pytest.raises(AdamkError) as ours:
        _runtime.Artifact.open(str(art))
    assert str(ours.value) == str(theirs.value)
    assert "'kernel.cu' modified, 'zz.txt' unexpected" in str(ours.value)
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        with pytest.raises(AdamkError, match="CUDA driver"):      # a session needs the GPU
            _runtime.Session(str(layer_dir))


def test_pack_pages_lays_out_pages_as_the_python_runtime():
    """The C++ packing (weights.hpp, what adamk-decode uploads) and runtime/weights.py pack_pages
    give the same bytes: a gated pair with partial row blocks, K-chunks and pages."""
    import torch
    from adamk import _runtime
    from adamk.runtime.weights import pack_pages
    n, k, rows, cols, chunk, chunk_pages = 37, 300, 16, 64, 100, 2
    gate, up = (torch.randn(n, k).bfloat16() for _ in range(2))
    want = pack_pages([gate, up], rows, cols, chunk, chunk_pages).view(torch.int16).numpy().tobytes()
    got = _runtime.pack_pages([t.view(torch.int16).numpy().tobytes() for t in (gate, up)], n, k, rows, cols, chunk,
                              chunk_pages)
    assert got == want and len(got) == 2 * 3 * 6 * 2 * rows * cols
    with pytest.raises(ValueError, match="positive sizes"):
        _runtime.pack_pages([b""], 0, k, rows, cols, chunk, chunk_pages)
    with pytest.raises(ValueError, match="n x k bf16 words"):
        _runtime.pack_pages([b"\0" * 6], n, k, rows, cols, chunk, chunk_pages)


def test_a_hugging_face_cache_snapshot_reads_as_in_python(tmp_path):
    """A Hub cache snapshot: the index and every shard are symbolic links into ../../blobs. Both
    runtimes follow them (to regular files only) and read the same tensors; a link to a directory
    is refused by both with the same words."""
    import os
    import torch
    from safetensors.torch import save_file
    from adamk import _runtime
    from adamk.errors import AdamkError
    from adamk.runtime.weights import INDEX, read_weights
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "0123abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    want = {"a.weight": torch.randn(4, 8), "b.weight": torch.randn(8).bfloat16()}
    for i, name in enumerate(sorted(want)):
        save_file({name: want[name]}, str(blobs / f"blob{i}"))
        os.symlink(f"../../blobs/blob{i}", snap / f"model-{i}.safetensors")
    (blobs / "index").write_text(json.dumps({"weight_map": {n: f"model-{i}.safetensors"
                                                            for i, n in enumerate(sorted(want))}}))
    os.symlink("../../blobs/index", snap / INDEX)
    ours = read_weights(snap)
    theirs = _runtime.read_checkpoint(str(snap))
    assert set(ours) == set(theirs) == set(want)
    for name, t in want.items():
        dtype, shape, data = theirs[name]
        assert (dtype, shape) == ({torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype], list(t.shape))
        assert data == t.contiguous().view(torch.uint8).numpy().tobytes() and torch.equal(ours[name], t)
    os.mkfifo(blobs / "fifo")                  # would block a reader that opened it
    for target in (blobs, blobs / "fifo"):     # a link to a directory, to a FIFO: refused before any open
        os.remove(snap / "model-0.safetensors")
        os.symlink(str(target), snap / "model-0.safetensors")
        errors = []
        for read in (read_weights, lambda p: _runtime.read_checkpoint(str(p))):
            with pytest.raises(AdamkError, match="is not a regular file") as e:
                dict(read(snap))
            errors.append(str(e.value))
        assert errors[0] == errors[1]


@pytest.mark.parametrize("edit", ["float16", "shape", "nan", "missing"])
def test_a_bad_checkpoint_is_refused_in_the_python_runtimes_words(layer_dir, tmp_path, edit):
    """The C++ runtime's weight checks (weight_words, what upload_weights runs first) against the
    Python runtime's check_weights: a float16 tensor, a wrong shape, a NaN, a missing tensor."""
    import torch
    from safetensors.torch import save_file
    from adamk import _runtime
    from adamk.errors import AdamkError
    from adamk.runtime.weights import check_weights, read_weights
    ts = {n: t.clone().contiguous() for n, t in DecoderLayer(PRESETS["tiny"], seed=1).state_dict().items()}
    victim = "down_proj.weight"
    if edit == "float16":
        ts[victim] = ts[victim].half()
    elif edit == "shape":
        ts[victim] = ts[victim][:, :-8].contiguous()
    elif edit == "nan":
        ts[victim][3, 5] = float("nan")
    else:
        del ts[victim]
    path = tmp_path / "w.safetensors"
    save_file(ts, str(path))
    manifest = json.loads((layer_dir / "manifest.json").read_text())
    with pytest.raises(AdamkError) as ours:
        check_weights(manifest, read_weights(path))
    with pytest.raises(AdamkError) as theirs:
        _runtime.check_weights(str(layer_dir), str(path))
    assert str(theirs.value) == str(ours.value) and victim in str(ours.value)
