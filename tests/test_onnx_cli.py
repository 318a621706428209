"""ONNX frontend, the `adamk` CLI, and the artifact contract for CI pipelines."""
import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from adamk.cli import main
from adamk.frontend.onnx_frontend import import_onnx
from adamk.frontend.torch_frontend import import_module
from adamk.models import PRESETS, DecoderLayer, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from export_onnx import export  # noqa: E402


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return Path(export(str(tmp_path_factory.mktemp("onnx") / "tiny.onnx"), "tiny", seed=7))


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(code, stderr, match):
    assert code == 1
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("done ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert match in lines[0], lines[0]


def test_onnx_and_torch_frontends_give_structurally_equal_ir(tiny_onnx):
    layer = DecoderLayer(PRESETS["tiny"], seed=7)
    from_torch, _ = import_module(layer, layer.example_inputs())
    assert import_onnx(tiny_onnx).is_structurally_equivalent(from_torch)


def test_external_data_is_found_and_never_read(tmp_path):
    path = Path(export(str(tmp_path / "ext.onnx"), "tiny", seed=1, external_data=True))
    data = [p for p in tmp_path.iterdir() if p.suffix == ".data"]
    assert data, "the exporter wrote no external data file"
    assert import_onnx(path) is not None
    data[0].unlink()
    code, _, err = cli("compile", path, "-o", tmp_path / "out")
    assert_user_error(code, err, f"lives in external file '{data[0].name}', which is missing")
    assert not (tmp_path / "out").exists()


def test_compile_twice_gives_byte_identical_directories(tiny_onnx, tmp_path):
    for out in ("a", "b"):
        code, _, err = cli("compile", tiny_onnx, "--gpu", "L20", "-o", tmp_path / out)
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in (tmp_path / "a").iterdir():                       # manifest.json included
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_inspect_reports_and_checks_files(tiny_onnx, tmp_path):
    out = tmp_path / "art"
    assert cli("compile", tiny_onnx, "-o", out, "--gpu", "H100")[0] == 0
    code, stdout, _ = cli("inspect", out)
    assert code == 0
    for needle in ("hidden 136, heads 6 (kv 2) x 24", "H100 (sm_90), 132 blocks", "tasks", "B per block",
                   "predicted", "cost model: measured: adamk/profiles/H100.json", "7 linear weights stored page by page",
                   "ok         kernel.sm_90.cubin"):
        assert needle in stdout, needle
    assert "UNCALIBRATED" not in stdout         # the H100 target plans with the profile measured on an H100
    (out / "kernel.ptx").write_text("tampered")
    code, stdout, err = cli("inspect", out)
    assert code == 1 and "MODIFIED   kernel.ptx" in stdout and "'kernel.ptx' modified" in err


def test_manifest_contract(tiny_onnx, tmp_path):
    out = tmp_path / "art"
    assert cli("compile", tiny_onnx, "-o", out, "--max-seq-len", "80", "--attention-parts", "2")[0] == 0
    m = json.loads((out / "manifest.json").read_text())
    for key in ("adamk_version", "target", "config", "model_signature", "weights", "files", "smem_peak_bytes",
                "predicted_step_us"):
        assert key in m
    assert isinstance(m["smem_peak_bytes"], int) and isinstance(m["smem_peak_bytes_without_ksplit"], int)
    assert "search_seconds" not in m and m["config"]["schedule"] == "search" and m["cost_model"] == "spec table"
    assert m["predicted_calibrated"] is False
    assert "UNCALIBRATED: no measured profile" in cli("inspect", out)[1]     # the L20 has none
    assert m["config"]["gpu"] == "L20" and m["config"]["max_seq_len"] == 80 and m["config"]["attention_parts"] == 2
    schedule = (out / "schedule.mlir").read_text()      # the search kept the attention's two parts
    assert set(re.findall(r'kind = "attention", .*?k_split = (\d+)', schedule)) == {"2"}
    assert set(m["files"]) == {p.name for p in out.iterdir()} - {"manifest.json"}


def test_calibrate_without_a_gpu_is_one_clear_error(tmp_path):
    code, _, err = cli("calibrate", "--gpu", "H100", "-o", tmp_path / "p.json")
    assert_user_error(code, err, "adamk calibrate measures a GPU")
    assert not (tmp_path / "p.json").exists()


def test_calibrate_reports_the_fit(tmp_path, monkeypatch):
    """What `adamk calibrate` prints once a (stand-in) GPU was measured: the profile's main figures
    and each trace measured against the fit's prediction; the profile loads back."""
    import adamk.calibrate as calibration
    from adamk.search.cost import CostModel
    from adamk.targets import get_gpu
    model = CostModel.for_gpu(get_gpu("H200"))
    monkeypatch.setattr(calibration, "calibrate", lambda *a, **k: (model, [("round-robin", 64.0, 62.0)]))
    code, out, err = cli("calibrate", "--gpu", "H200", "-o", tmp_path / "p.json")
    assert code == 0, err
    assert f"poll {model.poll_latency_us:.2f} us" in out + err and "round-robin: measured 64.0 us, the fit " \
        "predicts 62.0 us (-3.1%)" in out + err
    assert CostModel.load(tmp_path / "p.json", get_gpu("H200")).poll_latency_us == model.poll_latency_us


def test_compile_with_a_cost_profile_and_a_baseline_schedule(tiny_onnx, tmp_path):
    from adamk.search.cost import CostModel
    from adamk.targets import get_gpu
    CostModel.for_gpu(get_gpu("L20")).save(tmp_path / "l20.json")
    out = tmp_path / "art"
    code, _, err = cli("compile", tiny_onnx, "-o", out, "--cost-model", tmp_path / "l20.json", "--schedule", "barrier")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["cost_model"] == str(tmp_path / "l20.json") and m["config"]["schedule"] == "barrier"
    assert "barrier.0" in {c["name"] for c in m["counters"]}
    code, _, err = cli("compile", tiny_onnx, "-o", tmp_path / "h", "--cost-model", tmp_path / "l20.json", "--gpu", "H100")
    assert_user_error(code, err, "was calibrated on L20; the target is H100")


def test_gpus_lists_the_spec_table():
    code, stdout, _ = cli("gpus")
    assert code == 0
    assert "L20" in stdout and "H100" in stdout and "sm_89" in stdout and "99KB" in stdout


def test_dump_ir_writes_ir_after_each_pass(tiny_onnx, tmp_path):
    code, _, err = cli("compile", tiny_onnx, "-o", tmp_path / "o", "--dump-ir", tmp_path / "ir")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == [".adamk-ir-dump", "00-batch.mlir", "01-fuse.mlir", "02-ksplit.mlir", "03-search-tiling.mlir", "04-tile.mlir",
                     "05-schedule-search.mlir"]
    # the attention: 2 tasks (a KV head's 3 query heads each) x 8 parts (ksplit.MERGED_PARTS; 92 SMs // 2 is more)
    assert "k_split = 8" in (tmp_path / "ir" / "02-ksplit.mlir").read_text()


# ---- bad input: one line on stderr, exit 1, no traceback, no output directory ----------------

def test_missing_path(tmp_path):
    code, _, err = cli("compile", tmp_path / "nope.onnx", "-o", tmp_path / "out")
    assert_user_error(code, err, "nope.onnx: no such file")
    assert not (tmp_path / "out").exists()


def test_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a protobuf, just text\n" * 10)
    code, _, err = cli("compile", bad, "-o", tmp_path / "out")
    assert_user_error(code, err, "is not a valid ONNX model")
    assert not (tmp_path / "out").exists()


def test_truncated_onnx(tiny_onnx, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    code, _, err = cli("compile", cut, "-o", tmp_path / "out")
    assert_user_error(code, err, "is not a valid ONNX model")
    assert not (tmp_path / "out").exists()


def test_unsupported_op_names_op_and_node(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    node = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    node.op_type = "Tanh"
    path = tmp_path / "tanh.onnx"
    onnx.save(model, str(path))
    code, _, err = cli("compile", path, "-o", tmp_path / "out")
    assert_user_error(code, err, f"cannot place op 'Tanh' at node '{node.name}'")
    assert not (tmp_path / "out").exists()


def test_a_qwen3_layer_compiles_from_onnx(tmp_path):
    """examples/export_onnx.py --hf qwen3 (per-head q/k RMSNorm) through the CLI."""
    pytest.importorskip("transformers")
    path = export(str(tmp_path / "qwen3.onnx"), "tiny", seed=2, hf="qwen3")
    code, _, err = cli("compile", path, "--gpu", "L20", "-o", tmp_path / "out", "--dump-ir", tmp_path / "ir")
    assert code == 0, err
    assert (tmp_path / "out" / "manifest.json").exists()
    fused = (tmp_path / "ir" / "01-fuse.mlir").read_text()      # the norms fused into the attention
    assert "adamk.head_rmsnorm" not in fused and "norm_eps" in fused


def test_missing_initializer(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    victim = next(t for t in model.graph.initializer if t.name == "up_proj.weight")
    model.graph.initializer.remove(victim)
    path = tmp_path / "missing.onnx"
    onnx.save(model, str(path))
    code, _, err = cli("compile", path, "-o", tmp_path / "out")
    assert_user_error(code, err, "reads 'up_proj.weight', which no node, graph input or initializer provides")


def test_plan_that_cannot_fit_names_op_footprint_and_budget(tiny_onnx, tmp_path):
    code, _, err = cli("compile", tiny_onnx, "-o", tmp_path / "o", "--stages", "2", "--stage-bytes", "49664",
                       "--tile-rows", "32", "--no-ksplit")
    assert_user_error(code, err, "of shared memory per block")
    # the first op that does not fit: its kind and shape (test_passes checks a linear's wording)
    assert re.search(r"error: (linear '[\w.]+' \(32 rows x \d+ of K=\d+\)|attention \(head_dim \d+\)) needs 2 ring "
                     r"pages x \(\d+ B \+ 16 B of "
                     r"barriers\) \+ a \d+ B work area = \d+ B of shared memory per block; L20 allows 101376 B", err), err
    assert not (tmp_path / "o").exists()
    # a ring that takes the budget by itself is named as such
    code, _, err = cli("compile", tiny_onnx, "-o", tmp_path / "o", "--stages", "8")
    assert_user_error(code, err, "8 ring pages of 32768 B and their barriers take 262272 B of shared memory per "
                                 "block, leaving no work area within L20's 101376 B")
    assert not (tmp_path / "o").exists()


def test_shape_the_kernel_cannot_take(tmp_path):
    cfg = LlamaConfig(hidden_size=100, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                      num_layers=1, vocab_size=10, max_seq_len=8)
    import export_onnx
    PRESETS_BACKUP = dict(export_onnx.PRESETS)
    export_onnx.PRESETS["odd"] = cfg
    try:
        path = export(str(tmp_path / "odd.onnx"), "odd")
    finally:
        export_onnx.PRESETS.clear()
        export_onnx.PRESETS.update(PRESETS_BACKUP)
    code, _, err = cli("compile", path, "-o", tmp_path / "out")
    assert_user_error(code, err, "K=100 is not a multiple of 8")
    assert not (tmp_path / "out").exists()


def test_unknown_gpu_lists_known_ones(tiny_onnx, tmp_path):
    code, _, err = cli("compile", tiny_onnx, "--gpu", "A100", "-o", tmp_path / "out")
    assert_user_error(code, err, "unknown GPU 'A100'; known GPUs: L20, L40S, RTX4090, H100, H200")


def test_non_empty_output_needs_force(tiny_onnx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli("compile", tiny_onnx, "-o", out)
    assert_user_error(code, err, "exists and is not empty (use --force")
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = cli("compile", tiny_onnx, "-o", out, "--force")     # not an artifact: never replaced
    assert_user_error(code, err, "is not an adamk artifact (no valid manifest.json); refusing to replace it")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    for _ in range(2):                                                   # an artifact is replaced with --force
        code, _, err = cli("compile", tiny_onnx, "-o", out, "--force", "--schedule", "round-robin")
        assert code == 0, err
    assert (out / "manifest.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_console_script_and_module_entry_point(tmp_path):
    script = Path(sys.executable).parent / "adamk"
    for cmd in ([str(script)] if script.exists() else []) + [[sys.executable, "-m", "adamk"]]:
        cmd = cmd if isinstance(cmd, list) else [cmd]
        run = subprocess.run(cmd + ["compile", str(tmp_path / "x.onnx"), "-o", str(tmp_path / "o")],
                             capture_output=True, text=True)
        assert run.returncode == 1
        assert run.stderr.strip().splitlines() == [f"error: {tmp_path / 'x.onnx'}: no such file"]

