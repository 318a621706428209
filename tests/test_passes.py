"""fuse, tile and schedule-round-robin: IR in, IR out; the validator's deadlock diagnosis."""
import pytest
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, i64

from adamk import smem
from adamk.dialects.graph import AttentionOp, LinearOp, RMSNormOp, RopeOp
from adamk.dialects.schedule import CounterOp, ExecOp, PollOp, ScheduleOp, SignalOp, WaitOp, sm_program
from adamk.dialects.task import BufferOp, TaskOp
from adamk.errors import ScheduleError, UnsupportedShapeError
from adamk.models import DecoderLayer, LlamaConfig
from adamk.passes.fuse import FusePass
from adamk.search.validate import validate, walk
from helpers import lower, random_layer


def ops_of(module):
    first = next(iter(module.ops))
    return list(first.body.block.ops) if hasattr(first, "body") and not isinstance(first, BufferOp) else list(module.ops)


@pytest.mark.parametrize("gate_up", [True, False])
def test_fuse_leaves_only_linears_and_attention(gate_up):
    """Prologues, epilogues and RoPE ride on their consumers; the SwiGLU's gate and up become one
    gated linear (weight2 = up) whose output down reads plain, or (gate_up=False) down's prologue."""
    _, fused, _, _ = lower(random_layer(), gate_up=gate_up)
    ops = [o for o in ops_of(fused) if o.name not in ("adamk.weight", "func.return")]
    mlp = 2 if gate_up else 3
    assert [o.name for o in ops] == ["adamk.linear"] * 3 + ["adamk.attention"] + ["adamk.linear"] * (1 + mlp)
    lin = [o for o in ops if isinstance(o, LinearOp)]
    up = [o.weight.owner.weight_name.data for o in lin if o.weight2 is not None]
    assert up == (["gate_proj.weight"] if gate_up else [])
    assert [o.weight2.owner.weight_name.data for o in lin if o.weight2 is not None] == (
        ["up_proj.weight"] if gate_up else [])
    assert [o.prologue.data for o in lin] == ["rmsnorm"] * 3 + ["none"] + (
        ["rmsnorm", "none"] if gate_up else ["rmsnorm", "rmsnorm", "silu_mul"])
    assert [o.residual is not None for o in lin] == [False] * 3 + [True] + [False] * (mlp - 1) + [True]
    attn = next(o for o in ops if isinstance(o, AttentionOp))
    assert attn.rope_inv_freq is not None
    assert not any(isinstance(o, (RMSNormOp, RopeOp)) for o in ops)


def test_tile_covers_every_row_once_with_exact_dependencies():
    layer = random_layer()
    cfg = layer.cfg
    _, _, tasks, _ = lower(layer, tile_rows=16)
    task_ops = [o for o in tasks.ops if isinstance(o, TaskOp)]
    rows: dict[str, list] = {}
    for t in task_ops:
        rows.setdefault(t.source.data, []).append(t.tile_range)
    for source, n in (("q_proj", cfg.num_heads * cfg.head_dim), ("gate_proj", cfg.intermediate_size),
                      ("y", cfg.hidden_size)):
        covered = sorted(r for b, e in rows[source] for r in range(b, e))
        assert covered == list(range(n)), source
    group, hd = cfg.num_heads // cfg.num_kv_heads, cfg.head_dim
    heads = smem.attention_heads_per_task(group)
    assert heads > 1      # the tiny preset packs query heads (3 of a KV head) into one task
    attention = [t.tile_range for t in task_ops if t.kind.data == "attention"]     # every part of each task
    assert sorted(set(attention)) == [(h, h + heads) for h in range(0, cfg.num_heads, heads)]
    # an attention task reads only its heads' q rows and the k/v rows of their KV head
    for t in task_ops:
        if t.kind.data != "attention":
            continue
        h0, h1 = t.tile_range
        g = h0 // group
        assert {h // group for h in range(h0, h1)} == {g}     # the heads of one KV head
        for dep in t.deps:
            p = dep.owner
            b, e = p.tile_range
            lo, hi = (h0 * hd, h1 * hd) if p.source.data == "q_proj" else (g * hd, (g + 1) * hd)
            assert b < hi and lo < e, (t.sym_name.data, p.sym_name.data)
    down = [t for t in task_ops if t.source.data == "y"][0]
    assert {d.owner.source.data for d in down.deps} == {"gate_proj", "o_proj"}   # gate_proj: silu(gate) * up


def test_tile_refuses_shapes_the_kernel_cannot_take():
    cfg = LlamaConfig(hidden_size=100, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
                      num_layers=1, vocab_size=10, max_seq_len=8)
    with pytest.raises(UnsupportedShapeError, match="K=100 is not a multiple of 8"):
        lower(DecoderLayer(cfg, seed=0))


def test_round_robin_schedule_waits_once_per_producer_and_signals_consumed_counters():
    _, _, _, schedule = lower(random_layer(), num_sms=4)
    sched = next(o for o in schedule.ops if isinstance(o, ScheduleOp))
    counters = {c.sym_name.data: c.per_step.value.data for c in schedule.ops if isinstance(c, CounterOp)}
    assert "y.done" not in counters     # nobody waits on the last projection
    for sm in sched.sms:
        waits = [o.counter.data for o in sm.ops if isinstance(o, WaitOp)]
        assert len(waits) == len(set(waits))
    signals = sum(o.count.value.data for sm in sched.sms for o in sm.ops if isinstance(o, SignalOp))
    assert signals == sum(counters.values())
    # a run of same-op tasks publishes once: no two signals of one counter back to back
    for sm in sched.sms:
        ops = [o for o in sm.ops if not isinstance(o, ExecOp)]
        assert not any(isinstance(a, SignalOp) and isinstance(b, SignalOp) and a.counter == b.counter
                       for a, b in zip(ops, ops[1:]))
    task_ids = sorted(o.task_id.value.data for sm in sched.sms for o in sm.ops if isinstance(o, ExecOp))
    assert task_ids == list(range(len(task_ids)))
    assert walk(schedule) == counters


def test_smem_budget_error_names_the_op_its_footprint_and_the_budget():
    from adamk.dialects import make_context
    from adamk.passes.ksplit import KSplitPass
    from adamk.search.round_robin import RoundRobinSchedulePass
    graph, _, tasks, _ = lower(random_layer())
    FusePass().apply(make_context(), graph)
    # q_proj split into its 17 smallest K-parts still needs 16 rows x 8 columns of bf16 = 256 B a
    # page (pages of 256 B), 3 pages with their 16 B of barriers + 8 floats + the 8 warps' sums of
    # 16 rows (512 B)
    with pytest.raises(ScheduleError, match=r"linear 'q_proj.weight' \(16 rows x 8 of K=136\) needs 3 ring "
                                            r"pages x \(256 B \+ 16 B of barriers\) \+ a 544 B work area = 1360 B .* "
                                            r"L20 allows 900 B"):
        KSplitPass(16, 3, 256, 900, 7, "L20").apply(make_context(), graph)
    # a ring that alone takes the budget is named as such (no K-split can help)
    with pytest.raises(ScheduleError, match=r"3 ring pages of 32768 B and their barriers take 98352 B of shared "
                                            r"memory per block, leaving no work area within L20's 90000 B"):
        KSplitPass(16, 3, 32 * 1024, 90000, 7, "L20").apply(make_context(), graph)
    # the schedule checks its plan the same way
    with pytest.raises(ScheduleError, match=r"the kernel needs \d+ B of shared memory per block .*the per-block "
                                            r"budget is 100 B"):
        RoundRobinSchedulePass(num_sms=2, smem_budget=100).apply(make_context(), tasks)


def _tagged(*names):
    return [BufferOp(n, "activation", [8], "f32_tagged") for n in names]


def _reader(i, name, reads):
    """Task `i`: linear `name` writing its activation's 8 rows from all 8 of `reads`, after its poll."""
    props = ExecOp.body_properties(name, "linear", name, (0, 8), {"input": reads, "weight": "w", "out": name},
                                   {"K": IntegerAttr(8, i64), "k_chunk": IntegerAttr(8, i64),
                                    "N": IntegerAttr(8, i64), "prologue": StringAttr("none"),
                                    "batch": IntegerAttr(1, i64)})
    return [PollOp(reads, 0, 8), ExecOp(i, props)]


def test_validator_names_a_deadlock_cycle():
    sm0 = sm_program(0, _reader(0, "a", "b"))
    sm1 = sm_program(1, _reader(1, "b", "a"))
    module = ModuleOp([*_tagged("a", "b"), ScheduleOp(2, 256, 1, 1, [sm0, sm1]), sm0, sm1])
    module.verify()
    with pytest.raises(ScheduleError, match=r"deadlocks: cycle SM 0 waits on 'b'\[0:8\] \(0/8 written\), which SM 1 "
                                            r"would supply later -> SM 1 waits on 'a'\[0:8\] \(0/8 written\), which "
                                            r"SM 0 would supply later; blocked: SM 0 at 'b'\[0:8\] \(0/8 written\), "
                                            r"SM 1 at 'a'\[0:8\] \(0/8 written\)"):
        validate(module, num_sms=2, smem_per_block=99 * 1024)


def test_validator_checks_polls_and_single_writes():
    """Polls must be what the task reads; every tagged element is written exactly once a step."""
    sm0 = sm_program(0, _reader(0, "a", "x")[1:])       # x is the host's input: no poll
    sm1 = sm_program(1, _reader(1, "b", "a")[1:])                   # reads a without polling it
    module = ModuleOp([*_tagged("a", "b"), ScheduleOp(2, 256, 1, 1, [sm0, sm1]), sm0, sm1])
    with pytest.raises(ScheduleError, match=r"@sm1: task b reads \[\('a', 0, 8\)\] of tagged activations but is "
                                            r"preceded by polls of \[\]"):
        validate(module, num_sms=2, smem_per_block=99 * 1024)
    twice = [sm_program(i, _reader(i, "a", "x")[1:]) for i in range(2)]
    module = ModuleOp([*_tagged("a"), ScheduleOp(2, 256, 1, 1, twice), *twice])
    with pytest.raises(ScheduleError, match=r"task a on SM 1 writes 'a'\[0:8\], part of which another task wrote"):
        validate(module, num_sms=2, smem_per_block=99 * 1024)


def test_validator_catches_unbalanced_counters():
    props = ExecOp.body_properties("a", "linear", "a", (0, 8), {"input": "x", "weight": "w", "out": "a"},
                                   {"N": IntegerAttr(8, i64), "batch": IntegerAttr(1, i64)})
    sm0 = sm_program(0, [ExecOp(0, props), SignalOp("a.done", 2)])
    module = ModuleOp([CounterOp("a.done", 0, 1), ScheduleOp(1, 256, 1, 1, [sm0]), sm0])
    with pytest.raises(ScheduleError, match="ends the step at 2, expected 1"):
        walk(module)


@pytest.mark.parametrize("gpu,stages,peak,split_peak", [("L20", 2, 98848, 75552), ("H100", 6, 229984, 206688)])
def test_smem_model_of_the_1b_layer(gpu, stages, peak, split_peak):
    """The llama-3.2-1b layer with 32 KB pages: `stages` pages of 16 rows x 1024 columns (their
    mbarriers 16 B each) stream any K, so no linear needs a split; the work area holds the down
    projection's 8192 inputs (32 KB) and the warps' sums of a task's 16 rows. K-splitting every linear in 4 (a tiling the search
    may take) shrinks that to 2048 inputs, and the attention's work area (4 query heads of a KV
    head) becomes the largest."""
    from adamk import smem
    from adamk.targets import get_gpu
    target = get_gpu(gpu)
    layer = random_layer("llama-3.2-1b")
    _, fused, tasks, schedule = lower(layer, num_sms=target.num_sms, stages=stages, budget=target.smem_per_block)
    sched = next(o for o in schedule.ops if isinstance(o, ScheduleOp))
    assert sched.smem_bytes.value.data == peak == stages * (32768 + 16) + smem.linear_work_bytes(8192, rows=16)
    assert all(o.k_split.value.data == 1 for o in ops_of(fused) if isinstance(o, LinearOp))
    assert all(t.stage_bytes.value.data <= 32768 for t in tasks.ops if isinstance(t, TaskOp))
    assert peak == smem.peak_without_ksplit([2048] * 6 + [8192], [(64, 4)], stages, 32768, 16)
    _, _, _, split = lower(layer, num_sms=target.num_sms, stages=stages, budget=target.smem_per_block, linear_parts=4)
    assert next(o for o in split.ops if isinstance(o, ScheduleOp)).smem_bytes.value.data == split_peak == (
        stages * (32768 + 16) + smem.attention_work_bytes(64, 4))
    assert smem.attention_work_bytes(64, 4) > smem.linear_work_bytes(2048, rows=16)


def test_attention_rows_stream_as_ring_pages():
    """An attention part's cached rows are ring pages: a page holds as many positions' K and V rows
    as fit the page size, a multiple of a warp's rows per trip (and at least those, past a small
    page size), and a part streams enough pages for its share at the longest sequence. In the tiled
    1B layer every attention task carries those pages (its stage bytes; the ring's slot is the
    largest page), and a task of a part past every position still has them (its producer copies
    nothing at a short position; the pages' count is fixed at compile time)."""
    per_trip = 32 // 8 * smem.ATTENTION_ROWS_PER_LANE          # head_dim 64: 8 lanes per row
    assert smem.attention_page_rows(64, 32768) == 128 and 128 % per_trip == 0
    assert smem.attention_page_bytes(64, 128) == 32768
    assert smem.attention_pages(4096, 8, 64, 32768) == 4          # 512 positions per part
    assert smem.attention_pages(4096, 7, 64, 32768) == 5          # 586 positions per part
    assert smem.attention_page_rows(256, 512) == smem.ATTENTION_ROWS_PER_LANE   # at least a trip's rows
    layer = random_layer("llama-3.2-1b")
    _, fused, tasks, _ = lower(layer, num_sms=132, stages=6, budget=227 * 1024)
    parts = next(o for o in next(iter(fused.ops)).body.block.ops if isinstance(o, AttentionOp)).k_split.value.data
    attention = [t for t in tasks.ops if isinstance(t, TaskOp) and t.kind.data == "attention"]
    assert attention and all(t.stage_bytes.value.data == 32768 for t in attention)
    assert {t.params.data["pages"].value.data for t in attention} == {smem.attention_pages(4096, parts, 64, 32768)}


def test_validator_names_a_three_sm_cycle_and_a_starved_wait():
    sms = [sm_program(i, _reader(i, n, p)) for i, (n, p) in enumerate([("a", "c"), ("b", "a"), ("c", "b")])]
    module = ModuleOp([*_tagged("a", "b", "c"), ScheduleOp(3, 256, 1, 1, sms), *sms])
    with pytest.raises(ScheduleError, match=r"cycle SM 0 waits on 'c'\[0:8\] \(0/8 written\), which SM 2 would supply "
                                            r"later -> SM 2 waits on 'b'\[0:8\] \(0/8 written\), which SM 1 would "
                                            r"supply later -> SM 1 waits on 'a'\[0:8\] \(0/8 written\), which SM 0 "
                                            r"would supply later;"):
        walk(module)
    sm0 = sm_program(0, _reader(0, "a", "z"))
    starved = ModuleOp([*_tagged("a", "z"), ScheduleOp(1, 256, 1, 1, [sm0]), sm0])
    with pytest.raises(ScheduleError, match=r"SM 0 waits on 'z'\[0:8\] \(0/8 written\), which no SM will supply"):
        walk(starved)
    barrier = [sm_program(0, [WaitOp("z.done", 1), *_reader(0, "a", "x")[1:], SignalOp("a.done")])]
    starved = ModuleOp([*_tagged("a"), CounterOp("a.done", 0, 1), CounterOp("z.done", 1, 1),
                        ScheduleOp(1, 256, 1, 1, barrier), *barrier])
    with pytest.raises(ScheduleError, match=r"SM 0 waits on 'z.done' \(0/1\), which no SM will supply"):
        walk(starved)
    with pytest.raises(ScheduleError, match="the schedule has 3 blocks; only 2 SMs can hold them"):
        validate(module, num_sms=2, smem_per_block=99 * 1024)


def test_a_gated_linear_that_does_not_fit_says_how_to_split_it():
    """A gated linear is never split over K; when it does not fit (the other linears would split),
    the error names both weights and the option that keeps them two linears, which may be split."""
    # A wide hidden size, so the gated linear's input (6400 floats) outgrows the budget, which the
    # attention's pages (2 KB: the 64 positions of a warp's trip at head_dim 8) and work area fit.
    cfg = LlamaConfig(hidden_size=6400, num_heads=2, num_kv_heads=1, head_dim=8, intermediate_size=16,
                      num_layers=1, vocab_size=16, rms_eps=1e-5, rope_theta=1e4, qkv_bias=False, max_seq_len=16)
    budget = 5 * (2048 + 16) + smem.attention_work_bytes(8, 2)
    with pytest.raises(ScheduleError, match=r"gated linear 'gate_proj.weight' and 'up_proj.weight'.*--no-gate-up"):
        lower(DecoderLayer(cfg, seed=1), stage_bytes=2048, stages=5, budget=budget)


def test_a_gated_linear_pairs_rows_per_warp():
    """A gated linear's tile rows are whole warps (each warp pairs a gate row with its up row) and it
    is never split over K: the verifier names the value at fault."""
    from xdsl.utils.exceptions import VerifyException
    _, fused, _, _ = lower(random_layer("tiny"))
    gated = next(o for o in ops_of(fused) if isinstance(o, LinearOp) and o.weight2 is not None)
    gated.properties["tile_rows"] = IntegerAttr(12, i64)
    with pytest.raises(VerifyException, match="gated linear's tile_rows 12 is not a multiple of 8"):
        gated.verify()
    gated.properties["tile_rows"] = IntegerAttr(8, i64)
    gated.properties["k_split"] = IntegerAttr(2, i64)
    with pytest.raises(VerifyException, match=r"not split over K \(k_split 2\)"):
        gated.verify()


def test_written_ranges_are_found_as_a_scan_finds_them():
    """tile.Writes (bisection per slot) gives the writers a read overlaps as a scan of every written
    range does: in the order the ranges were written, a task once per range it overlaps."""
    import random
    from adamk.passes.tile import Writes
    rng = random.Random(7)
    writes, scan = Writes(), []
    for task in range(300):
        slot = rng.choice([None, (0, True), (1, False)])
        for _ in range(rng.randint(1, 3)):
            begin = rng.randrange(0, 5000)
            end = begin + rng.choice([1, 8, 16, 300])
            writes.add(task, begin, end, slot)
            scan.append((task, begin, end, slot))
    for _ in range(500):
        begin = rng.randrange(0, 5400)
        end = begin + rng.randint(1, 400)
        accept = rng.choice([lambda s: True, lambda s: s is None, lambda s: s == (0, True)])
        assert writes.overlapping(begin, end, accept) == \
            [t for t, b, e, s in scan if b < end and begin < e and accept(s)]
