"""Names from a model file are data: the hostile-name corpus (adamk/names.py).

Each weight name below replaces a real weight's name in the tiny ONNX layer. The compile
must either succeed with a kernel.cu in which the name appears only inside an escaped
comment (no line of generated code comes from it, NVRTC reads no file it names, the
RMSNorm survives) and with the exact name kept as data in the manifest, or refuse with
one clear line; the terminal never gets a raw escape or applies markup."""
import json
import re
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from adamk.cli import main
from adamk.names import c_comment, label, printable, quoted

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from export_onnx import export  # noqa: E402

HOSTILE = {
    "define": "q\n#define kRmsNorm kPlain\n//.weight",
    "include": 'q\n#include "/etc/passwd"\n//.weight',
    "block-comment": "*/ int evil; /*.weight",
    "quotes": "q'\"`.weight",
    "trailing-backslash": "q_proj.weight\\",
    "line-splice": "q\\\nint evil;",
    "hash": "#pragma once",
    "ansi": "\x1b[31mred\x1b[0m.weight",
    "markup": "act[/][link=https://example.com]x[/link]",
    "huge": "w" * 300_000,
    "c-keyword": "int",
    "leading-digit": "0q_proj.weight",
    "unicode": "权重\u202e.weight",
    "trigraph": "q??/\n.weight",
    "no-suffix": "q_proj",
    "activation-name": "k_proj",          # the label another op's output would get
    "partial-name": "o_proj.partial",
}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return Path(export(str(tmp_path_factory.mktemp("onnx") / "tiny.onnx"), "tiny", seed=5))


def rename(model, old, new):
    next(t for t in model.graph.initializer if t.name == old).name = new
    for node in model.graph.node:
        node.input[:] = [new if x == old else x for x in node.input]


def compile_renamed(tiny_onnx, tmp_path, renames: dict):
    model = onnx.load(str(tiny_onnx))
    for old, new in renames.items():
        rename(model, old, new)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(out), "--schedule", "round-robin"])
    return result, out


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_weight_name_stays_data(tiny_onnx, tmp_path, case):
    name = HOSTILE[case]
    result, out = compile_renamed(tiny_onnx, tmp_path, {"q_proj.weight": name})
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stderr
    source = (out / "kernel.cu").read_text()
    generated = source[source.index("// ===== generated schedule ====="):]
    comments = [line.split("//", 1)[1] for line in generated.splitlines() if "//" in line]
    for line in generated.splitlines():                     # every line: code we emit, or a comment
        code = line.split("//", 1)[0]
        assert not code.lstrip().startswith("#"), line      # no directive in the generated part
        assert "evil" not in code and "kPlain" not in code.replace("kPlain,", "").replace("kPlain>", ""), line
        assert not line.endswith("\\"), line                # no line splice
    assert any(c_comment(name) in c for c in comments)      # the name is there, escaped
    assert all(ord(ch) < 128 for ch in generated)
    assert "rsqrt" in (out / "kernel.ptx").read_text()      # the RMSNorm was not defined away
    manifest = json.loads((out / "manifest.json").read_text())
    assert name in [w["name"] for w in manifest["weights"]]  # kept exactly, as data
    inspect = CliRunner().invoke(main, ["inspect", str(out)])
    assert inspect.exit_code == 0 and "\x1b" not in inspect.stdout


def test_names_that_collide_once_made_identifiers(tiny_onnx, tmp_path):
    result, out = compile_renamed(tiny_onnx, tmp_path, {"q_proj.weight": "a.b", "k_proj.weight": "a_b",
                                                        "v_proj.weight": "a-b"})
    assert result.exit_code == 0, result.stderr
    names = [b["name"] for b in json.loads((out / "manifest.json").read_text())["buffers"]]
    assert len(names) == len(set(names)) and {"a.b", "a_b", "a-b"} <= set(names)


@pytest.mark.parametrize("reserved,message", [
    ("x", "initializer 'x' has the name of a graph input; rename it"),
    ("k_cache", "initializer 'k_cache' has the name of a graph input; rename it"),
    ("y", "node output name 'y' is not unique in the graph"),          # the ONNX graph's output
])
def test_weight_with_the_name_of_a_graph_tensor_is_refused(tiny_onnx, tmp_path, reserved, message):
    result, out = compile_renamed(tiny_onnx, tmp_path, {"up_proj.weight": reserved})
    assert result.exit_code == 1 and result.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert not out.exists()


def test_weight_with_the_name_of_a_kernel_buffer_is_refused():
    """The tiling's own check, for a frontend whose names reach it (ONNX's stop at the graph)."""
    from adamk.errors import FrontendError
    from adamk.passes.tile import TaskBuilder
    builder = TaskBuilder(16, "bf16")
    builder.declare("y", "output", [1, 8], "bf16")
    with pytest.raises(FrontendError, match="weight 'y' has the name of the kernel's y buffer; rename the weight"):
        builder.declare("y", "weight", [8, 8], "bf16")


def test_escaping_functions():
    assert printable("a\nb\x1b[0m\u202e") == "a\\nb\\x1b[0m\\u202e"
    assert quoted("x" * 500).endswith("... (500 characters)'") and len(quoted("x" * 500)) < 160
    comment = c_comment('a"\\\n?é')
    assert comment == '"a\\x22\\x5c\\x0a\\x3f\\xc3\\xa9"' and not re.search(r"[^ -~]", comment)
    assert c_comment("w" * 100).endswith("(+36 chars)")
    assert label("q_proj.weight/../x y", "linear") == "q_proj.weight_.._x_y"
    assert label("0abc", "linear") == "linear_0abc" and label("权重", "linear") == "linear"
