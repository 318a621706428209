"""Batches of 1 to 16 sequences, each at its own position, on the CPU: the batch pass widens the
traced graph, a linear task computes its rows for every sequence from one read of its weights,
an attention task serves one sequence, and the simulator (the first oracle) gives for every
sequence what float32 PyTorch gives for it alone."""
import dataclasses
import random

import numpy as np
import pytest
import torch

import adamk
from adamk import smem
from adamk.dialects.graph import LinearOp
from adamk.dialects.schedule import ExecOp
from adamk.dialects.task import BufferOp
from adamk.errors import AdamkError, ScheduleError
from adamk.kinds import kind as task_kind
from adamk.models import PRESETS, LlamaModel
from adamk.simulator import Simulator
from helpers import lower, random_layer, rel


def positions(batch: int, max_seq: int) -> list[int]:
    """Different positions per sequence, the first and the last of the cache among them."""
    ends = [0, max_seq - 1]
    return (ends + random.sample(range(1, max_seq - 1), batch - 2))[:batch] if batch > 1 else [random.randrange(max_seq)]


def check_layer(layer, schedule, batch: int):
    cfg = layer.cfg
    pos = positions(batch, cfg.max_seq_len)
    x = torch.randn(batch, cfg.hidden_size)
    kc = torch.randn(batch, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim)
    vc = torch.randn_like(kc)
    sim = Simulator(schedule, {k: v.numpy() for k, v in layer.state_dict().items()})
    sim.mem["k_cache"][:], sim.mem["v_cache"][:] = kc.numpy(), vc.numpy()
    y = sim.step(x.numpy(), pos)
    assert y.shape == (batch, cfg.hidden_size) and not np.isnan(y).any()
    for b in range(batch):                 # each sequence alone, on its own cache
        k1, v1 = kc[b:b + 1].clone(), vc[b:b + 1].clone()
        with torch.no_grad():
            ref = layer(x[b:b + 1], torch.tensor(pos[b]), k1, v1).numpy()
        assert rel(y[b], ref[0]) < 1e-5, (b, pos[b])
        assert rel(sim.mem["k_cache"][b], k1[0].numpy()) < 1e-6 and rel(sim.mem["v_cache"][b], v1[0].numpy()) < 1e-6


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_a_batch_of_sequences_at_their_own_positions_matches_each_alone(batch):
    layer = random_layer("tiny")
    schedule = adamk.lower(layer, adamk.CompileConfig(gpu="H200", batch_size=batch, search_budget_s=5)).schedule
    attention = [o for o in schedule.walk() if isinstance(o, ExecOp) and o.kind.data == "attention"]
    assert sorted({o.sequence for o in attention}) == list(range(batch))     # one sequence each
    linear = [o for o in schedule.walk() if isinstance(o, ExecOp) and o.kind.data == "linear"]
    assert {o.param("batch") for o in linear} == {batch} and all(o.sequence is None for o in linear)
    check_layer(layer, schedule, batch)


@pytest.mark.parametrize("batch", [3, 7, 8, 16])
def test_split_linears_and_attention_of_a_batch_agree_with_each_sequence(batch):
    """Every linear split over K in 3 parts and the attention in 4 parts, round-robin on 92 SMs:
    o_proj's staging merges the parts up to a batch of STAGED_MERGE_MAX_BATCH, combine tasks (one
    per sequence and KV group) above it; the parts of every sequence land in their own rows."""
    from adamk.passes.tile import STAGED_MERGE_MAX_BATCH
    layer = random_layer("tiny")
    schedule = lower(layer, num_sms=92, stage_bytes=512, linear_parts=3, gate_up=False, batch=batch,
                     attention_parts=4)[3]
    execs = [o for o in schedule.walk() if isinstance(o, ExecOp)]
    staged = batch <= STAGED_MERGE_MAX_BATCH
    assert {o.param("prologue") for o in execs if o.kind.data == "linear"} == \
        {"rmsnorm", "silu_mul"} | ({"attn_combine"} if staged else {"none"})
    combines = [o for o in execs if o.kind.data == "attention_combine"]
    assert len(combines) == (0 if staged else batch * layer.cfg.num_kv_heads)
    assert all(o.k_split.value.data > 1 for o in execs)
    check_layer(layer, schedule, batch)


def test_an_unsplit_attention_of_a_batch_writes_the_shadow_its_o_proj_stages():
    """With one attention part at a batch, the attention tasks store a bf16 shadow of their output
    beside the floats, the same elements, and o_proj stages the shadow (half the bytes of tagged
    floats); the simulator carries the shadow, so a staging of elements nobody wrote reads NaN."""
    layer = random_layer("tiny")
    schedule = adamk.lower(layer, adamk.CompileConfig(gpu="H200", batch_size=3, attention_parts=1,
                                                      schedule="round-robin")).schedule
    execs = [o for o in schedule.walk() if isinstance(o, ExecOp)]
    attention = [o for o in execs if o.kind.data == "attention"]
    shadow = attention[0].buffer("pairs")
    assert shadow and all(o.buffer("pairs") == shadow for o in attention)
    for o in attention:
        written = task_kind("attention").writes(o)
        assert sorted((b, e) for n, b, e in written if n == shadow) == \
            sorted((b, e) for n, b, e in written if n == o.buffer("out"))
    o_proj = [o for o in execs if o.kind.data == "linear" and o.buffer("input") == shadow]
    assert o_proj and all(o.param("paired") == 1 and o.param("prologue") == "none" for o in o_proj)
    check_layer(layer, schedule, 3)


TINY_MODEL = dataclasses.replace(PRESETS["tiny"], vocab_size=9000, num_layers=2)


@pytest.mark.parametrize("batch,parts", [(1, None), (3, None), (8, None), (16, None), (3, 1)])
def test_a_batch_decodes_greedily_as_each_sequence_alone(batch, parts):
    """A whole model (three argmax chunks of 4,096 logits per sequence up to batch 4, five of 2,048
    at batch 8, nine of 1,024 at batch 16): every sequence's logits and next id at its own
    position, four steps, equal float32 PyTorch's for that sequence alone; also with one attention
    part, whose output's bf16 shadow o_proj stages (in the layer loop's slots)."""
    model = LlamaModel(TINY_MODEL, seed=random.randrange(2**31))
    lowered = adamk.lower(model, adamk.CompileConfig(gpu="H200", batch_size=batch, num_sms=32,
                                                     schedule="round-robin", attention_parts=parts))
    sched = lowered.schedule
    argmax = [o for o in sched.walk() if isinstance(o, ExecOp) and o.kind.data == "argmax"]
    chunks = {1: 3, 3: 3, 8: 5, 16: 9}[batch]
    assert len(argmax) == chunks and sorted(o.tile_range for o in argmax)[-1] == (8192, 9000)
    names = {b.sym_name.data: b.names for b in sched.ops if isinstance(b, BufferOp) and b.layer_names is not None}
    sim = Simulator(sched, {k: v.float().numpy() for k, v in model.state_dict().items()}, names)
    pos = np.array(positions(batch, 40))
    refs = [model.example_inputs(pos=int(p), seed=random.randrange(2**31)) for p in pos]
    tokens = np.array([int(t) for t, *_ in refs])
    k = torch.stack([r[2][:, 0] for r in refs], 1)           # [layers, batch, kv_heads, max_seq_len, head_dim]
    v = torch.stack([r[3][:, 0] for r in refs], 1)
    sim.mem["k_cache"][:], sim.mem["v_cache"][:] = k.numpy(), v.numpy()
    for _ in range(4):
        logits = sim.step(tokens, pos)
        assert logits.shape == (batch, TINY_MODEL.vocab_size)
        for b in range(batch):
            _, _, kb, vb = refs[b]
            with torch.no_grad():
                ref = model(torch.tensor([int(tokens[b])]), torch.tensor(int(pos[b])), kb, vb).reshape(-1).numpy()
            assert rel(logits[b], ref) < 1e-5, (b, pos[b])
            assert int(sim.mem["tokens"][b, pos[b] + 1]) == int(np.argmax(ref)), (b, pos[b])
        tokens = sim.mem["tokens"][np.arange(batch), pos + 1].copy()
        pos = pos + 1
    for b in range(batch):                # every layer appended each sequence's rows to its own cache
        assert np.abs(sim.mem["k_cache"][:, b] - refs[b][2][:, 0].numpy()).max() < 1e-5


@pytest.mark.parametrize("batch", [1, 3])
def test_a_batchs_rmsnorm_stagings_read_a_bf16_shadow_its_writers_store(batch):
    """At a batch every RMSNorm linear stages a bf16 shadow of its input (two bf16 and the epoch a
    word: half the bytes of tagged floats), and so does the down projection of the gated linear's
    output (at a batch of one too: its paged staging); every task that writes the float words (the
    embedding, the K-split combines or an unsplit linear's tasks) writes the same elements of the
    shadow, in the same layer slot. A batch of one keeps the floats elsewhere. The simulator carries
    the shadow's values, so a shadow nobody wrote reads as NaN there."""
    model = LlamaModel(TINY_MODEL, seed=random.randrange(2**31))
    sched = adamk.lower(model, adamk.CompileConfig(gpu="H200", batch_size=batch, num_sms=32,
                                                   schedule="round-robin")).schedule
    dtypes = {b.sym_name.data: b.dtype.data for b in sched.ops if isinstance(b, BufferOp)}
    execs = [o for o in sched.walk() if isinstance(o, ExecOp)]
    norms = [o for o in execs if o.kind.data == "linear" and o.param("prologue") == "rmsnorm"]
    assert "logits" in {o.source.data for o in norms}          # the LM head's final norm among them
    shadows = {n for n, d in dtypes.items() if d == "bf16x2_tagged"}
    if batch == 1:       # only the gated output's, which down's paged staging reads
        assert shadows == {"layers.0.gate_proj.pairs"}
        assert all(dtypes[o.buffer("input")] == "f32_tagged" for o in norms)
        downs = [o for o in execs if o.kind.data == "linear" and o.source.data.startswith("layers.0.down_proj")]
        assert downs and all(o.buffer("input") == "layers.0.gate_proj.pairs" for o in downs)
        return
    assert {dtypes[o.buffer("input")] for o in norms} == {"bf16x2_tagged"}          # q/k/v, gate/up, the LM head
    assert shadows == {"hidden.pairs", "layers.0.o_proj.pairs", "layers.0.gate_proj.pairs"}
    for o in norms:
        assert o.param("paired") == 1
    downs = [o for o in execs if o.kind.data == "linear" and o.param("prologue") == "none"
             and o.buffer("input") == "layers.0.gate_proj.pairs"]
    assert downs and all(o.param("paired") == 1 for o in downs)   # the gated output's shadow
    # counted as its tagged words (a trip's time hardly follows its bytes: docs/perf.md v40; at half,
    # the search spread a batch of 4's down K-parts over every SM, 4-7 stagings an SM, +18%)
    assert task_kind("linear").cost(downs[0], 0)["inputs"] == batch * downs[0].k_range[1]
    for shadow in shadows:
        floats = shadow.removesuffix(".pairs")
        writers = [o for o in execs if o.buffer("out") == floats]
        assert writers and all(o.buffer("pairs") == shadow for o in writers)
        assert {o.kind.data for o in writers} <= {"embedding", "linear", "linear_combine"}
        for o in writers:          # the same elements of the same slot
            kind = task_kind(o.kind.data)
            written = kind.writes(o)
            assert sorted((b, e) for n, b, e in written if n == shadow) == \
                sorted((b, e) for n, b, e in written if n == floats)
            assert o.slot(shadow) == o.slot(floats)
    # the cost model counts the sum of squares over the shadow at half the bytes of tagged floats
    one = next(o for o in norms)
    assert task_kind("linear").cost(one, 0)["inputs"] == \
        batch * (one.k_range[1] + one.param("K") // 2)


def test_a_batch_copies_one_weight_page_at_a_time_on_hopper():
    """A batch's staging points wait on round trips that queue behind the SM's copies, so the
    H100/H200 targets copy one page at a time at a batch (docs/perf.md v38); one sequence keeps the
    target's two, the L20 its own, and --pages-in-flight overrides both."""
    assert adamk.CompileConfig(gpu="H200").in_flight == 2
    assert adamk.CompileConfig(gpu="H200", batch_size=8).in_flight == 1
    assert adamk.CompileConfig(gpu="H100", batch_size=2).in_flight == 1
    assert adamk.CompileConfig(gpu="L20", batch_size=8).in_flight == adamk.CompileConfig(gpu="L20").in_flight
    assert adamk.CompileConfig(gpu="H200", batch_size=8, pages_in_flight=2).in_flight == 2
    schedule = adamk.lower(random_layer("tiny"), adamk.CompileConfig(gpu="H200", batch_size=3,
                                                                      schedule="round-robin")).schedule
    assert next(o for o in schedule.ops if o.name == "adamk.schedule").in_flight.value.data == 1


def test_the_smem_model_counts_every_sequences_inputs():
    """A batch's inputs are staged in bf16 (the mma's operand), each sequence with its scratch."""
    one = smem.linear_work_bytes(2048, rows=16)
    assert one == 2048 * 4 + 8 * 16 * 4
    # a batch's task adds its warps in pairs before the scratch (linear_mma.cuh): half the warps' sums
    assert smem.linear_work_bytes(2048, rows=16, batch=16) == 16 * (2048 * 2 + 4 * 16 * 4)
    # so the 1B preset's gated gate/up (16 page rows) fits beside the H200's 6 pages of 32 KB at batch 8
    # (a whole scratch per warp took 233,568 bytes of the 232,448), not at 16
    assert smem.gated_fits(2048, 16, 32 * 1024, 6, 232448, batch=8)
    assert not smem.gated_fits(2048, 16, 32 * 1024, 6, 232448, batch=16)
    # L20, 2 pages of 32 KB in flight: one sequence's 2048 inputs fit whole, sixteen need parts
    assert smem.fewest_k_parts(2048, 16, 32 * 1024, 2, 99 * 1024) == 1
    parts = smem.fewest_k_parts(2048, 16, 32 * 1024, 2, 99 * 1024, batch=16)
    assert parts > 1
    assert smem.linear_footprint(16, smem.k_chunk(2048, parts), 32 * 1024, batch=16).alone(2) <= 99 * 1024


def test_a_large_batch_splits_its_linears_and_keeps_gate_and_up_apart():
    """The 1B layer on the L20 at batch 16: every linear's inputs are split over K to fit 99 KB,
    and gate and up stay two linears (a gated one is never split, and would not fit)."""
    layer = random_layer("llama-3.2-1b")
    lowered = adamk.lower(layer, adamk.CompileConfig(gpu="L20", batch_size=16, schedule="round-robin"))
    execs = [o for o in lowered.schedule.walk() if isinstance(o, ExecOp) and o.kind.data == "linear"]
    assert not any(o.buffer("weight2") for o in execs)
    assert all(o.k_split.value.data > 1 for o in execs)
    assert max(o.work_bytes.value.data for o in execs) + 2 * (32 * 1024 + 16) <= 99 * 1024
    one = adamk.lower(layer, adamk.CompileConfig(gpu="L20", schedule="round-robin")).schedule
    assert any(o.buffer("weight2") for o in one.walk() if isinstance(o, ExecOp) and o.kind.data == "linear")


def test_a_large_batch_gives_up_ring_slots_before_its_whole_row_linears_split():
    """At batch 16 the 1B preset's gated gate/up does not fit beside the H200's 6 slots, so the ring
    takes 4 (at most half given up) and q/k/v, gate/up and the LM head keep whole rows (6 slots split
    them all: 4.15 ms against 2.12 on an H100, docs/perf.md v39); batch 8 fits at 6 and keeps them, and
    a user's `stages` is kept as given."""
    assert smem.ring_depth(2048, 16, 32 * 1024, 6, 232448, batch=16, floor=3) == 4
    assert smem.ring_depth(2048, 16, 32 * 1024, 6, 232448, batch=8, floor=3) == 6
    assert smem.ring_depth(8192, 16, 32 * 1024, 6, 232448, batch=16, floor=3) == 6   # none fits: as before
    assert smem.ring_depth(2048, 16, 32 * 1024, 6, 232448, batch=16, floor=5) == 6   # not above the floor
    # without a gated linear only the plain whole-row work area counts: in 8-row tiles it fits at 5
    assert smem.ring_depth(2048, 8, 32 * 1024, 6, 232448, batch=16, floor=3) == 4
    assert smem.ring_depth(2048, 8, 32 * 1024, 6, 232448, batch=16, floor=3, gated=False) == 5
    layer = random_layer("llama-3.2-1b")

    def lowered(**config):
        schedule = adamk.lower(layer, adamk.CompileConfig(gpu="H200", batch_size=16, schedule="round-robin",
                                                          **config)).schedule
        execs = [o for o in schedule.walk() if isinstance(o, ExecOp) and o.kind.data == "linear"]
        return next(o for o in schedule.ops if o.name == "adamk.schedule").stages.value.data, execs

    stages, execs = lowered()
    assert stages == 4
    assert any(o.buffer("weight2") for o in execs)                      # gate and up as one gated linear
    whole_row = [o for o in execs if o.param("prologue") == "rmsnorm"]
    assert whole_row and all(o.k_split.value.data == 1 for o in whole_row)
    stages, execs = lowered(stages=6)
    assert stages == 6 and not any(o.buffer("weight2") for o in execs)
    assert all(o.k_split.value.data > 1 for o in execs if o.param("prologue") == "rmsnorm")
    # four pages copied at once leave no slot to give up above them: the target's ring, as before
    assert lowered(pages_in_flight=4)[0] == 6


def test_a_batch_that_cannot_fit_names_the_op_and_the_budget():
    with pytest.raises(ScheduleError, match=r"linear 'q_proj.weight' \(16 rows x 2048 of K=2048, for a batch of 16\) "
                                            r"needs .* B of shared memory per block; L20 allows 101376 B"):
        adamk.lower(random_layer("llama-3.2-1b"),
                    adamk.CompileConfig(gpu="L20", batch_size=16, ksplit=False, schedule="round-robin"))


@pytest.mark.parametrize("batch", [0, 17, -1])
def test_batch_size_outside_1_to_16_is_refused(batch):
    with pytest.raises(AdamkError, match=rf"batch_size={batch} outside 1..16"):
        adamk.CompileConfig(batch_size=batch)


@pytest.mark.parametrize("gpu", ["H200", "H100", "L20"])
def test_a_batch_compiles_to_the_tensor_cores_linears_and_per_sequence_positions(gpu):
    """NVRTC builds the batch's kernel for the target's arch: every linear on linear_task_batch
    with its bf16 staging, the attention at its sequence's position from the device buffer
    [batch] (a layer's launch argument is one sequence's)."""
    art = adamk.compile(random_layer("tiny"), adamk.CompileConfig(gpu=gpu, batch_size=4))
    position = next(b for b in art.manifest["buffers"] if b["role"] == "position")
    assert position["shape"] == [4] and position["dtype"] == "i32"
    source = art.files["kernel.cu"].decode()
    assert "linear_task_batch<SmRing" in source and "linear_task<SmRing" not in source
    # the shipped profile is fitted on one sequence's stamps: a batch's figure is marked a guess
    assert art.manifest["predicted_calibrated"] is False
    from adamk.cli import uncalibrated
    assert ("UNCALIBRATED at a batch" in uncalibrated(art.manifest)) == (gpu != "L20")   # a shipped profile
    assert source.count("at_position(s, b.") >= 2            # the attention's and its producer's
    assert art.files[f"kernel.{art.manifest['target']['arch']}.cubin"]


def test_the_batch_pass_widens_every_sequence_value_and_no_weight():
    layer = random_layer("tiny")
    graph = lower(layer, batch=5)[0]
    fn = next(iter(graph.ops))
    assert [tuple(a.type.get_shape())[0] for a in fn.body.block.args] == [5, 5, 5, 5]
    fused = lower(layer, batch=5)[1]
    for o in next(iter(fused.ops)).body.block.ops:
        if isinstance(o, LinearOp):
            assert o.result.type.get_shape()[0] == 5 and len(o.weight.type.get_shape()) == 2
            assert o.weight.type.get_shape()[1] == o.input.type.get_shape()[1]


def test_the_batch_benchmarks_pytorch_baseline_decodes_each_sequence_as_alone():
    """benchmarks/bench_batch.py times the tuned PyTorch step at a batch; in float32 on the CPU
    its logits for every sequence are the reference model's for that sequence alone."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_model import TunedModel
    model = LlamaModel(TINY_MODEL, seed=random.randrange(2**31))
    tuned = TunedModel(model, device="cpu", dtype=torch.float32)
    batch, pos = 3, 23
    tokens = torch.randint(0, TINY_MODEL.vocab_size, (batch,))
    k = torch.randn(TINY_MODEL.num_layers, batch, TINY_MODEL.num_kv_heads, TINY_MODEL.max_seq_len,
                    TINY_MODEL.head_dim)
    v = torch.randn_like(k)
    with torch.no_grad():
        logits = tuned(tokens, pos, [t.clone() for t in k.unbind(0)], [t.clone() for t in v.unbind(0)], logits=True)
        for b in range(batch):
            ref = model(tokens[b:b + 1], torch.tensor(pos), k[:, b:b + 1].clone(), v[:, b:b + 1].clone()).reshape(-1)
            assert rel(logits[b].numpy(), ref.numpy()) < 1e-5, b


def test_the_batch_benchmarks_table_divides_by_batch_1_wherever_it_stands(capsys):
    """bench_batch.py's table: the 'x batch 1' columns divide by batch 1's row wherever --batches puts
    it (an A/B lists batch 1 last), an A/B's i-th artifact by batch 1's i-th, and a batch timed for
    torch.compile alone prints dashes (v45's table printed 0.00)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_batch import print_table
    main1, patch1 = random.uniform(900, 1100), random.uniform(900, 1100)
    main8, patch8 = random.uniform(1300, 1500), random.uniform(1300, 1500)
    print_table([(8, 880.0, None, [("m8", main8), ("p8", patch8)]), (1, 840.0, None, [("m1", main1), ("p1", patch1)])])
    rows = {line.split()[-1]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert float(rows["m8"][5]) == pytest.approx(main8 / main1, abs=0.006)
    assert float(rows["p8"][5]) == pytest.approx(patch8 / patch1, abs=0.006)
    assert rows["m1"][5] == rows["p1"][5] == "1.00" and rows["m8"][3] == "-"
    compiled4, compiled1 = random.uniform(1400, 1600), random.uniform(1200, 1300)
    print_table([(1, 840.0, compiled1, [("m1", main1)]), (4, 850.0, compiled4, [])])
    out = capsys.readouterr().out.splitlines()
    assert float(out[3].split()[3]) == pytest.approx(compiled4 / compiled1, abs=0.006) and out[3].split()[4:] == ["-"] * 3
    assert float(out[2].split()[6].rstrip("x")) == pytest.approx(compiled1 / main1, abs=0.006)


def test_attention_combine_tasks_of_a_batch_serve_one_sequence_each():
    """An attention with two readers is merged by combine tasks, one per sequence and KV head (not by
    its reader's staging): a second o_proj over the same output, whose result nothing reads, makes
    two; every sequence still gets its own output."""
    from xdsl.rewriter import InsertPoint, Rewriter
    from adamk.dialects import make_context
    from adamk.passes.fuse import FusePass
    from adamk.passes.ksplit import KSplitPass
    from adamk.passes.tile import TilePass
    from adamk.search.round_robin import RoundRobinSchedulePass
    from helpers import graph_of
    from adamk.passes.batch import BatchPass
    layer, ctx, batch = random_layer("tiny"), make_context(), 3
    module = graph_of(layer)
    for pass_ in (BatchPass(batch), FusePass(), KSplitPass(16, 2, 32 * 1024, 99 * 1024, 92, "L20", True, 4)):
        pass_.apply(ctx, module)
    o_proj = next(o for o in module.walk() if isinstance(o, LinearOp) and o.prologue.data == "none"
                  and o.input.owner.name == "adamk.attention")
    twin = LinearOp(o_proj.input, o_proj.weight)
    twin.properties.update({k: o_proj.properties[k] for k in ("tile_rows", "k_split")})
    Rewriter.insert_op(twin, InsertPoint.after(o_proj))
    for pass_ in (TilePass(), RoundRobinSchedulePass(num_sms=7)):
        pass_.apply(ctx, module)
    module.verify()
    combines = [o for o in module.walk() if isinstance(o, ExecOp) and o.kind.data == "attention_combine"]
    assert sorted((o.sequence, o.tile_range) for o in combines) == \
        [(b, (g * 3, g * 3 + 3)) for b in range(batch) for g in range(2)]
    check_layer(layer, module, batch)


def test_the_batched_linears_fragment_layout_in_numpy():
    """benchmarks/linear_mma_emulation.py: linear_task_batch's loads, fragments and warp sums,
    lane by lane, give W @ x (whole and short pages, 8 to 32 rows, gated, batches of 3 to 16)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import linear_mma_emulation
    assert linear_mma_emulation.main() < 1e-5
