"""The CPU simulator runs schedule-level IR and matches the float32 reference."""
import dataclasses

import numpy as np
import pytest
import torch

from adamk.dialects.schedule import ExecOp
from adamk.models import PRESETS, DecoderLayer
from adamk.simulator import Simulator
from helpers import fresh_inputs, lower, random_layer, rel


def simulate(layer, schedule, pos):
    x, p, kc, vc = fresh_inputs(layer, pos)
    sim = Simulator(schedule, {k: v.numpy() for k, v in layer.state_dict().items()})
    sim.mem["k_cache"][:] = kc.numpy()
    sim.mem["v_cache"][:] = vc.numpy()
    y = sim.step(x.numpy(), pos)
    with torch.no_grad():
        ref = layer(x, p, kc, vc)          # appends to kc, vc in place
    return y, ref.numpy(), sim, kc.numpy(), vc.numpy()


@pytest.mark.parametrize("num_sms", [1, 5, 92])
def test_simulator_matches_reference_tiny(num_sms):
    layer = random_layer("tiny")
    schedule = lower(layer, num_sms=num_sms)[3]
    for pos in (0, 1, 37, layer.cfg.max_seq_len - 1):
        y, ref, sim, kc, vc = simulate(layer, schedule, pos)
        assert not np.isnan(y).any()
        assert rel(y, ref) < 1e-5, pos
        assert rel(sim.mem["k_cache"], kc) < 1e-6 and rel(sim.mem["v_cache"], vc) < 1e-6


def test_simulator_matches_reference_with_bias_and_other_tiles():
    cfg = dataclasses.replace(PRESETS["tiny"], qkv_bias=True)
    layer = DecoderLayer(cfg, seed=int(np.random.randint(2**31)))
    schedule = lower(layer, num_sms=3, tile_rows=24)[3]
    y, ref, *_ = simulate(layer, schedule, 11)
    assert rel(y, ref) < 1e-5


def test_simulator_matches_reference_1b_layer():
    layer = random_layer("llama-3.2-1b")
    schedule = lower(layer, num_sms=92)[3]
    y, ref, sim, kc, vc = simulate(layer, schedule, 511)
    assert rel(y, ref) < 1e-4
    assert rel(sim.mem["k_cache"][:, :, 511], kc[:, :, 511]) < 1e-5


def test_a_task_that_skips_its_rows_is_found_before_it_runs():
    """A tile that forgets a row leaves an element no task writes: the reader's poll of it can
    never be satisfied, and the walk (the simulator's, the validator's) names it."""
    layer = random_layer("tiny")
    schedule = lower(layer, num_sms=2)[3]
    from adamk.dialects.schedule import ExecOp
    from adamk.errors import ScheduleError
    from xdsl.dialects.builtin import DenseArrayBase, i64
    victim = next(o for o in schedule.walk() if isinstance(o, ExecOp) and o.source.data == "o_proj")
    b, e = victim.tile_range
    victim.tile = DenseArrayBase.from_list(i64, [b, e - 1])    # forget one row
    with pytest.raises(ScheduleError, match=r"waits on 'o_proj'\[0:136\] \(135/136 written\), which no SM will supply"):
        simulate(layer, schedule, 5)


@pytest.mark.parametrize("pos", [0, 3, 79])
def test_k_split_and_unsplit_plans_agree(pos):
    """Every linear split over K in 3 parts (pages of 512 B) and the attention over the sequence
    (15 parts on 92 SMs, merged by o_proj's input staging; at small positions most parts are
    empty) give the unsplit result to float32 rounding, and both match the reference."""
    layer = random_layer("tiny")
    split = lower(layer, num_sms=92, stage_bytes=512, linear_parts=3, gate_up=False)[3]
    unsplit = lower(layer, num_sms=92, ksplit=False)[3]
    execs = [o for o in split.walk() if isinstance(o, ExecOp)]
    assert {o.kind.data for o in execs} == {"linear", "linear_combine", "attention"}
    assert all(o.k_split.value.data > 1 for o in execs)
    assert {o.param("prologue") for o in execs if o.kind.data == "linear"} == {"rmsnorm", "silu_mul", "attn_combine"}
    x, p, kc, vc = fresh_inputs(layer, pos)
    weights = {k: v.numpy() for k, v in layer.state_dict().items()}
    outs, caches = [], []
    for schedule in (split, unsplit):
        sim = Simulator(schedule, weights)
        sim.mem["k_cache"][:], sim.mem["v_cache"][:] = kc.numpy(), vc.numpy()
        outs.append(sim.step(x.numpy(), pos))
        caches.append(sim.mem["k_cache"].copy())
    with torch.no_grad():
        ref = layer(x, p, kc, vc).numpy()
    assert not np.isnan(outs[0]).any()
    assert rel(outs[0], outs[1]) < 1e-5
    assert rel(caches[0], caches[1]) < 1e-6
    assert rel(outs[0], ref) < 1e-5
