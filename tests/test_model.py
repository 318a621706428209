"""A whole model in one kernel, on the CPU: the layers pass folds identical decoder layers into
one loop, the schedule runs its body once per layer on layer-indexed buffers, and the simulator
(the first oracle) decodes what float32 PyTorch decodes, greedy token after token."""
import copy
import dataclasses
import random
import re

import numpy as np
import pytest
import torch
from xdsl.dialects import func

import adamk
from adamk.compiler import import_model
from adamk.dialects import make_context, parse_module
from adamk.dialects.graph import AttentionOp, LayerInputOp, LayerOutputOp, LinearOp, WeightOp
from adamk.dialects.schedule import ExecOp, LoopBeginOp, LoopEndOp
from adamk.dialects.task import BufferOp
from adamk.errors import FrontendError
from adamk.models import PRESETS, DecoderLayer, LlamaModel
from adamk.passes.fuse import FusePass
from adamk.passes.layers import LayersPass
from adamk.simulator import Simulator

# the tiny preset with a vocabulary of three argmax chunks (4096 logits each), the last one short
TINY = dataclasses.replace(PRESETS["tiny"], vocab_size=9000, num_layers=3)
CONFIG = adamk.CompileConfig(gpu="H200", num_sms=32)     # fewer blocks: less straight-line code for NVRTC


def folded(model):
    graph = import_model(model)
    FusePass().apply(make_context(), graph)
    LayersPass().apply(make_context(), graph)
    graph.verify()
    return graph


def simulator(model, art) -> Simulator:
    sched = parse_module(art.files["schedule.mlir"].decode())
    names = {b.sym_name.data: b.names for b in sched.ops if isinstance(b, BufferOp) and b.layer_names is not None}
    return Simulator(sched, {k: v.detach().float().numpy() for k, v in model.state_dict().items()}, names)


@pytest.fixture(scope="module")
def tiny():
    model = LlamaModel(TINY, seed=random.randrange(2**31))
    return model, adamk.compile(model, CONFIG)


def test_layers_fold_into_one_loop_body_with_every_layers_weights():
    model = LlamaModel(TINY, seed=0)
    ops = list(next(iter(folded(model).ops)).body.block.ops)
    assert sum(isinstance(o, AttentionOp) for o in ops) == 1
    assert [type(o) for o in ops].count(LayerInputOp) == 1 and [type(o) for o in ops].count(LayerOutputOp) == 1
    q = next(o for o in ops if isinstance(o, LinearOp)).weight.owner
    assert q.names == [f"layers.{i}.q_proj.weight" for i in range(TINY.num_layers)]
    head = [o for o in ops if isinstance(o, WeightOp) and o.layer_names is None]
    assert sorted(w.weight_name.data for w in head) == ["embed_tokens.weight", "lm_head.weight", "norm.weight"]


def test_layers_that_differ_are_a_clear_error():
    model = LlamaModel(TINY, seed=0)
    model.layers[1] = DecoderLayer(dataclasses.replace(TINY, qkv_bias=True), seed=1)   # q/k/v with biases
    with pytest.raises(FrontendError, match="layer 1 differs from layer 0 at its op"):
        folded(model)


def test_schedule_runs_the_layer_body_in_a_loop_on_layer_indexed_buffers(tiny):
    _, art = tiny
    sched = parse_module(art.files["schedule.mlir"].decode())   # printed and parsed back
    fns = [o for o in sched.ops if isinstance(o, func.FuncOp)]
    for fn in fns:
        marks = [type(o) for o in fn.body.block.ops if isinstance(o, (LoopBeginOp, LoopEndOp))]
        assert marks == [LoopBeginOp, LoopEndOp]
    execs = [o for fn in fns for o in fn.body.block.ops if isinstance(o, ExecOp)]
    kinds = {o.kind.data for o in execs}
    assert {"embedding", "linear", "attention", "argmax", "argmax_combine"} <= kinds
    logits = art.manifest["model"]["logits_buffer"]          # the LM head's: outside the loop too
    assert all(o.in_loop == (o.kind.data not in ("embedding", "argmax", "argmax_combine") and
                             o.source.data.removesuffix(".partial") != logits) for o in execs)
    buffers = {b.sym_name.data: b for b in sched.ops if isinstance(b, BufferOp)}
    assert buffers["k_cache"].copies == TINY.num_layers
    assert buffers["hidden"].copies == TINY.num_layers + 1       # the embedding's, then each layer's output
    src = art.files["kernel.cu"].decode()
    assert f"for (int layer = 0; layer < {TINY.num_layers}; ++layer)" in src
    assert f"if (at < 0 || at >= {TINY.max_seq_len}) {{" in src      # the device position's bound
    weights = art.manifest["weights"]
    assert {(w["name"], w["slot"]) for w in weights if w.get("buffer") == "layers.0.q_proj.weight"} == \
        {(f"layers.{i}.q_proj.weight", i) for i in range(TINY.num_layers)}


def decodes_as_float32(model, art, steps: int = 5):
    """The simulator runs `steps` greedy steps from a random position as float32 PyTorch does."""
    sim = simulator(model, art)
    pos = random.randrange(1, 30)
    token, _, k, v = model.example_inputs(pos=pos, seed=random.randrange(2**31))
    sim.mem["k_cache"][:], sim.mem["v_cache"][:] = k.numpy(), v.numpy()
    token = int(token)
    for p in range(pos, pos + steps):
        logits = sim.step(token, p)[0]
        with torch.no_grad():
            ref = model(torch.tensor([token]), torch.tensor(p), k, v).reshape(-1).numpy()
        assert np.linalg.norm(logits - ref) / np.linalg.norm(ref) < 1e-5, p
        token = int(sim.mem["tokens"][0, p + 1])
        assert token == int(np.argmax(ref)), p           # the first of the largest, across chunks
    assert np.abs(sim.mem["k_cache"] - k.numpy()).max() < 1e-5   # every layer appended its rows


def test_simulator_decodes_greedily_as_float32_pytorch(tiny):
    decodes_as_float32(*tiny)


def test_a_one_layer_model_is_a_loop_of_one_layer():
    """One decoder layer still takes the layer-indexed path (its buffers have one slot each)."""
    model = LlamaModel(dataclasses.replace(TINY, num_layers=1), seed=random.randrange(2**31))
    art = adamk.compile(model, CONFIG)
    assert "for (int layer = 0; layer < 1; ++layer)" in art.files["kernel.cu"].decode()
    decodes_as_float32(model, art, steps=2)


def test_argmax_prefers_the_lowest_index_on_ties(tiny):
    """Equal largest logits in two chunks: the lower index wins, whatever order the tasks ran."""
    model, art = tiny
    model = copy.deepcopy(model)
    sim = simulator(model, art)
    top = int(np.argmax(sim.step(5, 0)[0]))                          # a positive logit: twice it is the largest
    with torch.no_grad():
        model.lm_head.weight[17] = 2 * model.lm_head.weight[top]  # ... twice, in chunks 0 and 2
        model.lm_head.weight[8500] = model.lm_head.weight[17]
    sim = simulator(model, art)
    sim.step(5, 0)
    assert int(sim.mem["tokens"][0, 1]) == 17


def test_the_same_model_compiles_to_the_same_bytes(tiny):
    model, art = tiny
    again = adamk.compile(model, CONFIG)
    assert again.files == art.files and again.manifest_bytes() == art.manifest_bytes()
    assert art.manifest["search_complete"]


def test_inspect_describes_the_whole_model_and_its_read_floor(tiny, tmp_path):
    from click.testing import CliRunner
    from adamk.cli import main
    model, art = tiny
    path = art.save(tmp_path / "model")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{TINY.num_layers} layer(s) in one loop: a whole model" in result.output
    table = model.embed_tokens.weight
    assert art.manifest["weight_read_bytes"] == art.manifest["weight_bytes"] - 2 * (table.numel() - table.shape[1])
    assert art.manifest["model"]["intermediate_size"] == TINY.intermediate_size     # not the LM head's rows


def test_a_profiling_build_moves_the_stamps_per_layer(tiny):
    """A profiling build's layer loop points the stamps at its layer's slice of the trace buffer
    ([layers][tasks][slots]) and back to slice 0 after it; a timed build's code has no such line."""
    model, art = tiny
    src = adamk.compile(model, dataclasses.replace(CONFIG, profile=True)).files["kernel.cu"].decode()
    tasks = int(re.search(r"(\d+) tasks\.", src).group(1))
    assert f"    s.trace = step.trace + (size_t)layer * {tasks * 4};" in src
    assert src.count("  Step s = step;") == CONFIG.num_sms
    plain = art.files["kernel.cu"].decode()
    assert "= step.trace" not in plain and "Step s = step" not in plain


def test_an_sms_run_of_one_ops_tiles_is_one_loop():
    """Codegen writes consecutive calls that differ only in arithmetic progressions as one loop
    (the code grows with ops, not tasks); anything else stays written out."""
    from adamk.codegen.cuda import _looped
    units = [[f"  linear_op4(s, b, {100 + 132 * t}, 0, {60 + 2 * t}, {832 + 2112 * t}, 0);  // \"logits.r{t}\": rows"]
             for t in range(5)]
    out = _looped(units + [["  argmax_op5(s, b, 900, 0, 0, 4096, 0);  // \"c0\""]])
    assert out[0] == '  for (int t = 0; t < 5; ++t) {  // "logits.r0" .. "logits.r4"'
    assert out[1] == "    linear_op4(s, b, 100 + t * 132, 0, 60 + t * 2, 832 + t * 2112, 0);"
    assert out[2:] == ["  }", '  argmax_op5(s, b, 900, 0, 0, 4096, 0);  // "c0"']
    bent = [["  f(1);"], ["  f(2);"], ["  f(4);"]]          # no single step: written out
    assert _looped(bent) == ["  f(1);", "  f(2);", "  f(4);"]


@pytest.mark.parametrize("schedule", ["barrier", "queue"])
def test_the_ablation_schedules_refuse_a_whole_model(schedule):
    with pytest.raises(adamk.AdamkError, match=f"schedule '{schedule}' .* takes one decoder layer"):
        adamk.compile(LlamaModel(PRESETS["tiny"], seed=0), adamk.CompileConfig(gpu="H200", schedule=schedule))


def test_the_search_never_gives_a_gated_linear_pages_over_the_row_limit():
    """On 8 SMs the search once chose 32 rows per gated task: pages of 64 rows (of both weights),
    which linear.cuh refuses at compile time. Its candidates now stop at pages of MAX_TILE_ROWS, and
    the verifier names such a tiling."""
    from adamk.config import MAX_TILE_ROWS
    from adamk.dialects.graph import LinearOp as Linear
    from xdsl.dialects.builtin import IntegerAttr, i64
    from xdsl.utils.exceptions import VerifyException
    model = LlamaModel(TINY, seed=random.randrange(2**31))
    art = adamk.compile(model, adamk.CompileConfig(gpu="H200", num_sms=8))
    gated = [o for o in parse_module(art.files["schedule.mlir"].decode()).walk()
             if isinstance(o, ExecOp) and o.buffer("weight2")]
    assert gated and all(2 * o.param("tile_rows") <= MAX_TILE_ROWS for o in gated)
    op = next(o for o in folded(model).walk() if isinstance(o, Linear) and o.weight2 is not None)
    op.properties["tile_rows"] = IntegerAttr(32, i64)
    with pytest.raises(VerifyException, match="a gated linear's tile_rows 32 gives pages of 64 rows"):
        op.verify()


def test_run_and_bench_check_what_they_can_before_the_gpu(tiny, tmp_path):
    """`adamk run` / `adamk bench` on a machine without a GPU: one clear line naming it, after the
    checks that need none (a layer's artifact, missing weights)."""
    from click.testing import CliRunner
    from adamk.cli import main
    model, artifact = tiny
    whole = artifact.save(tmp_path / "whole")
    layer = adamk.compile(DecoderLayer(PRESETS["tiny"], seed=1), CONFIG).save(tmp_path / "layer")
    weights = tmp_path / "model.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    def cli(*args):
        r = CliRunner().invoke(main, [str(a) for a in args])
        return r.exit_code, r.stderr.strip().splitlines()

    for command in (["run", layer, "--weights", weights, "--prompt-ids", "1,2"], ["bench", layer, "--weights", weights]):
        code, lines = cli(*command)
        assert code == 1 and len(lines) == 1 and "needs a whole model" in lines[0] and "is one decoder layer" in lines[0]
    code, lines = cli("run", whole, "--weights", tmp_path / "nope.safetensors", "--prompt-ids", "1,2")
    assert code == 1 and lines == [f"error: --weights {tmp_path / 'nope.safetensors'}: no such file or directory"]
    if not torch.cuda.is_available():
        for command in (["run", whole, "--weights", weights, "--prompt-ids", "1,2"], ["bench", whole, "--weights", weights]):
            code, lines = cli(*command)
            assert code == 1 and len(lines) == 1 and "needs a CUDA GPU; this machine has none" in lines[0], lines


def test_time_launches_leads_each_block_with_an_uncounted_launch(monkeypatch):
    """`adamk bench` checks launch_count against max_seq_len (each whole-model step advances the
    position): it must be the calls time_launches makes. Each block's start event comes after one
    launch of its own, so the block times the GPU's steady state, not the host's first launch."""
    from adamk.runtime import timing
    log = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            log.append("record")

        def synchronize(self):
            log.append("sync")

        def elapsed_time(self, other):
            return random.uniform(0.04, 0.06)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    iters, block = random.choice([(30, 10), (25, 5), (40, 8)])
    single, b2b = timing.time_launches(lambda: log.append("fn"), iters, block=block)
    assert log.count("fn") == timing.launch_count(iters, block=block)
    assert 40 <= single <= 60 and 40 / block <= b2b <= 60 / block
    blocks = "".join("f" if e == "fn" else "r" if e == "record" else "" for e in log)
    assert blocks.endswith(("f" + "r" + "f" * block + "r") * (iters // block))   # lead, start, block, stop
