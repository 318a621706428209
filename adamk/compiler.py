"""The whole pipeline, top to bottom (DESIGN.md, "The pipeline")."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings

from xdsl.dialects.builtin import ModuleOp

from . import __version__, smem
from .artifact import MANIFEST_FORMAT, Artifact, dump_name, prepare_dump_dir, sha256
from .codegen.cuda import KERNEL_ARGS, KERNEL_NAME, TRACE_SLOTS, emit_cuda, max_epoch
from .codegen.nvrtc import compile_cuda, cubin_registers
from .config import CompileConfig
from .dialects import irdl, make_context, print_module
from .dialects.schedule import CounterOp, ExecOp
from .dialects.task import BufferOp
from .errors import AdamkError, UnsupportedOpError, UnsupportedShapeError
from .kinds import packings
from .kinds.argmax import logits_of
from .kinds.base import DTYPE_BYTES
from .passes.batch import BatchPass
from .passes.fuse import FusePass
from .passes.ksplit import KSplitPass
from .passes.layers import LayersPass
from .passes.tile import TilePass
from .search.cost import CostModel, predict_step_us
from .search.dag_search import DagSearch, SearchSchedulePass
from .search.round_robin import RoundRobinSchedulePass
from .search.validate import schedule_of, validate


@dataclasses.dataclass
class Lowered:
    """The pipeline's result up to code generation: the schedule IR and what the manifest keeps."""
    schedule: ModuleOp          # schedule-level IR (what the CPU simulator runs)
    graph_text: str             # graph IR as imported (graph.mlir)
    tasks_text: str             # task IR (tasks.mlir)
    schedule_text: str          # schedule IR (schedule.mlir)
    model_dims: dict
    smem_without_ksplit: int
    pos: int                    # the position the schedule was costed at
    cost: CostModel
    search: object              # the DAG search's result, None for another schedule
    config: CompileConfig       # the config the passes ran with (the ring's depth chosen: _ring_for)


def compile(model, config: CompileConfig | None = None, example_inputs=None, *, dump_dir=None,
            progress=None) -> Artifact:
    """Compile a decoder (torch.nn.Module or ONNX path) into a megakernel artifact."""
    config = config or CompileConfig()
    step = progress or (lambda name: contextlib.nullcontext())
    lowered = lower(model, config, example_inputs, dump_dir=dump_dir, progress=progress)
    graph, target = lowered.schedule, config.target
    with step("codegen: emit CUDA C++ and compile with NVRTC"):
        source = emit_cuda(graph, target, config.profile, config.schedule == "queue")   # straight-line per SM
        binaries = compile_cuda(source, target.arch)           # cubin + PTX + ptxas report
        _check_kernel(binaries, config.block_threads)          # co-resident registers, no smem outside the model

    files = {"graph.mlir": lowered.graph_text.encode(), "tasks.mlir": lowered.tasks_text.encode(),
             "schedule.mlir": lowered.schedule_text.encode(), "kernel.cu": source.encode(),
             f"kernel.{target.sm}.cubin": binaries.cubin, "kernel.ptx": binaries.ptx.encode(),
             "ptxas.log": binaries.ptxas_log.encode(),
             irdl.FILE_NAME: irdl.dialect_irdl().encode()}     # the dialect, for upstream MLIR tools
    manifest = _manifest(graph, lowered.graph_text, config, binaries)
    manifest["smem_peak_bytes_without_ksplit"] = lowered.smem_without_ksplit
    manifest["model"] = model_dims = lowered.model_dims
    if model_dims["whole_model"]:           # the buffer the host reads the last step's logits from
        manifest["model"]["logits_buffer"] = logits_of(o for sm in schedule_of(graph).sms for o in sm.ops
                                                       if isinstance(o, ExecOp))
    search, cost = lowered.search, lowered.cost
    manifest["predicted_at_pos"] = lowered.pos
    manifest["predicted_step_us"] = round(predict_step_us(graph, cost, lowered.pos), 1)
    manifest["cost_model"] = cost.source
    # the spec table's figure is a guess; a profile is fitted on one sequence's stamps, and a batch's
    # staging trips it does not model (docs/perf.md v38)
    manifest["predicted_calibrated"] = cost.calibrated and config.batch_size == 1
    manifest["search_complete"] = search.complete if search else True
    # The search's wall-clock time is not in the manifest: the same input must give the same bytes.
    return Artifact(files, manifest, search_seconds=search.seconds if search else 0.0)


def lower(model, config: CompileConfig | None = None, example_inputs=None, *, dump_dir=None,
          progress=None) -> Lowered:
    """The pipeline up to code generation: frontend, passes, search, tiling, schedule and its
    validation. Its schedule is what `compile` generates code for and what the CPU simulator
    (adamk.simulator) runs, at any batch size."""
    config = config or CompileConfig()
    target, ctx = config.target, make_context()
    step = progress or (lambda name: contextlib.nullcontext())
    dumped = 0
    # the cost profile first: a bad one should not cost a frontend run
    cost = CostModel.load(config.cost_model, target) if config.cost_model else CostModel.for_gpu(target)

    if dump_dir is not None:
        prepare_dump_dir(dump_dir)        # new, empty or an earlier compile's: then this compile's alone

    def dump(name: str, module):
        """The IR after a pass, written at once: a later stage that fails leaves what ran before it."""
        nonlocal dumped
        if dump_dir is not None:
            with open(os.path.join(dump_dir, dump_name(dumped, name)), "w") as f:
                f.write(print_module(module))
            dumped += 1

    def run(pass_, module):                                     # one pass, optionally dumped
        pass_.apply(ctx, module)
        module.verify()
        dump(pass_.name, module)

    with step("frontend: trace and recognise the decoder"):
        graph = import_model(model, example_inputs)           # graph IR (adamk.linear, adamk.attention, ...)
        if config.max_seq_len is not None:
            _check_max_seq_len(graph, config.max_seq_len)
        run(BatchPass(config.batch_size), graph)              # the deployment's batch on every sequence's value
        graph_text = print_module(graph)
        model_dims = _model_dims(graph)
        if model_dims["whole_model"] and config.schedule in ("barrier", "queue"):
            raise AdamkError(f"schedule '{config.schedule}' (an ablation variant) takes one decoder layer; a whole "
                             "model's layer loop runs with schedule 'search' or 'round-robin'")
        _check_fits_memory(graph, target)
    config = _ring_for(config, model_dims)
    pos = min(512, model_dims["max_seq_len"] - 1)             # the position schedules are costed at,
    long_pos = model_dims["max_seq_len"] - 1                   # and the longest one, which they serve too
    with step("passes: fuse and K-split"):
        # a gated linear is never split over K: at a large batch its inputs may not fit beside the ring
        gate_up = config.gate_up and smem.gated_fits(model_dims["hidden_size"], config.tile_rows, config.stage_bytes,
                                                     config.depth, target.smem_per_block, config.batch_size)
        run(FusePass(gate_up), graph)              # prologues, residual epilogues, RoPE, gate/up into a gated linear
        if model_dims["whole_model"]:
            run(LayersPass(), graph)               # its identical decoder layers: one loop body
            model_dims["prefill"] = prefill_plan(graph)
        smem_without_ksplit = _peak_without_ksplit(graph, config)
        run(KSplitPass(config.tile_rows, config.depth, config.stage_bytes, target.smem_per_block,
                       config.blocks, target.name, config.ksplit, config.attention_parts), graph)   # tiling from the smem model
    search = None
    if config.schedule == "search":
        with step("search: tiling per op, placement and order of every task") as update:
            search = DagSearch(cost, config.blocks, config.depth, config.in_flight, config.stage_bytes,
                               target.smem_per_block,
                               config.tile_rows, config.dtype, pos, config.search_budget_s,
                               _search_progress(update), config.ksplit, config.attention_parts,
                               long_pos=long_pos).run(graph)
            graph.verify()
            if not search.complete:
                warnings.warn(f"the DAG search used its {config.search_budget_s} s budget before finishing; the "
                              "schedule may differ on a faster or slower machine (raise search_budget_s)")
            dump("search-tiling", graph)
    with step("passes: tile into tasks"):
        run(TilePass(config.tile_rows, config.dtype, config.stage_bytes), graph)   # task DAG: parts, combines, one task per tile
        tasks_text = print_module(graph)
    with step("schedule: place tasks on SMs and validate"):
        if search is not None:
            run(SearchSchedulePass(cost, config.blocks, config.block_threads, target.smem_per_block, config.depth,
                                   config.in_flight, pos, long_pos),
                graph)
        else:
            run(RoundRobinSchedulePass(config.blocks, config.block_threads, target.smem_per_block, config.depth,
                                       config.in_flight, barrier=config.schedule == "barrier"), graph)
        validate(graph, target.num_sms, target.smem_per_block)   # co-resident, no deadlock, counters per step
        schedule_text = print_module(graph)
    return Lowered(graph, graph_text, tasks_text, schedule_text, model_dims, smem_without_ksplit, pos, cost, search,
                   config)


def _check_kernel(binaries, threads: int):
    report = binaries.report
    if report["registers"] != cubin_registers(binaries.cubin):
        raise AdamkError(f"internal: the ptxas report's {report['registers']} registers disagree with the cubin's "
                         f"{cubin_registers(binaries.cubin)}")
    if report["registers"] * threads > 65536:                  # one block per SM must fit the register file
        raise AdamkError(f"internal: {report['registers']} registers x {threads} threads do not fit one SM's "
                         "64K registers, so the blocks cannot all be co-resident")
    if report["static_smem"]:                                  # all shared memory must come from the model
        raise AdamkError(f"internal: the kernel declares {report['static_smem']} B of static shared memory outside "
                         "the shared-memory model")


def _ring_for(config: CompileConfig, model_dims: dict) -> CompileConfig:
    """The config with the ring's depth for this model, where the user left it to the target: a
    batch gives up slots before its whole-row linears split over K (smem.ring_depth), at most half
    the target's and never down to the pages being copied (so a --pages-in-flight near the depth
    keeps the target's). The manifest keeps the user's config and the kernel's depth (kernel.stages)."""
    if config.stages is not None or config.schedule == "queue" or config.batch_size == 1:
        return config
    floor = max(config.in_flight + 1, (config.depth + 1) // 2)
    depth = smem.ring_depth(model_dims["hidden_size"], config.tile_rows, config.stage_bytes, config.depth,
                            config.target.smem_per_block, config.batch_size, floor, gated=config.gate_up)
    return config if depth == config.depth else dataclasses.replace(config, stages=depth)


def _check_fits_memory(graph: ModuleOp, target):
    """The weights and KV caches (bf16) must fit the target's device memory: a model file can
    declare any shape, and a 10^9-wide layer should fail here, not hours into tiling."""
    fn = next(iter(graph.ops))
    tensors = [v.type for v in fn.body.block.args] + [op.result.type for op in fn.body.block.ops
                                                       if op.name == "adamk.weight"]
    need = sum(2 * math.prod(t.get_shape()) for t in tensors if hasattr(t, "get_shape"))
    if need > target.memory_bytes:
        raise UnsupportedShapeError(f"the model's weights and KV caches take {need / 2**30:.1f} GiB in bf16; the "
                                    f"{target.name} has {target.memory_bytes / 2**30:.0f} GiB")


def _search_progress(update):
    if update is None:
        return None
    return lambda done, total, best: update(f"{done}/{total} plans, best {best:.1f} us predicted")


def import_model(model, example_inputs=None) -> ModuleOp:
    """Frontend dispatch: a torch module through torch.export, a path through ONNX."""
    if isinstance(model, (str, os.PathLike)):
        from .frontend.onnx_frontend import import_onnx
        return import_onnx(model)
    from .frontend.torch_frontend import import_module
    if example_inputs is None:
        if not hasattr(model, "example_inputs"):
            raise AdamkError(f"{type(model).__name__} has no example_inputs(); pass example_inputs=(x, pos, k_cache, v_cache)")
        example_inputs = model.example_inputs()
    module, _ = import_module(model, example_inputs)
    return module


def _model_dims(graph: ModuleOp) -> dict:
    from .dialects.graph import ArgmaxOp, AttentionOp, EmbeddingOp, LinearOp, shape_of
    ops = list(next(iter(graph.ops)).body.block.ops)
    attn = [o for o in ops if isinstance(o, AttentionOp)]
    heads = {o.logits for o in ops if isinstance(o, ArgmaxOp)}          # the LM head is no MLP
    linears = [shape_of(o.weight) for o in ops if isinstance(o, LinearOp) and o.result not in heads]
    if not attn:
        raise AdamkError("the model has no attention: adamk compiles decoder layers")
    a = attn[0]
    whole = a.layer is not None
    tables = [shape_of(o.table) for o in ops if isinstance(o, EmbeddingOp)]
    hidden = tables[0][1] if whole else shape_of(next(iter(graph.ops)).body.block.args[0])[1]
    dims = {"hidden_size": hidden, "num_heads": a.num_heads.value.data, "num_kv_heads": a.num_kv_heads.value.data,
            "head_dim": a.head_dim.value.data, "max_seq_len": a.max_seq_len,
            "layers": shape_of(a.k_cache)[0] if whole else len(attn),
            "intermediate_size": max((n for n, k in linears if k == hidden), default=0), "whole_model": whole}
    if whole:
        dims["vocab_size"] = tables[0][0]
    return dims


def prefill_plan(graph: ModuleOp) -> dict | None:
    """What the engine's PyTorch prefill (runtime/engine.py) needs of a folded whole model: the
    parameter names of each weight by role (per layer inside the loop), the RMSNorm epsilons, the
    RoPE frequencies and the attention scale; None for a layer of another structure (the engine
    then refuses to prefill, naming why)."""
    from .dialects.graph import AttentionOp, EmbeddingOp, LayerOutputOp, LinearOp
    ops = list(next(iter(graph.ops)).body.block.ops)
    names = lambda v: v.owner.names if v is not None else None     # noqa: E731 (a weight's per-layer names)
    attn = next(o for o in ops if isinstance(o, AttentionOp))
    down = next(o for o in ops if isinstance(o, LayerOutputOp)).input.owner
    head = next(o for o in ops if isinstance(o, LinearOp) and o.prologue.data == "rmsnorm"
                and o.weight.owner.layer_names is None)
    embed = next(o for o in ops if isinstance(o, EmbeddingOp))
    q, k, v = (x.owner for x in (attn.q, attn.k, attn.v))
    o_proj = next((o for o in ops if isinstance(o, LinearOp) and o.input == attn.result), None)
    if not isinstance(down, LinearOp) or o_proj is None or attn.rope_inv_freq is None:
        return None
    if down.prologue.data == "silu_mul":                   # gate and up as two linears
        gate, up = down.input.owner, down.input2.owner
        gate_up = (gate.weight, up.weight, gate)
    elif isinstance(down.input.owner, LinearOp) and down.input.owner.weight2 is not None:
        gated = down.input.owner
        gate_up = (gated.weight, gated.weight2, gated)
    else:
        return None
    if any(not isinstance(x, LinearOp) or x.prologue.data != "rmsnorm" for x in (q, k, v, gate_up[2])) or \
            o_proj.bias is not None or down.bias is not None:
        return None
    return {"embed": embed.table.owner.weight_name.data, "lm_head": head.weight.owner.weight_name.data,
            "final_norm": head.norm_weight.owner.weight_name.data, "final_eps": head.eps.value.data,
            "input_norm": names(q.norm_weight), "eps": q.eps.value.data,
            "q": names(q.weight), "k": names(k.weight), "v": names(v.weight),
            "q_bias": names(q.bias), "k_bias": names(k.bias), "v_bias": names(v.bias),
            "o": names(o_proj.weight), "post_norm": names(gate_up[2].norm_weight), "post_eps": gate_up[2].eps.value.data,
            "gate": names(gate_up[0]), "up": names(gate_up[1]), "down": names(down.weight),
            "rope_inv_freq": [float(f) for f in attn.rope_inv_freq.get_values()], "scale": attn.scale.value.data,
            **({"q_norm": names(attn.q_norm), "k_norm": names(attn.k_norm), "qk_eps": attn.norm_eps.value.data}
               if attn.q_norm is not None else {})}         # Qwen3: each head's RMSNorm of q and k before RoPE


def _peak_without_ksplit(graph: ModuleOp, config: CompileConfig) -> int:
    """The smem figure of the best plan without K-splitting at the same bytes in flight (smem.py)."""
    from .dialects.graph import AttentionOp, LinearOp, shape_of
    ops = list(next(iter(graph.ops)).body.block.ops)
    linears = [o for o in ops if isinstance(o, LinearOp)]
    return smem.peak_without_ksplit([shape_of(o.weight)[1] for o in linears],
                                    [(o.head_dim.value.data, o.group) for o in ops if isinstance(o, AttentionOp)],
                                    config.depth, config.stage_bytes, config.tile_rows,
                                    [o.weight2 is not None for o in linears], config.batch_size)


def _check_max_seq_len(graph: ModuleOp, max_seq_len: int):
    fn = next(iter(graph.ops))
    traced = list(fn.body.block.args[2].type.get_shape())[-2]
    if traced != max_seq_len:
        raise AdamkError(f"max_seq_len={max_seq_len} but the traced KV cache holds {traced} positions")


def _manifest(schedule: ModuleOp, graph_text: str, config: CompileConfig, binaries) -> dict:
    target = config.target
    sched = schedule_of(schedule)
    buffers = [b for b in schedule.ops if isinstance(b, BufferOp)]
    execs = sorted((o for sm in sched.sms for o in sm.ops if isinstance(o, ExecOp)),
                   key=lambda o: o.task_id.value.data)
    weight_bytes = sum(b.copies * math.prod(b.shape.get_values()) * DTYPE_BYTES[b.dtype.data] for b in buffers
                       if b.role.data == "weight")
    tables = {o.buffer("table") for o in execs if o.kind.data == "embedding"}
    read_bytes = weight_bytes - sum((math.prod(b.shape.get_values()) - config.batch_size * b.shape.get_values()[1])
                                    * DTYPE_BYTES[b.dtype.data] for b in buffers if b.sym_name.data in tables)
    report = binaries.report
    packed = packings(execs)            # one entry per device buffer of packed weights, in task order
    return {
        "format": MANIFEST_FORMAT,
        "adamk_version": __version__,
        "target": {"gpu": target.name, "arch": target.sm, "num_sms": target.num_sms,
                   "smem_per_block": target.smem_per_block, "dram_gbps": target.dram_gbps},
        "config": config.to_json(),
        "model_signature": sha256(graph_text.encode()),
        "kernel": {"name": KERNEL_NAME, "grid": sched.num_sms.value.data,
                   "block_threads": sched.block_threads.value.data,
                   "smem_bytes": sched.smem_bytes.value.data, "stages": sched.stages.value.data,
                   "pages_in_flight": sched.in_flight.value.data,
                   "registers": report["registers"],
                   "spill_bytes": report["spill_stores_total"] + report["spill_loads_total"],
                   "nvrtc": ".".join(map(str, binaries.nvrtc_version)),
                   "profile": config.profile, "args": list(KERNEL_ARGS),
                   "trace_slots": list(TRACE_SLOTS) if config.profile else [],
                   # counters beyond the schedule's: the work-queue variant's queue and per-block tickets
                   "extra_counters": 1 + sched.num_sms.value.data if config.schedule == "queue" else 0,
                   # the last epoch before the state is zeroed (the kernel refuses a later one)
                   "max_epoch": max_epoch(schedule, config.schedule == "queue")},
        # a layer-indexed buffer holds `slots` copies of `shape`; each of its weights names its slot
        "buffers": [{"name": b.sym_name.data, "role": b.role.data, "shape": list(b.shape.get_values()),
                     "dtype": b.dtype.data, **({"slots": b.copies} if b.slots is not None else {})} for b in buffers],
        "weights": [{"name": n, "shape": list(b.shape.get_values()), "dtype": b.dtype.data, "layout": "row-major",
                     **({"buffer": b.sym_name.data, "slot": i} if b.slots is not None else {}),
                     **({"aliases": [a.data for a in b.aliases.data]} if b.aliases is not None else {})}
                    for b in buffers if b.role.data == "weight" for i, n in enumerate(b.names)],
        "packed_weights": list(packed.values()),
        "counters": [{"name": c.sym_name.data, "index": c.index.value.data, "per_step": c.per_step.value.data}
                     for c in schedule.ops if isinstance(c, CounterOp)],
        "tasks": [o.sym_name.data for o in execs],
        "smem_peak_bytes": sched.smem_bytes.value.data,
        "weight_bytes": weight_bytes,
        "weight_read_bytes": read_bytes,     # what a step reads: an embedding table's row per sequence
        "weight_read_floor_us": round(read_bytes / (target.dram_gbps * 1e3), 3),
    }
