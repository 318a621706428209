"""The bad-input corpus: every case ends in ONE clear line on stderr and exit status 1 (no
traceback; 2 for a malformed command line), found before work is wasted, and leaves nothing behind: the tree of files the
test made is the same afterwards, outside the paths the case may write."""
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import adamk
from adamk.cli import main
from adamk.errors import AdamkError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from export_onnx import export  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return Path(export(str(tmp_path_factory.mktemp("onnx") / "tiny.onnx"), "tiny", seed=11))


@pytest.fixture(scope="module")
def artifact(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "art"
    code, _, err = cli("compile", tiny_onnx, "-o", out, "--schedule", "round-robin")
    assert code == 0, err
    return out


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def snapshot(root: Path) -> dict:
    """Every path under root with its kind and content hash (symlinks not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            elif p.is_dir():
                out[str(p)] = ("dir",)
            else:
                out[str(p)] = ("other",)
    return out


def refused(args, match, root: Path):
    """Run the CLI; assert exit 1 (2: a malformed command line), one `error:` line containing
    `match`, no traceback, and that nothing under `root` changed."""
    before = snapshot(root)
    code, _, err = cli(*args)
    lines = [line for line in err.strip().splitlines() if not line.startswith("done ")]
    assert code in (1, 2), err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert match in lines[0], lines[0]
    assert "\x1b" not in err, "a raw escape reached the terminal"
    assert snapshot(root) == before, "the failed command left or changed files"
    return lines[0]


def save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def mutated(tiny_onnx, tmp_path, fn, name="m.onnx") -> Path:
    model = onnx.load(str(tiny_onnx))
    fn(model)
    return save(model, tmp_path / name)


def initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def set_array(model, name, array):
    t = initializer(model, name)
    t.CopyFrom(numpy_helper.from_array(array, name))


def scalar_initializer(model, value):
    """The float32 scalar initializer holding `value` (eps, the attention divisor, ...)."""
    for t in model.graph.initializer:
        if t.data_type == 1 and not t.dims and math.isclose(float(numpy_helper.to_array(t)), value, rel_tol=1e-6):
            return t.name
    raise AssertionError(f"no scalar initializer {value}")


# ---- the model file ---------------------------------------------------------------------

def test_missing_model(tmp_path):
    refused(["compile", tmp_path / "nope.onnx", "-o", tmp_path / "out"], "nope.onnx: no such file", tmp_path)


def test_model_is_a_directory(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    refused(["compile", tmp_path / "d.onnx", "-o", tmp_path / "out"], "is a directory", tmp_path)


def test_model_is_dev_zero(tmp_path):
    refused(["compile", "/dev/zero", "-o", tmp_path / "out"], "is not a regular file", tmp_path)


def test_model_is_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo.onnx")
    start = time.monotonic()
    refused(["compile", tmp_path / "fifo.onnx", "-o", tmp_path / "out"], "is not a regular file", tmp_path)
    assert time.monotonic() - start < 30         # refused, not read (a FIFO read blocks forever)


def test_garbage_model(tmp_path):
    (tmp_path / "g.onnx").write_bytes(os.urandom(4096))
    refused(["compile", tmp_path / "g.onnx", "-o", tmp_path / "out"], "is not a valid ONNX model", tmp_path)


def test_graph_without_nodes(tiny_onnx, tmp_path):
    path = mutated(tiny_onnx, tmp_path, lambda m: m.graph.ClearField("node"))
    refused(["compile", path, "-o", tmp_path / "out"], "its graph has no nodes", tmp_path)


def test_initializer_dims_disagree_with_data(tiny_onnx, tmp_path):
    def fn(m):
        initializer(m, "input_layernorm.weight").dims[:] = [137]
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], "initializer 'input_layernorm.weight' with dims [137] cannot "
            "be read", tmp_path)


def test_graph_output_that_no_node_produces(tiny_onnx, tmp_path):
    path = mutated(tiny_onnx, tmp_path, lambda m: setattr(m.graph.output[0], "name", "nowhere"))
    refused(["compile", path, "-o", tmp_path / "out"], "graph output 'nowhere' is produced by no node", tmp_path)


def test_attention_divisor_of_zero(tiny_onnx, tmp_path):
    def fn(m):
        div = next(n for n in m.graph.node if n.op_type == "Div")
        set_array(m, div.input[1], np.array(0.0, np.float32))
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], "by zero", tmp_path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_eps(tiny_onnx, tmp_path, value):
    def fn(m):
        set_array(m, scalar_initializer(m, 1e-5), np.array(value, np.float32))
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], "the RMSNorm epsilon is", tmp_path)


def test_nan_inv_freq(tiny_onnx, tmp_path):
    def fn(m):
        inv = numpy_helper.to_array(initializer(m, "inv_freq")).copy()
        inv[3] = np.nan
        set_array(m, "inv_freq", inv)
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], "the RoPE inv_freq is", tmp_path)


@pytest.mark.parametrize("dtype,shown", [(np.float16, "FLOAT16"), (np.float64, "DOUBLE"), (np.int8, "INT8")])
def test_weights_of_another_dtype_are_refused(tiny_onnx, tmp_path, dtype, shown):
    def fn(m):
        w = numpy_helper.to_array(initializer(m, "q_proj.weight"))
        set_array(m, "q_proj.weight", (w * 10).astype(dtype))
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], f"weight 'q_proj.weight' is {shown}", tmp_path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights(tiny_onnx, tmp_path, value):
    def fn(m):
        w = numpy_helper.to_array(initializer(m, "k_proj.weight")).copy()
        w[5, 7] = value
        set_array(m, "k_proj.weight", w)
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], "weight 'k_proj.weight' holds NaN or Inf", tmp_path)


def test_unsupported_op_type_with_an_escape_in_its_name(tiny_onnx, tmp_path):
    def fn(m):
        node = next(n for n in m.graph.node if n.op_type == "Sigmoid")
        node.op_type, node.name = "Tanh\x1b[2J", "act[/]"
    path = mutated(tiny_onnx, tmp_path, fn)
    line = refused(["compile", path, "-o", tmp_path / "out"], "cannot place op 'Tanh\\x1b[2J' at node 'act[/]'",
                   tmp_path)
    assert "[/]" in line


def test_node_of_another_domain_is_refused_by_name(tiny_onnx, tmp_path):
    def fn(m):
        node = next(n for n in m.graph.node if n.op_type == "Sigmoid")
        node.domain = "com.example\x1b[31m"
        m.opset_import.append(onnx.helper.make_opsetid("com.example\x1b[31m", 1))
    path = mutated(tiny_onnx, tmp_path, fn)
    refused(["compile", path, "-o", tmp_path / "out"], "('Sigmoid') is of domain 'com.example\\x1b[31m'; adamk "
            "reads the standard ONNX domain only", tmp_path)


@pytest.mark.parametrize("opset", [9, 1000])
def test_opset_outside_the_supported_range(tiny_onnx, tmp_path, opset):
    def fn(m):
        next(o for o in m.opset_import if o.domain in ("", "ai.onnx")).version = opset
    refused(["compile", mutated(tiny_onnx, tmp_path, fn), "-o", tmp_path / "out"], f"ONNX opset is {opset}; adamk "
            "reads opsets 13..", tmp_path)


def test_duplicate_initializer_name(tiny_onnx, tmp_path):
    def fn(m):
        t = next(t for t in m.graph.initializer if t.name.endswith("q_proj.weight"))
        twin = onnx.TensorProto()
        twin.CopyFrom(t)
        m.graph.initializer.append(twin)
    refused(["compile", mutated(tiny_onnx, tmp_path, fn), "-o", tmp_path / "out"], "q_proj.weight' is not unique",
            tmp_path)


def test_duplicate_node_output_name(tiny_onnx, tmp_path):
    def fn(m):
        a, b = [n for n in m.graph.node if n.op_type == "Mul"][:2]
        b.output[0] = a.output[0]
    refused(["compile", mutated(tiny_onnx, tmp_path, fn), "-o", tmp_path / "out"], "is not unique in the graph",
            tmp_path)


def test_a_weight_of_the_wrong_shape_is_named_where_it_breaks_the_graph(tiny_onnx, tmp_path):
    def fn(m):
        t = initializer(m, "q_proj.weight")
        array = numpy_helper.to_array(t)
        axis = list(array.shape).index(144)                 # q's 6 heads x 24
        set_array(m, "q_proj.weight", np.take(array, range(136), axis=axis))
    refused(["compile", mutated(tiny_onnx, tmp_path, fn), "-o", tmp_path / "out"],
            "reshape of act [1, 136] (the output of linear 'q_proj.weight' [136, 136]) to [1, 6, 1, 24]", tmp_path)


def test_constant_of_shape_that_would_allocate_37_gib(tiny_onnx, tmp_path):
    def fn(m):
        m.graph.initializer.append(numpy_helper.from_array(np.array([100000, 100000], np.int64), "big_shape"))
        m.graph.node.insert(0, helper.make_node("ConstantOfShape", ["big_shape"], ["big"]))
        add = next(n for n in m.graph.node if n.op_type == "Add")
        add.input[1] = "big"          # consumed, so the frontend reaches it
    path = mutated(tiny_onnx, tmp_path, fn)
    start = time.monotonic()
    refused(["compile", path, "-o", tmp_path / "out"], "cannot place op 'ConstantOfShape'", tmp_path)
    assert time.monotonic() - start < 30


def test_sequence_of_a_billion_positions_does_not_fit_the_gpu(tiny_onnx, tmp_path):
    """A file of a few KB declaring a KV cache no GPU holds: refused up front, in seconds."""
    big = 10**9

    def fn(m):
        for i in m.graph.input:
            for d in i.type.tensor_type.shape.dim:
                if d.dim_value == 80:
                    d.dim_value = big
        for t in list(m.graph.initializer):
            if t.data_type == 7:
                a = numpy_helper.to_array(t)
                if t.name == "arange":                   # the causal mask's positions: a Range node instead
                    m.graph.initializer.remove(t)
                    for name, v in (("r0", 0), ("r1", big), ("r2", 1)):
                        m.graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), name))
                    m.graph.node.insert(0, helper.make_node("Range", ["r0", "r1", "r2"], ["arange"]))
                elif (a == 80).any():
                    set_array(m, t.name, np.where(a == 80, big, a))
    path = mutated(tiny_onnx, tmp_path, fn)
    start = time.monotonic()
    refused(["compile", path, "-o", tmp_path / "out"], "GiB in bf16; the L20 has 48 GiB", tmp_path)
    assert time.monotonic() - start < 60


# ---- external data ------------------------------------------------------------------------

@pytest.fixture
def external(tmp_path):
    """A tiny model whose weights live in tiny.onnx.data next to it."""
    path = Path(export(str(tmp_path / "tiny.onnx"), "tiny", seed=3, external_data=True))
    return path, onnx.load(str(path), load_external_data=False)


def _relocate(model, name, location=None, length=None):
    t = initializer(model, name)
    for kv in t.external_data:
        if kv.key == "location" and location is not None:
            kv.value = location
        if kv.key == "length" and length is not None:
            kv.value = str(length)


@pytest.mark.parametrize("where", ["../outside.data", "/etc/hostname", "sub/../../outside.data"])
def test_external_data_outside_the_model_directory(external, tmp_path, where):
    path, model = external
    (tmp_path.parent / "outside.data").write_bytes(b"\0" * (1 << 20))
    try:
        for name in ("input_layernorm.weight", "gate_proj.weight"):     # a small one and one over 65,536 elements
            m = onnx.ModelProto()
            m.CopyFrom(model)
            _relocate(m, name, where)
            p = save(m, tmp_path / f"{name}.onnx")
            refused(["compile", p, "-o", tmp_path / "out"], f"initializer '{name}': external data location", tmp_path)
    finally:
        (tmp_path.parent / "outside.data").unlink()


def test_external_data_symlink(external, tmp_path):
    path, model = external
    data = next(p for p in tmp_path.iterdir() if p.name.endswith(".data"))
    (tmp_path / "link.data").symlink_to(data)
    _relocate(model, "q_proj.weight", "link.data")
    p = save(model, tmp_path / "sym.onnx")
    refused(["compile", p, "-o", tmp_path / "out"], "is a symbolic link", tmp_path)


def test_external_data_shorter_than_the_tensor(external, tmp_path):
    path, model = external
    data = next(p for p in tmp_path.iterdir() if p.name.endswith(".data"))
    (tmp_path / "short.data").write_bytes(data.read_bytes()[:1000])
    _relocate(model, "down_proj.weight", "short.data")
    p = save(model, tmp_path / "short.onnx")
    refused(["compile", p, "-o", tmp_path / "out"], "initializer 'down_proj.weight': external file 'short.data' "
            "holds 1000 bytes", tmp_path)


# ---- options and the cost model -------------------------------------------------------------

@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-1"])
def test_search_budget_must_be_finite_and_positive(tiny_onnx, tmp_path, budget):
    refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--search-budget", budget], "search_budget_s=", tmp_path)


def test_gpu_name_with_markup(tiny_onnx, tmp_path):
    line = refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--gpu", "[/]"], "unknown GPU '[/]'", tmp_path)
    assert line.startswith("error: unknown GPU")


def test_gpu_name_with_a_hyperlink_is_shown_verbatim(tiny_onnx, tmp_path):
    refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--gpu", "[link=https://example.com]H100[/link]"],
            "unknown GPU '[link=https://example.com]H100[/link]'", tmp_path)


MODEL = {"gpu": "L20", "model": "ring+tagged v2"}


@pytest.mark.parametrize("profile,match", [
    (MODEL | {"sm_bytes_per_us": 0}, "'sm_bytes_per_us' is 0"),
    (MODEL | {"sm_bytes_per_us": "fast"}, "'sm_bytes_per_us' is 'fast'"),
    (MODEL | {"sm_bytes_per_us": 8000, "poll_latency_us": -1.0}, "'poll_latency_us' is -1.0"),
    (MODEL | {"sm_bytes_per_us": 8000, "launch_us": None}, "'launch_us' is None"),
    ({"gpu": "L20", "sm_bytes_per_us": 8000, "sync_latency_us": 1.0},
     "fitted for execution model 'v11 per-task stages', not 'ring+tagged v2': run `adamk calibrate` again"),
    ([1, 2, 3], "not a JSON object"),
])
def test_bad_cost_profiles(tiny_onnx, tmp_path, profile, match):
    (tmp_path / "p.json").write_text(json.dumps(profile))
    refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--cost-model", tmp_path / "p.json"], match, tmp_path)


def test_deeply_nested_cost_profile(tiny_onnx, tmp_path):
    (tmp_path / "p.json").write_text("[" * 100000 + "]" * 100000)
    refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--cost-model", tmp_path / "p.json"],
            "not a cost profile written by `adamk calibrate`", tmp_path)


@pytest.mark.parametrize("field,value", [("tile_rows", 16.0), ("stages", 2.5), ("ksplit", "no"),
                                         ("batch_size", "1"), ("search_budget_s", math.nan), ("gpu", 3)])
def test_compile_config_checks_types(field, value):
    with pytest.raises(AdamkError, match=f"CompileConfig.{field}=|{field}="):
        adamk.CompileConfig(**{field: value})


@pytest.mark.parametrize("kwargs,match", [({"attention_parts": 3}, "attention_parts=3 must be one of 1, 2, 4, 8, 16"),
                                          ({"attention_parts": 4, "ksplit": False},
                                           "attention_parts=4 splits the attention, which ksplit=False forbids")])
def test_compile_config_checks_attention_parts(kwargs, match):
    with pytest.raises(AdamkError, match=match):
        adamk.CompileConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"schedule": "queue", "stages": 8}, "the queue schedule streams one page at a time"),
    ({"schedule": "queue", "pages_in_flight": 2}, "the queue schedule streams one page at a time"),
    ({"stages": 2, "pages_in_flight": 8}, "pages_in_flight=8 exceeds the ring's 2 pages (stages=2)"),
    ({"gpu": "L20", "pages_in_flight": 4}, "pages_in_flight=4 exceeds the ring's 2 pages (the L20's default stages)"),
])
def test_compile_config_refuses_a_ring_it_would_change(kwargs, match):
    with pytest.raises(AdamkError, match=re.escape(match)):
        adamk.CompileConfig(**kwargs)


def test_gpu_names_are_one_config_whatever_their_case():
    assert adamk.CompileConfig(gpu="l20") == adamk.CompileConfig(gpu="L20")
    assert adamk.CompileConfig(gpu="H100 SXM").gpu == "H100"


def test_more_attention_parts_than_positions():
    import dataclasses
    from adamk.errors import ScheduleError
    from adamk.models import PRESETS, DecoderLayer
    layer = DecoderLayer(dataclasses.replace(PRESETS["tiny"], max_seq_len=8), seed=0)
    with pytest.raises(ScheduleError, match="attention_parts=16 exceeds the attention's 8 positions"):
        adamk.compile(layer, adamk.CompileConfig(attention_parts=16))


@pytest.mark.parametrize("rows,why", [(12, "must be a multiple of 8"), (64, "exceeds 32")])
def test_compile_config_checks_tile_rows(rows, why):
    with pytest.raises(AdamkError, match=f"tile_rows={rows} {why}"):
        adamk.CompileConfig(tile_rows=rows)


# ---- the output directory -------------------------------------------------------------------

def test_force_never_deletes_a_users_directory(tiny_onnx, tmp_path):
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    refused(["compile", tiny_onnx, "-o", mine, "--force"], "is not an adamk artifact", tmp_path)


def test_force_never_replaces_an_artifact_holding_a_users_file(artifact, tiny_onnx, tmp_path):
    import shutil
    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    (out / "notes.txt").write_text("mine")
    refused(["compile", tiny_onnx, "-o", out, "--force"], "holds 'notes.txt', which is not part of its", tmp_path)


def test_output_is_a_regular_file(tiny_onnx, tmp_path):
    (tmp_path / "afile").write_text("data")
    refused(["compile", tiny_onnx, "-o", tmp_path / "afile", "--force"], "exists and is not a directory", tmp_path)


def test_output_under_a_file(tiny_onnx, tmp_path):
    (tmp_path / "afile").write_text("data")
    refused(["compile", tiny_onnx, "-o", tmp_path / "afile" / "out"], "is not a directory", tmp_path)


def test_output_under_proc(tiny_onnx, tmp_path):
    refused(["compile", tiny_onnx, "-o", "/proc/adamk-out"], "cannot create /proc/adamk-out", tmp_path)


def test_output_is_the_current_directory(artifact, tiny_onnx, tmp_path, monkeypatch):
    import shutil
    shutil.copytree(artifact, tmp_path / "art")
    monkeypatch.chdir(tmp_path / "art")
    refused(["compile", tiny_onnx, "-o", ".", "--force"], "is the current directory", tmp_path)


@pytest.mark.parametrize("where", ["file", "proc"])
def test_bad_dump_ir(tiny_onnx, tmp_path, where):
    (tmp_path / "afile").write_text("data")
    dump = tmp_path / "afile" if where == "file" else Path("/proc/adamk-ir")
    start = time.monotonic()
    refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--dump-ir", dump], "--dump-ir" if where == "file"
            else "cannot create /proc/adamk-ir", tmp_path)
    assert time.monotonic() - start < 10         # checked before the compile, not after it


@pytest.mark.parametrize("dump,out", [("out", "out"), ("out/ir", "out"), ("ir", "ir/out")])
def test_dump_ir_and_the_output_directory_apart_before_the_compile(tiny_onnx, tmp_path, dump, out):
    start = time.monotonic()
    refused(["compile", tiny_onnx, "-o", tmp_path / out, "--dump-ir", tmp_path / dump],
            "are one or hold each other", tmp_path)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("name", ["notes.txt", "01-matmul.mlir"])
def test_dump_ir_never_writes_into_a_users_directory(tiny_onnx, tmp_path, name):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_text("mine")
    refused(["compile", tiny_onnx, "-o", tmp_path / "out", "--dump-ir", mine], f"holds '{name}', which is not "
            "an IR dump of adamk", tmp_path)
    with pytest.raises(AdamkError, match="which is not an IR dump of adamk"):         # the Python API too
        adamk.lower(str(tiny_onnx), adamk.CompileConfig(schedule="round-robin"), dump_dir=mine)
    assert (mine / name).read_text() == "mine"


def test_dump_ir_replaces_an_earlier_compiles_dumps(tiny_onnx, tmp_path):
    dump = tmp_path / "ir"
    for run, out in enumerate(("out1", "out2")):
        code, _, err = cli("compile", tiny_onnx, "-o", tmp_path / out, "--dump-ir", dump, "--schedule", "round-robin")
        assert code == 0, err
        names = sorted(p.name for p in dump.iterdir() if p.name != ".adamk-ir-dump")
        assert [int(n[:2]) for n in names] == list(range(len(names))) and len(names) > 3, names
        if run == 0:
            (dump / "37-a-pass-of-a-longer-run.mlir").write_text("stale")
    assert not (dump / "37-a-pass-of-a-longer-run.mlir").exists()      # this compile's dumps alone


def test_force_replaces_an_artifact_of_an_older_format(artifact, tiny_onnx, tmp_path):
    out = _copy_with_manifest(artifact, tmp_path, lambda m: m.update(format=m["format"] - 1))
    code, _, err = cli("compile", tiny_onnx, "-o", out, "--force", "--schedule", "round-robin")
    assert code == 0, err
    assert set(adamk.artifact.verify(out).values()) == {"ok"}


def test_output_symlink_to_an_empty_directory_writes_into_it(tiny_onnx, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, _, err = cli("compile", tiny_onnx, "-o", tmp_path / "link", "--schedule", "round-robin")
    assert code == 0, err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


_SAVE_SCRIPT = """
import os, signal, sys
from pathlib import Path
import adamk.artifact as artifact
from adamk.artifact import Artifact, load_files
manifest, files = load_files(sys.argv[1])
files["kernel.cu"] += b"// new"
where = sys.argv[2]
if where == "writing":
    real = Path.write_bytes
    def write_bytes(self, data):
        real(self, data)
        if self.name == "kernel.cu":
            os.kill(os.getpid(), signal.SIGTERM)
    Path.write_bytes = write_bytes
else:
    real_exchange = artifact._exchange
    def exchange(a, b):
        real_exchange(a, b)
        os.kill(os.getpid(), signal.SIGTERM)
    artifact._exchange = exchange
Artifact(files, {k: v for k, v in manifest.items() if k != "files"}).save(sys.argv[1], force=True)
"""


@pytest.mark.parametrize("where,new", [("writing", False), ("after-swap", True)])
def test_sigterm_during_a_forced_replace_leaves_one_whole_artifact(artifact, tmp_path, where, new):
    import shutil
    from adamk.artifact import verify
    out = tmp_path / "out"
    shutil.copytree(artifact, out)
    run = subprocess.run([sys.executable, "-c", _SAVE_SCRIPT, str(out), where], capture_output=True, text=True)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr
    assert (out / "kernel.cu").read_bytes().endswith(b"// new") == new
    assert set(verify(out).values()) == {"ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]          # no hidden half-artifact or .old left


def test_swap_without_renameat2_keeps_one_directory(tmp_path):
    from adamk import artifact
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("old")
    artifact._swap_by_renames(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "f").read_text() == "new" and (tmp_path / "a" / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


# ---- adamk inspect on an untrusted manifest --------------------------------------------------

def _copy_with_manifest(artifact, tmp_path, edit):
    import shutil
    out = tmp_path / "art"
    shutil.copytree(artifact, out)
    m = json.loads((out / "manifest.json").read_text())
    text = edit(m)
    (out / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(m))
    return out


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("files"), "has no field 'files'"),
    (lambda m: m.pop("model"), "has no field 'model'"),
    (lambda m: m.update(files=None), "field 'files' is not of type dict"),
    (lambda m: m["model"].update(hidden_size="136"), "field 'model' field 'hidden_size' is not of type int"),
    (lambda m: "[" * 100000 + "]" * 100000, "nested too deeply"),
    (lambda m: "{not json", "is not valid JSON"),
    (lambda m: m["files"].update({"../../../../etc/passwd": "0" * 64}), "lists '../../../../etc/passwd', which is not a plain"),
    (lambda m: m["files"].update({"/etc/hostname": "0" * 64}), "lists '/etc/hostname', which is not a plain"),
    (lambda m: m["config"].update(batch_size="4"), "field 'config' field 'batch_size' is not of type int"),
    (lambda m: m["config"].update(batch_size=None), "field 'config' field 'batch_size' is not of type int"),
    (lambda m: m["config"].update(batch_size=0), "field 'config' field 'batch_size' is outside 1..16"),
    (lambda m: m["config"].update(batch_size=10**6), "field 'config' field 'batch_size' is outside 1..16"),
    (lambda m: json.dumps({**m, "weight_read_floor_us": float("nan")}), "is not valid JSON: NaN is not a JSON number"),
    (lambda m: m["model"].update(hidden_size=10**400), "is not valid JSON: an integer past 2^53"),
    (lambda m: m["model"].update(whole_model=1), "field 'model' field 'whole_model' is not of type bool"),
    (lambda m: m["model"].update(whole_model=True), "field 'model' has no field 'vocab_size'"),
])
def test_inspect_refuses_bad_manifests(artifact, tmp_path, edit, match):
    out = _copy_with_manifest(artifact, tmp_path, edit)
    refused(["inspect", out], match, tmp_path)


def test_inspect_reports_unexpected_and_linked_files(artifact, tmp_path):
    out = _copy_with_manifest(artifact, tmp_path, lambda m: None)
    (out / "evil.so").write_bytes(b"\x7fELF")
    code, stdout, err = cli("inspect", out)
    assert code == 1 and "UNEXPECTED evil.so" in stdout and "'evil.so' unexpected" in err
    (out / "evil.so").unlink()
    (out / "kernel.ptx").unlink()
    (out / "kernel.ptx").symlink_to("/etc/hostname")
    code, stdout, err = cli("inspect", out)
    assert code == 1 and "'kernel.ptx' not a file" in err


@pytest.mark.parametrize("opt", ["/nonexistent/mlir-opt", "/tmp"])
def test_mlir_check_with_a_driver_that_cannot_run(artifact, tmp_path, monkeypatch, opt):
    monkeypatch.setenv("ADAMK_MLIR_OPT", opt)
    code, _, err = cli("inspect", "--mlir-check", artifact)
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == f"error: ADAMK_MLIR_OPT names '{opt}', which is not an executable file"


def test_mlir_check_with_a_driver_that_is_not_a_program(artifact, tmp_path, monkeypatch):
    fake = tmp_path / "mlir-opt"
    fake.write_bytes(b"\x00\x01 not a program")
    fake.chmod(0o755)
    monkeypatch.setenv("ADAMK_MLIR_OPT", str(fake))
    code, _, err = cli("inspect", "--mlir-check", artifact)
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot run the MLIR opt driver '{fake}': "), err


def test_bare_adamk_prints_its_help():
    code, out, err = cli()
    assert code == 0 and out.startswith("Usage: ") and "compile" in out and err == ""


def test_left_out_optional_outputs_are_not_names(tiny_onnx, tmp_path):
    def fn(m):
        eps = scalar_initializer(m, 1e-5)
        for out in ("d1", "d2"):
            m.graph.node.append(helper.make_node("Dropout", [eps], [out, ""]))
    code, _, err = cli("compile", mutated(tiny_onnx, tmp_path, fn), "-o", tmp_path / "out", "--schedule",
                       "round-robin")
    assert code == 0, err


def test_calibrate_checks_its_arguments_before_the_gpu(tmp_path):
    refused(["calibrate", "--gpu", "H100", "--preset", "nope", "-o", tmp_path / "c.json"], "unknown preset 'nope'",
            tmp_path)
    refused(["calibrate", "--gpu", "H100", "--pos", "4096", "-o", tmp_path / "c.json"], "position 4096 is outside",
            tmp_path)
    refused(["calibrate", "--gpu", "H100", "-o", "/proc/c.json"], "cannot create /proc/c.json", tmp_path)


def test_inspect_without_a_manifest(tmp_path):
    refused(["inspect", tmp_path], "is not an adamk artifact (no manifest.json)", tmp_path)


def test_external_data_outside_the_directory_for_a_tensor_over_65536_elements(external, tmp_path):
    """Tensors too large to be read at compile time are checked all the same."""
    path, model = external
    (tmp_path.parent / "outside.data").write_bytes(b"\0" * (4 * 70000))
    try:
        big = onnx.TensorProto(name="big", data_type=onnx.TensorProto.FLOAT, dims=[70000],
                               data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", "../outside.data"), ("offset", "0"), ("length", str(4 * 70000))):
            big.external_data.add(key=key, value=value)
        model.graph.initializer.append(big)
        p = save(model, tmp_path / "big.onnx")
        refused(["compile", p, "-o", tmp_path / "out"], "initializer 'big': external data location '../outside.data'",
                tmp_path)
    finally:
        (tmp_path.parent / "outside.data").unlink()


def test_onnx_export_without_onnxscript_names_the_extra(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(SystemExit, match=r"needs onnxscript, which is not installed: pip install 'adamk\[onnx\]'"):
        export(str(tmp_path / "m.onnx"), "tiny")
    assert not (tmp_path / "m.onnx").exists()
