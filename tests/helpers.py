"""Shared helpers for the CPU tests."""
import numpy as np
import torch

from xdsl.dialects.builtin import IntegerAttr, i64

from adamk.dialects import make_context
from adamk.dialects.graph import LinearOp
from adamk.frontend.torch_frontend import import_module
from adamk.models import PRESETS, DecoderLayer
from adamk.passes.batch import BatchPass
from adamk.passes.fuse import FusePass
from adamk.passes.ksplit import KSplitPass
from adamk.passes.tile import TilePass
from adamk.search.round_robin import RoundRobinSchedulePass


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def rel_t(a, b) -> float:
    """rel of two torch tensors where they are (a GPU's stay there)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bf16_exact(module):
    """`module` with every float32 parameter rounded to bf16, so the float32 reference computes
    what the kernel's bf16 weights do."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.bfloat16().float())
    return module


def causal_lm(step):
    """The transformers causal LM of an adamk.models.HFDecodeModel's modules (built on the meta
    device, so no second copy of the weights is made), for `generate`."""
    import transformers
    with torch.device("meta"):
        lm = transformers.AutoModelForCausalLM.from_config(step.model.config)
    lm.model, lm.lm_head = step.model, step.lm_head
    lm.config._attn_implementation = "eager"
    return lm


def random_layer(preset="tiny", seed=None) -> DecoderLayer:
    seed = int(np.random.SeedSequence().entropy % 2**31) if seed is None else seed
    return DecoderLayer(PRESETS[preset], seed=seed)


def graph_of(layer):
    module, _ = import_module(layer, layer.example_inputs())
    return module


def lower(layer, num_sms=7, tile_rows=16, stage_bytes=32 * 1024, ksplit=True, stages=2, budget=99 * 1024,
          linear_parts=None, barrier=False, gate_up=True, batch=1, attention_parts=None):
    """graph -> (batched) -> fused (and K-split) -> tasks -> schedule, returning the module at each level.
    `linear_parts` splits every linear but a gated one over K into that many parts (as the search may)."""
    ctx = make_context()
    graph = graph_of(layer)
    BatchPass(batch).apply(ctx, graph)
    fused = graph.clone()
    FusePass(gate_up).apply(ctx, fused)
    KSplitPass(tile_rows, stages, stage_bytes, budget, num_sms, "the target", ksplit, attention_parts).apply(ctx, fused)
    if linear_parts is not None:
        for op in next(iter(fused.ops)).body.block.ops:
            if isinstance(op, LinearOp) and op.weight2 is None:
                op.properties["k_split"] = IntegerAttr(linear_parts, i64)
    fused.verify()
    tasks = fused.clone()
    TilePass(tile_rows=tile_rows, page_bytes=stage_bytes).apply(ctx, tasks)
    tasks.verify()
    schedule = tasks.clone()
    RoundRobinSchedulePass(num_sms=num_sms, smem_budget=budget, stages=stages, in_flight=min(2, stages),
                           barrier=barrier).apply(ctx, schedule)
    schedule.verify()
    return graph, fused, tasks, schedule


def lower_model(model, num_sms=32, budget=227 * 1024) -> str:
    """A whole model's schedule IR text (round-robin, Hopper's budget), as `adamk.compile` builds it up to
    code generation: for the simulator where the device library lacks an op."""
    from adamk.dialects import print_module
    from adamk.passes.layers import LayersPass
    module, _ = import_module(model, model.example_inputs())
    ctx = make_context()
    for pass_ in (FusePass(), LayersPass(), KSplitPass(16, 6, 32 * 1024, budget, num_sms, "the target"),
                  TilePass(), RoundRobinSchedulePass(num_sms=num_sms, smem_budget=budget, stages=6, in_flight=2)):
        pass_.apply(ctx, module)
        module.verify()
    return print_module(module)


def fresh_inputs(layer, pos):
    """Random x and a random KV history (fresh every call; never zeros)."""
    cfg = layer.cfg
    x = torch.randn(1, cfg.hidden_size)
    kc = torch.randn(1, cfg.num_kv_heads, cfg.max_seq_len, cfg.head_dim)
    vc = torch.randn_like(kc)
    return x, torch.tensor(pos), kc, vc
