"""The adamk dialect is real MLIR: the IRDL generated from the xDSL op definitions ships in every
artifact, and upstream MLIR (iree-opt from iree-base-compiler, adamk[mlir]; CI installs it)
parses and verifies the artifact's three IR levels with it, and rejects hand-broken ops."""
import json
import re
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import adamk
from adamk import mlir_check
from adamk.cli import main
from adamk.dialects import Adamk
from adamk.dialects.irdl import FILE_NAME, dialect_irdl
from adamk.models import compile_preset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from export_onnx import export  # noqa: E402

OPT = mlir_check.find_opt()
needs_mlir = pytest.mark.skipif(OPT is None, reason="no MLIR opt driver (pip install adamk[mlir])")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny layer compiled for both architectures: the searched plan for the L20 (split
    attention, K-parts) and round-robin for the H100."""
    base = tmp_path_factory.mktemp("mlir")
    return [compile_preset("tiny", adamk.CompileConfig(gpu="L20"), base / "l20"),
            compile_preset("tiny", adamk.CompileConfig(gpu="H100", schedule="round-robin"), base / "h100")]


def test_irdl_describes_every_op_from_the_xdsl_definitions(artifacts):
    text = dialect_irdl()
    assert text == dialect_irdl()                                   # deterministic
    for op in Adamk.operations:
        d = op.get_irdl_definition()
        block = text.split(f"irdl.operation @{d.name.split('.', 1)[1]} {{", 1)[1].split("\n    }", 1)[0]
        for name, _ in d.operands:
            assert f"{name}: " in block.split("irdl.operands(", 1)[1].split(")", 1)[0], (d.name, name)
        for name, _ in d.results:
            assert f"{name}: " in block.split("irdl.results(", 1)[1], (d.name, name)
        required = [n for n, p in d.properties.items() if type(p).__name__ == "PropertyDef"
                    and n != "operandSegmentSizes"]
        for name in required:
            assert f'"{name}" = %' in block, (d.name, name)
    assert "irdl.type @token" in text and "irdl.base @adamk::@token" in text
    assert CliRunner().invoke(main, ["dialect"]).stdout == text     # `adamk dialect`
    for path in artifacts:                                          # shipped, hashed, the same text
        assert (Path(path) / FILE_NAME).read_text() == text
        assert FILE_NAME in json.loads((Path(path) / "manifest.json").read_text())["files"]


@needs_mlir
def test_every_level_verifies_in_upstream_mlir(artifacts):
    for path in artifacts:
        assert mlir_check.check_artifact(path) == {level: None for level in mlir_check.LEVELS}, path
    schedule = (Path(artifacts[0]) / "schedule.mlir").read_text()
    assert "func.func @sm0()" in schedule and "func.return" in schedule


def _broken(tmp_path, artifact, level, old, new, count=1):
    text = (Path(artifact) / level).read_text()
    assert old in text, old
    path = tmp_path / level
    path.write_text(text.replace(old, new, count))
    return mlir_check.verify_text(OPT, Path(artifact) / FILE_NAME, path)


@needs_mlir
def test_upstream_mlir_rejects_broken_ops(artifacts, tmp_path):
    art = artifacts[0]
    graph = (Path(art) / "graph.mlir").read_text()
    # a linear without its weight operand (its segment sizes still say two)
    line = next(ln for ln in graph.splitlines() if '"adamk.linear"(' in ln and "array<i32: 1, 1, 0, 0, 0, 0, 0>" in ln)
    args = re.search(r'"adamk.linear"\((%\d+), (%\d+)\)', line)
    types = re.search(r": \((tensor<[^>]+>), (tensor<[^>]+>)\) ->", line)
    missing = line.replace(args.group(0), f'"adamk.linear"({args.group(1)})').replace(
        types.group(0), f": ({types.group(1)}) ->")
    error = _broken(tmp_path, art, "graph.mlir", line, missing)
    assert error and "operandSegmentSizes" in error, error
    # an attribute of the wrong type, and a missing one
    error = _broken(tmp_path, art, "graph.mlir", 'prologue = "none"', "prologue = 3 : i64")
    assert error and "expected base attribute 'builtin.string' but got 'builtin.integer'" in error, error
    error = _broken(tmp_path, art, "graph.mlir", 'weight_name = "input_layernorm.weight"', "")
    assert error and 'attribute "weight_name" is expected but not provided' in error, error
    # the task level: a tile that is a string; the schedule level: a task id that is a string
    error = _broken(tmp_path, art, "tasks.mlir", "tile = array<i64:", 'tile = "0, 16", was = array<i64:')
    assert error and "builtin.dense_array" in error, error
    error = _broken(tmp_path, art, "schedule.mlir", "task_id = 0 : i64", 'task_id = "0"')
    assert error and "builtin.integer" in error, error
    assert _broken(tmp_path, art, "schedule.mlir", "adamk.poll", "adamk.pole") is not None   # an unknown op


def test_inspect_mlir_check(artifacts, monkeypatch):
    if OPT is not None:
        result = CliRunner().invoke(main, ["inspect", "--mlir-check", artifacts[1]])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.count("verified") == 3 and "upstream MLIR (" in result.stdout
    monkeypatch.setattr(mlir_check, "find_opt", lambda: None)           # a machine without the extra
    result = CliRunner().invoke(main, ["inspect", "--mlir-check", artifacts[1]])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: no MLIR opt driver: install the extra with `pip install adamk[mlir]` (iree-base-compiler's "
        "iree-opt), or put mlir-opt on PATH")


@needs_mlir
def test_hostile_names_stay_strings_upstream(tmp_path):
    """Model names reach the IR only as string attributes; upstream MLIR reads the same strings."""
    onnx_path = Path(export(str(tmp_path / "tiny.onnx"), "tiny", seed=5))
    model = onnx.load(str(onnx_path))
    names = {"q_proj.weight": 'q"\\\n}) : () -> ()', "k_proj.weight": "权重\u202e\x1b[31m.weight"}
    for old, new in names.items():
        next(t for t in model.graph.initializer if t.name == old).name = new
        for node in model.graph.node:
            node.input[:] = [new if x == old else x for x in node.input]
    onnx.save(model, str(onnx_path))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(onnx_path), "-o", str(out), "--schedule", "round-robin"])
    assert result.exit_code == 0, result.stderr
    assert mlir_check.check_artifact(out) == {level: None for level in mlir_check.LEVELS}
