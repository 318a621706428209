"""Dialect verifiers and MLIR round trips at all three levels."""
import pytest
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, TensorType, f32, i64
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.test_value import create_ssa_value

from adamk.dialects import parse_module, print_module
from adamk.dialects.graph import AttentionOp, HeadRMSNormOp, LinearOp, RMSNormOp, RopeOp, SiluMulOp
from adamk.dialects.schedule import CounterOp, ExecOp, PollOp, ScheduleOp, SignalOp, WaitOp, sm_program
from adamk.dialects.task import BufferOp, TaskOp
from helpers import lower, random_layer


def t(*shape):
    return create_ssa_value(TensorType(f32, list(shape)))


def verify_fails(op, match):
    with pytest.raises(VerifyException, match=match):
        op.verify()


def test_graph_verifiers_name_the_value_at_fault():
    verify_fails(LinearOp(t(1, 64), t(32, 48)), r"weight has shape \[32, 48\], expected \[N, 64\]")
    verify_fails(RMSNormOp(t(1, 64), t(63), 1e-5), r"weight has shape \[63\], expected \[64\]")
    verify_fails(LinearOp(t(1, 64), t(32, 64), residual=t(1, 31)), r"residual shape \[1, 31\]")
    verify_fails(LinearOp(t(1, 64), t(32, 64), prologue="gelu"), r"unknown prologue 'gelu'")
    verify_fails(LinearOp(t(1, 64), t(32, 64), prologue="rmsnorm"), "needs norm_weight and eps")
    verify_fails(SiluMulOp(t(1, 8), t(1, 9)), r"gate \[1, 8\] and up \[1, 9\]")
    pos = t(1)            # one position per sequence
    verify_fails(RopeOp(t(1, 48), pos, 10, [1.0] * 5), r"head_dim 10 must be even and divide input features 48")
    verify_fails(RopeOp(t(1, 48), pos, 8, [1.0] * 3), "inv_freq has 3 entries, expected 4")
    q, kv, cache = t(1, 6 * 8), t(1, 2 * 8), t(1, 2, 16, 8)
    verify_fails(AttentionOp(q, kv, kv, cache, cache, pos, num_heads=6, num_kv_heads=4, head_dim=8, scale=0.3),
                 "num_heads 6 is not a multiple of num_kv_heads 4")
    verify_fails(AttentionOp(q, t(1, 24), kv, cache, cache, pos, num_heads=6, num_kv_heads=2, head_dim=8, scale=0.3),
                 "k has 24 features, expected 2 heads x 8")
    verify_fails(AttentionOp(q, kv, kv, t(1, 2, 16, 4), cache, pos, num_heads=6, num_kv_heads=2, head_dim=8,
                             scale=0.3), r"k_cache has shape \[1, 2, 16, 4\]")
    verify_fails(AttentionOp(q, kv, kv, cache, cache, t(2), num_heads=6, num_kv_heads=2, head_dim=8, scale=0.3),
                 r"pos has shape \[2\], expected \[1\] \(one position per sequence")
    verify_fails(AttentionOp(q, kv, kv, t(3, 2, 16, 8), cache, pos, num_heads=6, num_kv_heads=2, head_dim=8,
                             scale=0.3), r"k_cache has shape \[3, 2, 16, 8\], expected \[1, 2, max_seq_len, 8\]")
    verify_fails(RopeOp(t(2, 48), pos, 8, [1.0] * 4), r"adamk.rope: pos has shape \[1\], expected \[2\]")
    verify_fails(HeadRMSNormOp(t(1, 48), t(10), 1e-6), r"head_rmsnorm: weight has shape \[10\], expected \[head_dim\]")
    norm = dict(num_heads=6, num_kv_heads=2, head_dim=8, scale=0.3)
    verify_fails(AttentionOp(q, kv, kv, cache, cache, pos, q_norm=t(8), **norm), "q_norm, k_norm and norm_eps come together")
    verify_fails(AttentionOp(q, kv, kv, cache, cache, pos, q_norm=t(8), k_norm=t(16), norm_eps=1e-6, **norm),
                 r"k_norm has shape \[16\], expected \[8\]")
    AttentionOp(q, kv, kv, cache, cache, pos, q_norm=t(8), k_norm=t(8), norm_eps=1e-6, **norm).verify()


def test_task_and_schedule_verifiers():
    verify_fails(BufferOp("w", "scratch", [4], "bf16"), "@w: unknown role 'scratch'")
    verify_fails(BufferOp("w", "weight", [4, 0], "bf16"), "non-positive extent")
    props = TaskOp.body_properties("q.r0", "linear", "q", (0, 16), {"input": "x", "out": "q"}, {})
    verify_fails(TaskOp([], props), r"@q.r0: linear task lacks buffers \['weight'\]")
    props = TaskOp.body_properties("q.r0", "linear", "q", (16, 16), {"input": "x", "weight": "w", "out": "q"}, {})
    verify_fails(TaskOp([], props), r"tile \[16, 16\] is not a non-empty")
    props = TaskOp.body_properties("q.r0", "gemm", "q", (0, 16), {}, {})
    verify_fails(TaskOp([], props), "unknown kind 'gemm'")
    one = {"batch": IntegerAttr(1, i64)}
    props = TaskOp.body_properties("q.r0", "linear", "q", (0, 16), {"input": "x", "weight": "w", "out": "q"}, {})
    verify_fails(TaskOp([], props), "@q.r0: param batch None is not a positive number of sequences")
    props = TaskOp.body_properties("o.b1.h0", "attention", "o", (0, 2), {r: r for r in ("q", "k", "v", "k_cache",
                                   "v_cache", "out")}, one, seq=1)
    verify_fails(TaskOp([], props), "@o.b1.h0: seq 1 outside its batch of 1")
    sms = [sm_program(1), sm_program(0)]
    verify_fails(ModuleOp([ScheduleOp(2, 256, 1, 1, sms), *sms]), r"expected func.func @sm0..@sm1 in order, got "
                                                                    r"\['@sm1', '@sm0'\]")
    sm0 = sm_program(0, [CounterOp("c", 0, 1)])
    verify_fails(ModuleOp([ScheduleOp(1, 256, 1, 1, [sm0]), sm0]), "@sm0: 'adamk.counter' is not an adamk.poll")
    sm0 = sm_program(0)
    verify_fails(ModuleOp([ScheduleOp(1, 256, 2, 3, [sm0]), sm0]), r"in_flight 3 must be in 1..stages \(2\)")
    verify_fails(PollOp("q", 8, 8), r"adamk.poll on @q: \[8, 8\) is not a non-empty range")
    verify_fails(WaitOp("c", 0), "count must be positive")
    verify_fails(CounterOp("c", 0, 0), "per_step must be positive")


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_level_round_trips(level):
    module = lower(random_layer("tiny"), num_sms=5)[level]
    text = print_module(module)
    again = parse_module(text)
    assert again.is_structurally_equivalent(module)
    assert print_module(again) == text


def test_schedule_level_holds_straight_line_programs():
    schedule = lower(random_layer("tiny"), num_sms=3)[3]
    sched = next(o for o in schedule.ops if isinstance(o, ScheduleOp))
    kinds = {type(o) for sm in sched.sms for o in sm.ops}
    assert kinds == {PollOp, ExecOp}      # tasks pass data through tagged activations: no counters
    barrier = lower(random_layer("tiny"), num_sms=3, barrier=True)[3]
    sched = next(o for o in barrier.ops if isinstance(o, ScheduleOp))
    assert {type(o) for sm in sched.sms for o in sm.ops} == {PollOp, ExecOp, WaitOp, SignalOp}
    assert isinstance(schedule, ModuleOp)
